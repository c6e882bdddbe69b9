"""The embodiment-level chunk executor without ROS: outputs, streaming, holding, NaN."""

import numpy as np
import pytest

from ki_vla_ros.control.chunk import UnsafeChunkError
from ki_vla_ros.control.executor import ChunkExecutor, update_latency_estimate
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


def _ramp_chunk(t0: float, n: int, dt: float, speed: float) -> np.ndarray:
    """A 14-D chunk whose action i targets t0 + (i + 1) dt on a joint-0 ramp q = speed * t."""
    actions = np.zeros((n, 14))
    actions[:, 0] = speed * (t0 + (np.arange(n) + 1) * dt)
    return actions


def test_new_chunk_starts_from_the_commanded_position_not_the_observed_state():
    emb = load_embodiment("aloha_bimanual")
    ex = ChunkExecutor(emb)
    dt, speed = emb.dt, 2.0  # rad/s, below the waist's 3 rad/s limit; the ramp stays within ±3.14
    first = ex.make_plan(_ramp_chunk(0.0, 50, dt, speed), np.zeros(14), elapsed=0.0, t_publish=0.0)
    ex.accept(first)
    # observed at t = 0.3 s (the arm measured there), ready 0.5 s later: by then the controller
    # commands the ramp at 0.8 s; the new chunk continues the same ramp
    t_obs, elapsed = 0.3, 0.5
    state = np.zeros(14)
    state[0] = speed * t_obs
    plan = ex.make_plan(_ramp_chunk(t_obs, 50, dt, speed), state, elapsed=elapsed, t_publish=t_obs + elapsed)
    left = plan.outputs["left_arm"]
    np.testing.assert_allclose(left.start[0], speed * (t_obs + elapsed), atol=1e-9)
    # nothing dragged back: the kept waypoints are the chunk's own ramp
    expected = speed * (t_obs + (left.waypoints.first_index + np.arange(len(left.waypoints)) + 1) * dt)
    np.testing.assert_allclose(left.waypoints.positions[:, 0], expected, atol=1e-9)
    # from the observed state the velocity limit would have pulled the first waypoints back
    ex_fresh = ChunkExecutor(emb)
    dragged = ex_fresh.make_plan(_ramp_chunk(t_obs, 50, dt, speed), state, elapsed, t_obs + elapsed)
    assert expected[0] - dragged.outputs["left_arm"].waypoints.positions[0, 0] > 0.3


def test_gripper_closed_on_an_object_is_not_reopened_by_the_next_chunk():
    emb = load_embodiment("aloha_bimanual")
    ex = ChunkExecutor(emb)
    closed = np.zeros((50, 14))  # left gripper (joint 6) commanded closed
    ex.accept(ex.make_plan(closed, np.zeros(14), 0.0, t_publish=0.0))
    state = np.zeros(14)
    state[6] = 0.6  # measured open: the fingers rest on the cube
    plan = ex.make_plan(closed, state, elapsed=0.2, t_publish=0.5)
    assert np.all(plan.outputs["left_arm"].waypoints.positions[:, 6] == 0.0)


def test_first_chunk_and_chunk_after_hold_anchor():
    emb = load_embodiment("aloha_bimanual")
    ex = ChunkExecutor(emb)
    state = np.full(14, 0.1)
    plan = ex.make_plan(np.full((20, 14), 0.1), state, 0.0, t_publish=0.0)
    np.testing.assert_allclose(plan.outputs["right_arm"].start, state[7:])  # nothing commanded yet
    ex.accept(plan)
    held = ex.hold(1.0)["right_arm"]
    later = ex.make_plan(np.full((20, 14), 0.1), np.zeros(14), 0.0, t_publish=5.0)
    np.testing.assert_allclose(later.outputs["right_arm"].start, held)  # what the controller holds


def test_a_new_run_starts_from_the_measured_state():
    emb = load_embodiment("aloha_bimanual")
    ex = ChunkExecutor(emb)
    ex.accept(ex.make_plan(np.full((20, 14), 0.5), np.zeros(14), 0.0, t_publish=0.0))
    ex.hold(1.0)
    ex.forget()  # stopped, the robot reset to zero, started again
    plan = ex.make_plan(np.zeros((20, 14)), np.zeros(14), 0.0, t_publish=5.0)
    np.testing.assert_allclose(plan.outputs["left_arm"].start, np.zeros(7))
    np.testing.assert_allclose(plan.outputs["left_arm"].waypoints.positions, 0.0)


def test_replan_time_and_latency_estimate():
    emb = load_embodiment("aloha_bimanual")  # 50 Hz, execute_steps 40
    ex = ChunkExecutor(emb)
    state = np.zeros(14)
    plan = ex.make_plan(np.zeros((50, 14)), state, elapsed=0.08, t_publish=10.08)
    assert plan.first_index == 4
    # the next chunk, 80 ms in the making, takes over 40 steps after the observation at 10.0
    assert ex.replan_time(plan, 50, 10.0, 0.08) == pytest.approx(10.0 + 40 * 0.02 - 0.08)
    assert ex.replan_time(plan, 50, 10.0, 0.08, execute_steps=10) == pytest.approx(10.0 + 10 * 0.02 - 0.08)
    # never later than the chunk's end; at least one action after the first kept one
    assert ex.replan_time(plan, 30, 10.0, 0.08) == pytest.approx(10.0 + 30 * 0.02 - 0.08)
    assert ex.replan_time(plan, 50, 10.0, 0.08, execute_steps=2) == pytest.approx(10.0 + 5 * 0.02 - 0.08)
    assert update_latency_estimate(0.0, 0.08) == 0.08  # the first measurement as is
    assert update_latency_estimate(0.08, 0.18) == pytest.approx(0.11)
