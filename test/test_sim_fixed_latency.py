"""The closed loop in one process at a fixed latency (sim/fixed_latency.py), as the recipe study
measures it: episodes per task on consecutive scene seeds, each task's phrasings cycled, rates over
all episodes."""

from itertools import groupby

import pytest
from ros_helpers import tiny_model_dir

from ki_vla_ros.runtime import Policy
from ki_vla_ros.sim.tasks import get_task

pytest.importorskip("mujoco")
from ki_vla_ros.sim.fixed_latency import evaluate_fixed_latency  # noqa: E402


class Recorder:
    """The policy, with every instruction it is asked under recorded."""

    def __init__(self, policy):
        self.policy, self.heard = policy, []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def infer(self, obs, **kwargs):
        self.heard.append(obs.instruction)
        return self.policy.infer(obs, **kwargs)


def test_episodes_cycle_the_phrasings_and_rates_count_every_episode(tmp_path):
    policy = Recorder(Policy.load(tiny_model_dir(tmp_path / "tiny"), num_steps=1))
    out = evaluate_fixed_latency(policy, ["pick_red_left", "pick_blue_right"], 2, 900000, latency=2,
                                 instructions={"pick_red_left": ["grab the red one", "lift the red cube"]},
                                 duration=0.3)
    assert out["episodes"] == 4 and set(out["per_task"]) == {"pick_red_left", "pick_blue_right"}
    # a random tiny policy in 0.3 s neither picks nor reaches
    assert out["success_rate"] == out["instruction_following_rate"] == 0.0
    canonical = get_task("pick_blue_right").instruction  # no phrasings given for it
    assert [k for k, _ in groupby(policy.heard)] == ["grab the red one", "lift the red cube", canonical]
