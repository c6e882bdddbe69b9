"""Config loading: bad keys and values are reported with the file and the dotted key."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from ki_vla_ros.configio import ConfigError, dump_config, load_config


@dataclass
class Limits:
    lower: list[float]
    upper: list[float]

    def validate(self):
        if len(self.lower) != len(self.upper):
            raise ValueError(f"upper: expected {len(self.lower)} values like lower, got {len(self.upper)}")


@dataclass
class Robot:
    name: str
    rate_hz: float
    kind: Literal["arm", "base"] = "arm"
    limits: Limits | None = None
    cameras: list[str] = field(default_factory=list)


def write(tmp_path, text):
    path = tmp_path / "robot.yaml"
    path.write_text(text)
    return path


def test_good_config_round_trips(tmp_path):
    path = write(tmp_path, "name: r\nrate_hz: 50\nlimits: {lower: [0, 1], upper: [2, 3]}\ncameras: [a]\n")
    robot = load_config(Robot, path)
    assert robot == Robot("r", 50.0, "arm", Limits([0.0, 1.0], [2.0, 3.0]), ["a"])
    assert isinstance(robot.rate_hz, float)
    dump_config(robot, tmp_path / "out.yaml")
    assert load_config(Robot, tmp_path / "out.yaml") == robot


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("name: r\nrate_hz: 50\ncolour: red\n", "colour", "unknown key"),
        ("rate_hz: 50\n", "name", "required key missing"),
        ("name: r\nrate_hz: fast\n", "rate_hz", "expected a number"),
        ("name: r\nrate_hz: 50\nkind: wheel\n", "kind", "expected one of ['arm', 'base']"),
        ("name: r\nrate_hz: 5\nlimits: {lower: [0], upper: [1, 2]}\n", "limits.upper", "expected 1 values"),
        ("name: r\nrate_hz: 5\ncameras: [a, 3]\n", "cameras[1]", "expected a string"),
        ("name: r\nrate_hz: true\n", "rate_hz", "expected a number"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Robot, path)
    msg = str(info.value)
    assert str(path) in msg and f"key '{key}'" in msg and expected in msg, msg


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Robot, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Robot, write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(Robot, write(tmp_path, "- just a list\n"))
