"""Embodiment configs: what a robot looks like to the policy node (no ROS imports here).

An embodiment YAML (``config/embodiments/<name>.yaml``) describes the cameras, the joint-state
sources and joint order, the action layout (which slice of the action vector drives which
output), the outputs, the control rate, how many steps of a chunk run before the next chunk,
the limits and the model folder. ``load_embodiment(name_or_path)`` reads and validates one; a bad
file fails with the file, the dotted key and what was expected (``configio.ConfigError``).

Action vector = the outputs' slices, in the order of ``outputs``; every index in
``[0, action_dim)`` is driven by exactly one output. State vector = the joints of ``state``
sources, in order.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ki_vla_ros.configio import ConfigError, load_config

PACKAGE = "ki_vla_ros"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CameraConfig:
    name: str
    topic: str
    # sensor_msgs/Image ("raw") or sensor_msgs/CompressedImage ("compressed")
    message: Literal["raw", "compressed"] = "raw"
    # [height, width] the model wants; a simulator publishes at this size, the policy
    # resizes (with padding) anything else.
    image_size: tuple[int, int] = (224, 224)

    def validate(self) -> None:
        if not self.name:
            raise ValueError("name: expected a non-empty camera name")
        if not self.topic:
            raise ValueError("topic: expected a topic name")
        if min(self.image_size) <= 0:
            raise ValueError(f"image_size: expected positive [height, width], got {list(self.image_size)}")


@dataclass
class StateSourceConfig:
    """One sensor_msgs/JointState topic and the joints taken from it (by name), in order."""

    topic: str
    joints: list[str]

    def validate(self) -> None:
        if not self.joints:
            raise ValueError("joints: expected at least one joint name")


@dataclass
class OutputConfig:
    name: str
    type: Literal["joint_trajectory", "joint_group_position", "base_twist"]
    topic: str
    # [start, stop) of the action vector driving this output
    action_slice: tuple[int, int]
    # joint_trajectory / joint_group_position: joint names (controller's joints, in the order
    # of the action slice); base_twist: leave empty (the slice is [linear.x, angular.z]).
    joints: list[str] = field(default_factory=list)
    # base_twist only: geometry_msgs/Twist or TwistStamped
    twist_type: Literal["Twist", "TwistStamped"] = "Twist"
    frame_id: str = "base_link"

    @property
    def size(self) -> int:
        return self.action_slice[1] - self.action_slice[0]

    def validate(self) -> None:
        start, stop = self.action_slice
        if start < 0 or stop <= start:
            raise ValueError(
                f"action_slice: expected [start, stop) with 0 <= start < stop, got {[start, stop]}"
            )
        if self.type == "base_twist":
            if self.size != 2:
                raise ValueError(
                    f"action_slice: base_twist takes 2 actions [linear.x, angular.z], got {self.size}"
                )
            if self.joints:
                raise ValueError("joints: base_twist takes no joint names")
        else:
            if len(self.joints) != self.size:
                raise ValueError(
                    f"joints: expected {self.size} joint names for action_slice "
                    f"{[start, stop]}, got {len(self.joints)}"
                )
            if len(set(self.joints)) != len(self.joints):
                raise ValueError("joints: duplicate joint names")


@dataclass
class JointLimit:
    lower: float
    upper: float
    velocity: float  # max |velocity| in units per second

    def validate(self) -> None:
        if not all(math.isfinite(v) for v in (self.lower, self.upper, self.velocity)):
            raise ValueError("expected finite lower, upper and velocity")
        if self.lower > self.upper:
            raise ValueError(f"lower: expected lower <= upper, got {self.lower} > {self.upper}")
        if self.velocity <= 0:
            raise ValueError(f"velocity: expected > 0, got {self.velocity}")


@dataclass
class BaseLimit:
    linear: float = 0.5  # m/s, |linear.x|
    angular: float = 1.0  # rad/s, |angular.z|

    def validate(self) -> None:
        if not (self.linear > 0 and self.angular > 0):
            raise ValueError("expected linear > 0 and angular > 0")


@dataclass
class LimitsConfig:
    joints: dict[str, JointLimit]
    base: BaseLimit = field(default_factory=BaseLimit)


@dataclass
class SafetyConfig:
    # a camera or joint state older than this stops new commands (and holds)
    stale_timeout_s: float = 0.5
    # an inference slower than this is discarded (overrun) and the robot holds
    max_inference_s: float = 1.0

    def validate(self) -> None:
        if self.stale_timeout_s <= 0:
            raise ValueError(f"stale_timeout_s: expected > 0, got {self.stale_timeout_s}")
        if self.max_inference_s <= 0:
            raise ValueError(f"max_inference_s: expected > 0, got {self.max_inference_s}")


@dataclass
class Embodiment:
    name: str
    cameras: list[CameraConfig]
    state: list[StateSourceConfig]
    outputs: list[OutputConfig]
    limits: LimitsConfig
    control_rate_hz: float = 50.0
    # steps of each chunk executed before the next chunk replaces it
    execute_steps: int = 25
    # model folder; relative paths are relative to the package share dir (or the repository)
    model: str = ""
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    description: str = ""

    # --- derived ---------------------------------------------------------------------------
    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    @property
    def state_names(self) -> list[str]:
        return [j for s in self.state for j in s.joints]

    @property
    def action_dim(self) -> int:
        return max(o.action_slice[1] for o in self.outputs)

    @property
    def action_names(self) -> list[str]:
        names = [""] * self.action_dim
        for o in self.outputs:
            labels = o.joints if o.type != "base_twist" else [f"{o.name}_linear_x", f"{o.name}_angular_z"]
            for i, label in zip(range(*o.action_slice), labels):
                names[i] = label
        return names

    @property
    def dt(self) -> float:
        return 1.0 / self.control_rate_hz

    def validate(self) -> None:
        if not self.cameras:
            raise ValueError("cameras: expected at least one camera")
        if len({c.name for c in self.cameras}) != len(self.cameras):
            raise ValueError("cameras: duplicate camera names")
        if not self.state:
            raise ValueError("state: expected at least one JointState source")
        names = self.state_names
        if len(set(names)) != len(names):
            raise ValueError("state: a joint appears twice")
        if not self.outputs:
            raise ValueError("outputs: expected at least one output")
        if not (0 < self.control_rate_hz <= 1000):
            raise ValueError(f"control_rate_hz: expected 0 < rate <= 1000, got {self.control_rate_hz}")
        if self.execute_steps < 1:
            raise ValueError(f"execute_steps: expected >= 1, got {self.execute_steps}")
        covered = [0] * self.action_dim
        for i, o in enumerate(self.outputs):
            for j in range(*o.action_slice):
                covered[j] += 1
            if o.type != "base_twist":
                missing = [j for j in o.joints if j not in self.limits.joints]
                if missing:
                    raise ValueError(f"limits.joints: no limits for joint '{missing[0]}' of outputs[{i}]")
                unmeasured = [j for j in o.joints if j not in names]
                if unmeasured:
                    raise ValueError(
                        f"outputs[{i}].joints: joint '{unmeasured[0]}' is not in any state source "
                        f"(the node starts each chunk from the measured position)"
                    )
        if any(c != 1 for c in covered):
            bad = [j for j, c in enumerate(covered) if c != 1]
            raise ValueError(
                f"outputs: every action index must be driven by exactly one output; "
                f"index {bad[0]} is driven by {covered[bad[0]]}"
            )
        if len({o.name for o in self.outputs}) != len(self.outputs):
            raise ValueError("outputs: duplicate output names")


def embodiment_dirs() -> list[Path]:
    """Where embodiment names are looked up: the installed share dir, then this checkout."""
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(PACKAGE)) / "config" / "embodiments")
    except Exception:  # noqa: BLE001 - no ament index (pip install / source checkout)
        pass
    dirs.append(REPO_ROOT / "config" / "embodiments")
    return dirs


def share_dir() -> Path:
    """The package share dir when installed with colcon, else the repository root."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001
        return REPO_ROOT


