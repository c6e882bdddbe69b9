"""The embodiment-level chunk executor without ROS: outputs, streaming, holding, NaN."""

import numpy as np
import pytest

from ki_vla_ros.control.chunk import UnsafeChunkError
from ki_vla_ros.control.executor import ChunkExecutor
from ki_vla_ros.control.policy_loader import LayoutMapper
from ki_vla_ros.embodiment import load_embodiment


def test_bimanual_plan_splits_outputs_and_clamps():
    emb = load_embodiment("aloha_bimanual")
    ex = ChunkExecutor(emb)
    actions = np.zeros((50, 14))
    actions[:, 1] = 9.0  # left shoulder far beyond its 1.26 upper limit
    actions[:, 13] = -3.0  # right gripper below 0 (closed)
    plan = ex.make_plan(actions, np.zeros(14), elapsed=0.03, t_publish=100.0)
    assert set(plan.outputs) == {"left_arm", "right_arm"}
    left = plan.outputs["left_arm"].waypoints
    assert left.first_index == plan.first_index == 2 and len(left) == 48
    assert np.all(left.positions[:, 1] <= 1.26) and np.all(
        plan.outputs["right_arm"].waypoints.positions[:, 6] >= 0
    )
    ex.accept(plan)
    held = ex.hold(100.0 + left.times[-1] + 1.0)
    np.testing.assert_allclose(held["left_arm"], left.positions[-1])


def test_mobile_base_streams_and_zero_on_hold():
    emb = load_embodiment("mobile_aloha")
    ex = ChunkExecutor(emb)
    actions = np.zeros((10, 16))
    actions[:, 14] = 3.0  # beyond 0.5 m/s
    actions[:, 15] = 0.2
    ex.accept(ex.make_plan(actions, np.zeros(14), 0.0, t_publish=0.0))
    np.testing.assert_allclose(ex.stream(0.01)["base"], [0.5, 0.2])
    np.testing.assert_allclose(ex.stream(5.0)["base"], [0.0, 0.0])  # exhausted chunk: stop
    assert np.all(ex.hold(0.05)["base"] == 0.0)


def test_group_position_streams_then_holds_last():
    emb = load_embodiment("franka_single_arm")
    ex = ChunkExecutor(emb)
    state = np.array([0, 0, 0, -1.5, 0, 1.5, 0, 0.5])
    actions = np.tile(state, (5, 1))
    actions[:, 0] = np.linspace(0.01, 0.05, 5)
    ex.accept(ex.make_plan(actions, state, 0.0, t_publish=0.0))
    first = ex.stream(0.0)["arm"]
    assert first[0] == pytest.approx(0.01)
    last = ex.stream(10.0)["arm"]
    assert last[0] == pytest.approx(0.01)  # exhausted right away at t=10: holds the last streamed
    ex.accept(ex.make_plan(actions, state, 0.0, t_publish=0.0))
    for t in np.arange(0, 0.3, 0.05):
        cmd = ex.stream(t)["arm"]
    assert cmd[0] == pytest.approx(0.05)


def test_nan_state_or_chunk_never_planned():
    emb = load_embodiment("aloha_bimanual")
    ex = ChunkExecutor(emb)
    state = np.zeros(14)
    state[3] = np.nan
    with pytest.raises(UnsafeChunkError):
        ex.make_plan(np.zeros((10, 14)), state, 0.0, 0.0)
    bad = np.zeros((10, 14))
    bad[4, 9] = np.inf
    with pytest.raises(UnsafeChunkError):
        ex.make_plan(bad, np.zeros(14), 0.0, 0.0)
    with pytest.raises(UnsafeChunkError, match="shape"):
        ex.make_plan(np.zeros((10, 12)), np.zeros(14), 0.0, 0.0)


def test_layout_mapper_maps_by_name_and_refuses_missing():
    emb = load_embodiment("aloha_bimanual")

    class Layout:
        camera_names = ["cam_high"]
        state_names = list(reversed(emb.state_names))
        action_names = list(reversed(emb.action_names))

    class P:
        layout = Layout()

    m = LayoutMapper(emb, P())
    state = np.arange(14.0)
    np.testing.assert_allclose(m.state_for_policy(state), state[::-1])
    np.testing.assert_allclose(m.actions_for_embodiment(np.arange(14.0)[None]), np.arange(14.0)[None, ::-1])
    assert m.camera_names == ["cam_high"]
    Layout.camera_names = ["cam_low"]
    with pytest.raises(ValueError, match="cam_low"):
        LayoutMapper(emb, P())
