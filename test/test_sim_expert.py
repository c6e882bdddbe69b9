"""Scripted expert and the language-conditioned task predicates."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from ki_vla_ros.sim.aloha import CONTROL_DT, CUBE_HALF, JOINT_NAMES
from ki_vla_ros.sim.expert import NOISE_TIME_CONSTANT_S, execution_noise, rollout
from ki_vla_ros.sim.tasks import ENGAGE, LIFT_HEIGHT, TASK_NAMES, TASKS, Task

SEEDS = (0, 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", TASK_NAMES)
def test_expert_succeeds_and_follows_instruction(name):
    for seed in SEEDS:
        ep = rollout(name, seed, cameras=())
        assert ep.success, (name, seed)
        assert ep.instruction_followed, (name, seed)
        # graded progress agrees: the instructed arm reached the cube, which rose past the lift height
        assert ep.progress["reach_m"] < ENGAGE and ep.progress["lift_m"] > LIFT_HEIGHT - CUBE_HALF, (name, ep.progress)
        assert ep.progress["reach_other_m"] > ENGAGE, (name, ep.progress)  # and kept away from the other cube
        assert ep.actions.shape == ep.joint_positions.shape == (len(ep), 14)
        assert np.allclose(np.diff(ep.timestamps), 0.02)


@pytest.mark.parametrize(
    "judged, done",
    [
        ("pick_red_left", "pick_red_right"),  # wrong arm
        ("pick_red_left", "pick_blue_left"),  # wrong cube
        ("pick_blue_right", "handover_blue_right_to_left"),  # hand-over instead of pick
        ("handover_red_left_to_right", "pick_red_left"),  # pick instead of hand-over
        ("handover_red_left_to_right", "pick_red_right"),  # the receiving arm takes the cube itself
    ],
)
def test_wrong_behaviour_is_not_instruction_following(judged, done):
    ep = rollout(judged, 1, cameras=(), expert_task=done)
    assert not ep.instruction_followed
    assert not ep.success
    if TASKS[judged].cube != TASKS[done].cube:  # the instructed cube was left alone
        assert ep.progress["reach_m"] > ENGAGE and abs(ep.progress["lift_m"]) < 0.005, ep.progress


def test_same_scene_for_every_instruction():
    layouts = [Task.sample_layout(np.random.default_rng(7)) for _ in TASK_NAMES]
    for lay in layouts[1:]:
        assert all(np.allclose(lay[c], layouts[0][c]) for c in ("red", "blue"))
    assert len({t.instruction for t in TASKS.values()}) == len(TASKS) >= 4


def test_execution_noise_is_a_slow_drift_of_the_arm_joints_only():
    n = execution_noise(20000, 0.03, seed=4)
    grippers = [i for i, name in enumerate(JOINT_NAMES) if name.endswith("gripper")]
    arm = [i for i in range(len(JOINT_NAMES)) if i not in grippers]
    assert n.shape == (20000, 14) and not n[:, grippers].any()
    assert np.allclose(n[:, arm].std(axis=0), 0.03, rtol=0.15)
    lag1 = np.mean([np.corrcoef(n[:-1, j], n[1:, j])[0, 1] for j in arm])
    assert lag1 == pytest.approx(np.exp(-CONTROL_DT / NOISE_TIME_CONSTANT_S), abs=0.01)
    assert np.array_equal(execution_noise(50, 0.03, seed=4), n[:50])  # seeded


def test_action_noise_perturbs_what_is_executed_and_records_the_experts_actions():
    clean = rollout("pick_red_left", 1, cameras=())
    noisy = rollout("pick_red_left", 1, cameras=(), action_noise=0.03)
    assert np.array_equal(noisy.actions, clean.actions)  # the labels: the expert's own commands
    arm = [i for i, name in enumerate(JOINT_NAMES) if not name.endswith("gripper")]
    moved = np.abs(noisy.joint_positions - clean.joint_positions)[:, arm].mean()
    assert 0.01 < moved < 0.05, moved  # the executed path left the demonstrated one
    assert noisy.success  # at this scale the grasp still holds
    again = rollout("pick_red_left", 1, cameras=(), action_noise=0.03)
    assert np.array_equal(again.joint_positions, noisy.joint_positions)  # seeded by the episode
    with pytest.raises(ValueError, match="action_noise"):
        rollout("pick_red_left", 1, cameras=(), action_noise=-0.01)