def resolve_embodiment_path(name_or_path: str) -> Path:
    p = Path(os.path.expanduser(name_or_path))
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        return p
    for d in embodiment_dirs():
        candidate = d / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({q.stem for d in embodiment_dirs() if d.is_dir() for q in d.glob("*.yaml")})
    raise ConfigError(
        f"embodiment '{name_or_path}': no such file in {[str(d) for d in embodiment_dirs()]}; "
        f"known embodiments: {known}"
    )


def load_embodiment(name_or_path: str) -> Embodiment:
    """An embodiment by name (``aloha_bimanual``) or by path to a YAML file."""
    return load_config(Embodiment, resolve_embodiment_path(name_or_path))


def resolve_model_dir(model: str, embodiment: Embodiment | None = None) -> Path:
    """The model folder: ``model`` if given, else the embodiment's; relative paths are looked up
    under the package share dir, then the repository, then the working directory."""
    model = model or (embodiment.model if embodiment else "")
    if not model:
        raise ConfigError("no model folder given (parameter 'model' and the embodiment's 'model' are empty)")
    p = Path(os.path.expanduser(model))
    if p.is_absolute():
        return p
    for base in (share_dir(), REPO_ROOT, Path.cwd()):
        if (base / p).exists():
            return base / p
    return share_dir() / p


def missing_model_hint(model: str, embodiment: str, pass_it: str = "model:=DIR (`ki-vla run --model DIR`)") -> str:
    """One line: model folder `model` not found, and how to make one or which to pass."""
    return (f"model folder {model} not found: make one with `ki-vla init-model {model} --embodiment {embodiment}` "
            f"(random weights, for commissioning), train one (docs/training.md) or pass {pass_it}")


__all__ = [
    "CameraConfig",
    "StateSourceConfig",
    "OutputConfig",
    "JointLimit",
    "BaseLimit",
    "LimitsConfig",
    "SafetyConfig",
    "Embodiment",
    "load_embodiment",
    "resolve_embodiment_path",
    "resolve_model_dir",
    "embodiment_dirs",
    "share_dir",
]
