"""Control policies for closed-loop evaluation: what a policy does when it cannot see.

`BlankImagesPolicy` is the flow policy of a model folder with every camera image replaced by
black before inference (state and instruction unchanged). Success that survives it was not
earned by looking:

    ki-vla eval --policy-class ki_vla_ros.sim.controls:BlankImagesPolicy --tasks pick_red_left,...
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ki_vla_ros.runtime.policy import Policy
from ki_vla_ros.runtime.types import Observation, PolicyOutput


class BlankImagesPolicy(Policy):
    """`Policy` that sees all-black images (same sizes and cameras as the observation's)."""

    def infer(self, obs: Observation, seed: int | None = None, noise: np.ndarray | None = None,
              action_prefix: np.ndarray | None = None) -> PolicyOutput:
        blank = {name: np.zeros_like(img) for name, img in obs.images.items()}
        return super().infer(dataclasses.replace(obs, images=blank), seed, noise, action_prefix)
