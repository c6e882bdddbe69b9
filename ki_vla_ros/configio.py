"""Dataclass configs from YAML: the one way this project reads a config.

`load_config(Cls, path)` reads a YAML file with `yaml.safe_load` and builds the dataclass
`Cls`; `from_dict(Cls, data, where)` does the same from a mapping. Unknown keys, missing
required keys and values of the wrong type raise `ConfigError` naming the file, the dotted key
and what was expected. Nested dataclasses, `list[...]`, `tuple[...]`, `dict[str, ...]`,
`Optional[...]` and `Literal[...]` fields are checked recursively. A dataclass may define
`validate(self)` raising `ValueError`; its message is re-raised as a `ConfigError` for that key.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or mapping that does not match its schema."""


def load_config(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return from_dict(cls, data, where=str(path))


def from_dict(cls: type[T], data: Any, where: str = "<config>", key: str = "") -> T:
    return _build(cls, data, where, key)


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-able data from a (nested) dataclass; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _err(where: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: key '{key or '<root>'}': {msg}")


def _join(key: str, sub: str | int) -> str:
    if isinstance(sub, int):
        return f"{key}[{sub}]"
    return f"{key}.{sub}" if key else sub


def _build(tp: Any, value: Any, where: str, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where, key)
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _build(option, value, where, key)
            except ConfigError as exc:
                errors.append(str(exc))
        if errors:
            raise ConfigError(errors[-1])
        raise _err(where, key, f"expected {tp}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise _err(where, key, f"expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _err(where, key, f"expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _err(where, key, f"expected a list of {len(args)} items, got {len(value)}")
            return tuple(_build(a, v, where, _join(key, i)) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_build(item, v, where, _join(key, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _err(where, key, f"expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_build(kt, k, where, key): _build(vt, v, where, _join(key, str(k))) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _err(where, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err(where, key, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _err(where, key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _err(where, key, f"expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _err(where, key, f"expected {tp.__name__}, got {value!r}")
    return value


def _build_dataclass(cls: Any, value: Any, where: str, key: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise _err(where, key, f"expected a mapping for {cls.__name__}, got {type(value).__name__} {value!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        bad = _join(key, str(unknown[0]))
        raise _err(where, bad, f"unknown key; {cls.__name__} accepts {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _build(hints[name], value[name], where, _join(key, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _err(where, _join(key, name), f"required key missing in {cls.__name__}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as exc:
            msg = str(exc)
            # validate() may prefix its message with "subkey: ..." to point at a field
            sub, sep, rest = msg.partition(": ")
            if sep and sub.replace(".", "").replace("_", "").replace("[", "").replace("]", "").isalnum() \
                    and sub.split(".")[0].split("[")[0] in fields:
                raise _err(where, _join(key, sub), rest) from None
            raise _err(where, key, msg) from None
    return obj


def dump_config(obj: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML (atomically: temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
    tmp.replace(path)


__all__ = ["ConfigError", "load_config", "from_dict", "to_dict", "dump_config"]
