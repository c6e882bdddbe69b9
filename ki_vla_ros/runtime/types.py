"""What a policy takes and returns at run time (shared by the runtime, the ROS node and eval)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observation:
    """One observation of the robot, in robot units.

    images: camera name -> uint8 array [height, width, 3], RGB. Any size; the policy resizes
        (with padding) to the model's image size.
    state: float array [state_dim] in robot units (joint positions etc.), in the order of the
        model folder's state layout.
    instruction: the language command.
    stamp: when the observation was taken (s, the caller's clock: the node's clock, sim time
        under use_sim_time), or None. The model ignores it; time-aware policies may use it.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    stamp: float | None = None


@dataclass
class PolicyOutput:
    """actions: float64 [horizon, action_dim] in robot units (de-normalised).
    timings_ms: time spent per stage, e.g. {"preprocess", "model", "postprocess", "total"}."""

    actions: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
