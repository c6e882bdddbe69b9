"""`Episode`: one demonstration on the control-rate grid, as every robot reader returns it.

Arrays are indexed by grid step k (t_k = start + k / control_rate). `valid[k]` is False where a
required message was missing, misaligned or corrupt at step k: such steps are never used as
observations nor inside an action chunk (nothing is filled in). Images are already resized with
padding to the model's square size (uint8, so an episode stays small and can be memory-mapped).

`LoadReport` counts what happened while reading, per reason, so a data problem is visible in the
training log and in ``<run_dir>/data_report.json`` instead of silently changing the data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    source: str  # bag path / LeRobot episode id
    instruction: str
    images: np.ndarray  # uint8 [T, V, S, S, 3], V = len(camera_names)
    image_mask: np.ndarray  # bool [T, V]: camera present at this step
    state: np.ndarray  # float64 [T, Ds] (robot units)
    actions: np.ndarray  # float64 [T, Da] (robot units); the action commanded at step k
    valid: np.ndarray  # bool [T]
    camera_names: list[str]
    state_names: list[str]
    action_names: list[str]
    control_rate_hz: float

    def __len__(self) -> int:
        return len(self.valid)

    def sample_steps(self, horizon: int) -> np.ndarray:
        """Steps k usable as a training sample: k valid and every step of its chunk
        k .. min(k + horizon, T) - 1 valid (past the episode end the last action is held)."""
        t = len(self.valid)
        bad = np.concatenate([~self.valid, np.zeros(horizon, bool)]).astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(bad)])
        k = np.arange(t)
        return k[(csum[k + horizon] - csum[k]) == 0]

    def chunk(self, k: int, horizon: int) -> np.ndarray:
        """Actions k .. k + horizon - 1 [H, Da]; after the last step the final action is held."""
        idx = np.minimum(np.arange(k, k + horizon), len(self.valid) - 1)
        return self.actions[idx]


@dataclass
class LoadReport:
    """What reading a dataset found: message counts per topic and problems per reason."""

    source: str
    episodes: int = 0
    steps: int = 0
    samples: int = 0
    messages: Counter = field(default_factory=Counter)  # topic -> messages read
    problems: Counter = field(default_factory=Counter)  # "reason: topic" -> count
    skipped: list[str] = field(default_factory=list)  # broken episodes skipped (on_error: skip), one line each

    def add(self, other: LoadReport) -> None:
        self.episodes += other.episodes
        self.steps += other.steps
        self.samples += other.samples
        self.messages.update(other.messages)
        self.problems.update(other.problems)
        self.skipped += other.skipped

    def to_dict(self) -> dict:
        return {"source": self.source, "episodes": self.episodes, "steps": self.steps, "samples": self.samples,
                "messages": dict(self.messages), "problems": dict(self.problems),
                "skipped_episodes": len(self.skipped), "skipped": list(self.skipped)}

    @classmethod
    def from_dict(cls, d: dict) -> LoadReport:
        return cls(d["source"], d["episodes"], d["steps"], d["samples"], Counter(d["messages"]),
                   Counter(d["problems"]), list(d.get("skipped", [])))

    def summary(self) -> str:
        text = f"{self.source}: {self.episodes} episodes, {self.steps} steps"
        if self.skipped:
            text += f"; {len(self.skipped)} broken episode(s) skipped"
        if self.problems:
            text += "; problems: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.problems.items()))
        return text
