"""Delta actions: the action dims a model predicts as offsets from the current state.

openpi's rule for ALOHA: the joint positions of a chunk are predicted relative to the joint
positions of the observation the chunk was made from (the same state for all H steps); the
grippers stay absolute. A policy then only has to learn the motion, not to copy the current
position out of its (text-binned) state input to within the ~0.02 rad a grasp needs: the
runtime adds the exact measured state back (`to_robot`).

Which dims are relative is a property of the model folder (`Layout.delta_actions`, action names
that are also state names) and of the training data (`DatasetConfig.delta_actions`). Normalisation
statistics of a dataset with delta actions are those of the relative chunks, so the model's
normalised output means the same at training and at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DeltaActions:
    action_index: np.ndarray  # int [K]: action dims predicted relative to the state
    state_index: np.ndarray  # int [K]: the state dim each one is relative to

    @classmethod
    def from_names(cls, names: Sequence[str], action_names: Sequence[str], state_names: Sequence[str],
                   where: str = "delta_actions") -> DeltaActions:
        """`names`: action names that are also state names. ValueError naming `where` otherwise."""
        names = list(names or [])
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: names must be unique, got {names}")
        bad = [n for n in names if n not in action_names or n not in state_names]
        if bad:
            raise ValueError(f"{where}: {bad} must be both action and state names (actions {list(action_names)}, "
                             f"state {list(state_names)})")
        return cls(np.asarray([list(action_names).index(n) for n in names], np.int64),
                   np.asarray([list(state_names).index(n) for n in names], np.int64))

    @classmethod
    def none(cls) -> DeltaActions:
        """All actions absolute."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))

    @property
    def active(self) -> bool:
        return len(self.action_index) > 0

    def to_model(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Absolute actions [..., H, Da] (robot units) -> the model's representation."""
        if not self.active:
            return actions
        out = np.array(actions, np.float64)
        out[..., self.action_index] -= np.asarray(state, np.float64)[..., None, self.state_index]
        return out

    def to_robot(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The model's representation [..., H, Da] (robot units) -> absolute actions."""
        if not self.active:
            return actions
        out = np.array(actions, np.float64)
        out[..., self.action_index] += np.asarray(state, np.float64)[..., None, self.state_index]
        return out
