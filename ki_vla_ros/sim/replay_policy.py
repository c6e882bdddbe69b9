"""A stand-in policy that replays the scripted expert: checks the node and the robot loop, not a model.

The scripted expert (:mod:`ki_vla_ros.sim.expert`) succeeds on every task. Replaying its recorded
actions through the policy node and the simulated robot therefore isolates what lies between
a policy and the robot: chunk timing, latency compensation, limiting, the controller. With an
injected inference delay it shows whether chunks are executed right under latency.

Usage: write a replay file into a folder (``write_replay(folder, task, seed, delay_s)``: runs the
expert for that scene, no rendering), then run the policy node with
``policy_class:=ki_vla_ros.sim.replay_policy:ExpertReplayPolicy`` and ``model:=<folder>``. The
policy re-reads the file when it changes (a new episode: write it before the sim's reset).

Timing: the expert's action ``k`` is the target for ``(k + 1) * dt`` after the episode start.
The first observation after a (re)load is taken as the episode start ``t0`` (the simulator holds
still until the first command); an observation stamped ``t`` gets the actions from
``k = round((t - t0) / dt)`` on, so the chunk is aligned with the node's convention that action
``i`` of a chunk targets ``stamp + (i + 1) * dt``. Past the end the last action is held.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ki_vla_ros.runtime.types import Observation, PolicyOutput

REPLAY_FILE = "expert_replay.json"


def write_replay(folder: str | Path, task: str, seed: int, delay_s: float = 0.0, horizon: int = 50) -> Path:
    """Run the scripted expert on (task, seed) without cameras and write its actions (atomically)."""
    from ki_vla_ros.sim.aloha import CONTROL_DT, JOINT_NAMES
    from ki_vla_ros.sim.expert import rollout

    ep = rollout(task, seed, cameras=())
    doc = {"task": ep.task, "seed": int(seed), "delay_s": float(delay_s), "horizon": int(horizon),
           "dt": CONTROL_DT, "joint_names": list(JOINT_NAMES), "actions": ep.actions.tolist(),
           "written": time.time_ns()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (REPLAY_FILE + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, folder / REPLAY_FILE)
    return folder / REPLAY_FILE


class _Layout:
    def __init__(self, names: list[str]):
        self.camera_names: list[str] = []  # looks at nothing
        self.state_names = list(names)
        self.action_names = list(names)


class ExpertReplayPolicy:
    """Policy interface of :mod:`ki_vla_ros.control.policy_loader` over a replay file."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / REPLAY_FILE
        self._mtime_ns: int | None = None
        self._reload()

    @classmethod
    def load(cls, model_dir, backend: str = "torch", num_steps: int | None = None) -> ExpertReplayPolicy:
        return cls(Path(model_dir))

    def _reload(self) -> None:
        try:
            st = self.path.stat()
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: cannot read the expert replay ({exc}); write it with "
                             "write_replay()") from exc
        self._mtime_ns = st.st_mtime_ns
        self.actions = np.asarray(doc["actions"], np.float64)
        self.dt, self.delay_s, self.horizon = float(doc["dt"]), float(doc["delay_s"]), int(doc["horizon"])
        self.layout = _Layout(doc["joint_names"])
        self.t0: float | None = None  # episode start: the first observation after (re)loading

    def infer(self, obs: Observation, seed: int | None = None) -> PolicyOutput:
        t_start = time.perf_counter()
        if self.path.stat().st_mtime_ns != self._mtime_ns:
            self._reload()
        if obs.stamp is None:
            raise ValueError("ExpertReplayPolicy needs observations with a stamp")
        if self.t0 is None:
            self.t0 = float(obs.stamp)
        k = max(0, int(round((float(obs.stamp) - self.t0) / self.dt)))
        idx = np.minimum(np.arange(k, k + self.horizon), len(self.actions) - 1)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        return PolicyOutput(actions=self.actions[idx].copy(),
                            timings_ms={"total": (time.perf_counter() - t_start) * 1000})


__all__ = ["ExpertReplayPolicy", "write_replay", "REPLAY_FILE"]
