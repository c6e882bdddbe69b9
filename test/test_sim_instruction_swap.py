"""The instruction-swap probe (sim/instruction_swap.py): the same first observation predicted with the
episode's own words and with the colour or the arm swapped; a policy that ignores the words scores
the same three times, one that reads them does not."""

import dataclasses
import json

import numpy as np
import pytest
from ros_helpers import tiny_model_dir, write_aloha_bag

from ki_vla_ros.runtime import Policy, PolicyOutput
from ki_vla_ros.sim.instruction_swap import instruction_swap, swapped


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    rows = []
    for i, task in enumerate(("pick_red_left", "pick_blue_right")):
        write_aloha_bag(root / "bags" / f"ep{i}", duration_s=1.0, commands=True)
        rows.append({"bag": f"bags/ep{i}", "task": task, "instruction": f"please {task.replace('_', ' ')}"})
    (root / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


class WordReader:
    """A policy that puts the arms where the demonstration did (all joints at 0) when told the episode's
    own words, and 0.3 rad off when told anything else."""

    def __init__(self, policy):
        self.policy = policy

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def infer(self, obs, **kwargs):
        actions = np.full((self.policy.action_horizon, len(self.policy.layout.action_names)),
                          0.0 if obs.instruction.startswith("please") else 0.3)
        return PolicyOutput(actions)


class WordBlind:
    """A policy that hears one fixed instruction whatever it is told."""

    def __init__(self, policy):
        self.policy = policy

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def infer(self, obs, **kwargs):
        return self.policy.infer(dataclasses.replace(obs, instruction="pick up the red cube with the left arm"),
                                 **kwargs)


def test_swapped_instructions_change_one_word():
    assert swapped("pick_red_left", "colour") == "pick up the blue cube with the left arm"
    assert swapped("pick_red_left", "arm") == "pick up the red cube with the right arm"
    assert swapped("pick_blue_right", "arm") == "pick up the blue cube with the left arm"


def test_a_word_blind_policy_scores_the_same_and_a_reading_one_does_not(dataset, tmp_path):
    policy = Policy.load(tiny_model_dir(tmp_path / "tiny"), num_steps=2)
    blind = instruction_swap(WordBlind(policy), [dataset])
    assert blind["episodes"] == 2
    errs = [blind[f"{k}_first_chunk_arm_mae_rad"] for k in ("own", "colour_swapped", "arm_swapped")]
    assert errs[0] == errs[1] == errs[2] and np.isfinite(errs[0])
    assert blind["own_closer_than_colour_swapped"] == blind["own_closer_than_arm_swapped"] == 0

    reading = instruction_swap(WordReader(policy), [dataset])
    assert reading["own_first_chunk_arm_mae_rad"] == 0.0
    assert reading["colour_swapped_first_chunk_arm_mae_rad"] == pytest.approx(0.3)
    assert reading["arm_swapped_first_chunk_arm_mae_rad"] == pytest.approx(0.3)
    assert reading["own_closer_than_colour_swapped"] == reading["own_closer_than_arm_swapped"] == 2
    assert instruction_swap(policy, [dataset], every=2)["episodes"] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "episodes.jsonl").write_text("")
    with pytest.raises(ValueError, match="no episodes"):
        instruction_swap(policy, [empty])
