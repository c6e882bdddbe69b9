"""Loading a policy for the node, `ki-vla run` and `ki-vla eval-bag` (no ROS).

The default is the project's runtime: ``ki_vla_ros.runtime.Policy.load(model_dir, backend=...,
num_steps=...)``. ``policy_class="package.module:ClassName"`` is the hook for custom policies:
the class must offer the same ``load(model_dir, backend=..., num_steps=...)`` classmethod and an
``infer(observation, seed=None) -> PolicyOutput`` method (see ``ki_vla_ros.runtime.types``); an
optional ``layout`` attribute with ``camera_names``, ``state_names`` and ``action_names`` lets
the node map cameras, state and actions by name.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any


def import_class(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"policy_class '{spec}': expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"policy_class '{spec}': cannot import module '{module_name}': {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"policy_class '{spec}': module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")  # runtime/backends.py's, and "auto"
CPU_ORDER = ("openvino", "onnxruntime", "torch")  # fastest first, for a named precision (docs/runtime.md)


def resolve_backend(model_dir: str | Path, backend: str, precision: str = "auto",
                    policy_class: str = "") -> tuple[str, str]:
    """The (backend, precision) that ``backend="auto"`` stands for; named backends pass through
    (a custom policy class takes any name it knows). With a custom policy class: torch (the backend
    it is written for). With precision "auto": the fastest path checked for these weights on this
    kind of CPU (runtime/precision.py, `cpu_backend`: OpenVINO int8, else ONNX Runtime fp32). With
    fp32: ONNX Runtime. With another precision: the fastest CPU backend whose check of it passed for
    these weights on this kind of machine; ValueError with the command that checks it if none did.
    On a GPU machine name `tensorrt` (or `torch`) instead: "auto" chooses among the CPU paths."""
    if backend not in BACKENDS and not policy_class:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend, precision
    if policy_class:
        return "torch", precision
    from ki_vla_ros.runtime.precision import cpu_backend, passed_here

    if precision == "auto":
        return cpu_backend(model_dir)
    if precision == "fp32":
        return "onnxruntime", precision
    passed = passed_here(model_dir)
    for name in CPU_ORDER:
        if f"{name}/{precision}" in passed:
            return name, precision
    raise ValueError(f"backend auto, precision {precision}: no CPU backend's {precision} check passed for the "
                     f"weights of {model_dir} on this kind of machine; run `ki-vla export --model {model_dir} "
                     f"--precision {precision}` (it checks every backend that runs it here) or name a backend")


def load_policy(
    model_dir: str | Path, backend: str = "torch", num_steps: int = 0, policy_class: str = "",
    threads: int = 0, precision: str = "auto",
) -> Any:
    """``backend`` "auto": `resolve_backend`'s choice, exported first where the folder has no ONNX
    export of these weights yet (a one-time cost, 5–20 s for `small`); a named ONNX Runtime or
    OpenVINO backend needs `ki-vla export` first and says so. ``num_steps`` 0: the model folder's
    num_flow_steps (passed on as None). ``threads`` > 0: intra-op threads of torch (and of ONNX
    Runtime for the project's runtime); 0 keeps the libraries' defaults (one per core).
    ``precision``: the project's runtime's (runtime/precision.py); a custom policy class gets it
    only when it is not "auto" (an error naming the class when its load() has no such argument)."""
    asked = backend
    backend, precision = resolve_backend(model_dir, backend, precision, policy_class)
    if asked == "auto" and not policy_class:
        export_for(model_dir, backend, precision, num_steps)
    if threads > 0:
        try:
            import torch
        except ImportError:
            pass
        else:
            torch.set_num_threads(threads)
    if policy_class:
        cls = import_class(policy_class)
    else:
        try:
            from ki_vla_ros.runtime import Policy as cls
        except ImportError as exc:
            raise RuntimeError(
                f"the policy runtime is not available ({exc}); set policy_class to a custom "
                f"'module:Class' policy"
            ) from exc
    if not hasattr(cls, "load"):
        raise ValueError(f"policy class {cls!r} has no load(model_dir, backend=..., num_steps=...) method")
    kwargs = {"threads": threads} if not policy_class and threads > 0 else {}
    if not policy_class or precision != "auto":
        if policy_class and not _takes(cls.load, "precision"):
            raise ValueError(f"policy_class '{policy_class}': its load() takes no precision argument, so "
                             f"precision {precision!r} cannot be honoured; leave precision 'auto'")
        kwargs["precision"] = precision
    return cls.load(str(model_dir), backend=backend, num_steps=num_steps or None, **kwargs)


def export_for(model_dir: str | Path, backend: str, precision: str, num_steps: int = 0) -> bool:
    """Make the ONNX files ONNX Runtime or OpenVINO needs to run the folder's weights at `precision`
    unless they are there (export/cli.py: `ensure_export`; nothing for other backends). True when it
    exported."""
    if backend not in ("onnxruntime", "openvino"):
        return False
    from ki_vla_ros.export.cli import ensure_export

    return ensure_export(model_dir, num_steps or None, precision, backend)


def _takes(fn: Any, name: str) -> bool:
    """Whether `fn` accepts the keyword argument `name` (named, or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def policy_layout(policy: Any) -> tuple[list[str] | None, list[str] | None, list[str] | None]:
    """(camera_names, state_names, action_names) of a policy, None where unknown."""
    layout = getattr(policy, "layout", None)
    if layout is None:
        return None, None, None

    def get(name):
        value = getattr(layout, name, None)
        if value is None and isinstance(layout, dict):
            value = layout.get(name)
        return list(value) if value else None

    return get("camera_names"), get("state_names"), get("action_names")


class LayoutMapper:
    """Maps between the embodiment's order (cameras, state, actions) and the policy's, by name.

    Raises ValueError at construction when the policy needs something the embodiment lacks."""

    def __init__(self, embodiment, policy: Any):
        cams, states, actions = policy_layout(policy)
        emb_cams, emb_states, emb_actions = (
            embodiment.camera_names,
            embodiment.state_names,
            embodiment.action_names,
        )
        if cams is not None:
            missing = [c for c in cams if c not in emb_cams]
            if missing:
                raise ValueError(
                    f"the model wants cameras {missing} that embodiment '{embodiment.name}' lacks "
                    f"(it has {emb_cams})"
                )
        self.camera_names = cams if cams is not None else emb_cams
        if states is not None:
            missing = [s for s in states if s not in emb_states]
            if missing:
                raise ValueError(f"the model wants state {missing} that embodiment '{embodiment.name}' lacks")
            self.state_index = [emb_states.index(s) for s in states]
        else:
            self.state_index = list(range(len(emb_states)))
        if actions is not None:
            missing = [a for a in emb_actions if a not in actions]
            if missing:
                raise ValueError(
                    f"embodiment '{embodiment.name}' needs actions {missing} that the model does not "
                    f"produce (it produces {actions})"
                )
            self.action_index = [actions.index(a) for a in emb_actions]
            # the policy's actions the embodiment lacks: its actions cannot be mapped back
            self.policy_only_actions = [a for a in actions if a not in emb_actions]
            self.policy_action_dim = len(actions)
        else:
            self.action_index, self.policy_only_actions, self.policy_action_dim = None, [], len(emb_actions)
        self.action_dim = len(emb_actions)

    def state_for_policy(self, state):
        return state[self.state_index]

    def actions_for_embodiment(self, actions):
        import numpy as np

        actions = np.asarray(actions, np.float64)
        if actions.ndim != 2:
            raise ValueError(f"policy actions must be [H, action_dim], got shape {actions.shape}")
        if self.action_index is not None:
            return actions[:, self.action_index]
        if actions.shape[1] != self.action_dim:
            raise ValueError(
                f"policy produced {actions.shape[1]} actions per step, the embodiment needs {self.action_dim}"
            )
        return actions

    def actions_for_policy(self, actions):
        """Embodiment-order actions [n, action_dim] -> the policy's order, or None when the policy
        has actions the embodiment does not execute (nothing to fill them with)."""
        if self.policy_only_actions:
            return None
        if self.action_index is None:
            return actions
        out = actions.copy()
        out[:, self.action_index] = actions
        return out
