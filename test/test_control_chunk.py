"""Chunk safety without ROS: clamping, velocity limits, NaN rejection, latency compensation."""

import numpy as np
import pytest

from ki_vla_ros.control.chunk import (
    JointLimits,
    UnsafeChunkError,
    compensate_latency,
    finite_difference_velocities,
    observation_time,
    plan_base_chunk,
    plan_joint_chunk,
    stale_sources,
    stream_index,
)

LIM = JointLimits.from_lists([-1.0, 0.0], [1.0, 1.0], [2.0, 1.0])
DT = 0.02


def test_latency_compensation_drops_passed_waypoints_and_rebases():
    first, times = compensate_latency(10, DT, elapsed=0.05)
    # action i is due at (i+1)*dt: 0.02, 0.04 passed; 0.06 is only 0.01 ahead (< one period)
    assert first == 3
    np.testing.assert_allclose(times, (np.arange(3, 10) + 1) * DT - 0.05)
    assert times[0] >= DT - 1e-9 and np.all(np.diff(times) > 0)
    assert compensate_latency(10, DT, 0.0)[0] == 0
    assert len(compensate_latency(5, DT, 1.0)[1]) == 0


def test_plan_clamps_positions_and_step_velocity():
    actions = np.tile([[5.0, -3.0]], (20, 1))
    wp = plan_joint_chunk(actions, np.array([0.0, 0.5]), LIM, DT, elapsed=0.0)
    assert np.all(wp.positions <= LIM.upper + 1e-12) and np.all(wp.positions >= LIM.lower - 1e-12)
    steps = np.diff(np.vstack([[0.0, 0.5], wp.positions]), axis=0)
    dts = np.diff(np.concatenate([[0.0], wp.times]))
    assert np.all(np.abs(steps) <= LIM.velocity * dts[:, None] + 1e-9)
    # joint 0 approaches its limit at the velocity limit, then stays clamped at 1.0
    np.testing.assert_allclose(wp.positions[:5, 0], 2.0 * DT * np.arange(1, 6))
    assert wp.positions[-1, 0] == pytest.approx(0.8)  # 20 steps * 0.04
    assert wp.positions[-1, 1] == pytest.approx(0.1)  # 0.5 - 20 * 0.02, towards the lower bound 0
    assert np.all(np.abs(wp.velocities) <= LIM.velocity + 1e-9)
    assert np.all(wp.velocities[-1] == 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_chunks_and_states_are_rejected(bad):
    actions = np.zeros((5, 2))
    actions[2, 1] = bad
    with pytest.raises(UnsafeChunkError, match="NaN/inf"):
        plan_joint_chunk(actions, np.zeros(2), LIM, DT, 0.0)
    with pytest.raises(UnsafeChunkError, match="NaN/inf"):
        plan_joint_chunk(np.zeros((5, 2)), np.array([0.0, bad]), LIM, DT, 0.0)
    with pytest.raises(UnsafeChunkError):
        plan_base_chunk(actions, 0.5, 1.0, DT, 0.0)


def test_chunk_that_fully_passed_is_rejected():
    with pytest.raises(UnsafeChunkError, match="passed"):
        plan_joint_chunk(np.zeros((3, 2)), np.zeros(2), LIM, DT, elapsed=0.5)


def test_velocities_by_finite_differences():
    times = np.array([0.02, 0.04, 0.06])
    pos = np.array([[0.02], [0.04], [0.06]])
    vel = finite_difference_velocities(pos, times, np.array([0.0]))
    np.testing.assert_allclose(vel[:2, 0], [1.0, 1.0])
    assert vel[-1, 0] == 0.0


def test_base_chunk_is_clamped():
    cmd, times = plan_base_chunk(np.array([[2.0, -5.0], [0.1, 0.2]]), 0.5, 1.0, DT, 0.0)
    np.testing.assert_allclose(cmd, [[0.5, -1.0], [0.1, 0.2]])
    np.testing.assert_allclose(times, [0.02, 0.04])


def test_stream_index_and_staleness():
    times = np.array([0.02, 0.04, 0.06])
    assert stream_index(times, 0.0) == 0
    assert stream_index(times, 0.03) == 1
    assert stream_index(times, 0.07) is None
    assert stale_sources({"a": 9.8, "b": 9.0, "c": None}, now=10.0, timeout=0.5) == ["b", "c"]


def test_observation_time_is_the_oldest_sensor_stamp():
    # the latency a chunk must make up starts at capture, not when inference begins
    assert observation_time([9.98, 9.96, 9.99], now=10.0, max_age=0.5) == pytest.approx(9.96)
    first, _ = compensate_latency(50, DT, 10.07 - observation_time([9.96, 9.99], now=10.0, max_age=0.5))
    assert first == 6  # 110 ms after capture: actions 0..5 are past or due within one period
    # a clock message not yet seen: a stamp a little ahead of now counts as now
    assert observation_time([10.004, 9.99], now=10.0, max_age=0.5) == pytest.approx(9.99)
    assert observation_time([10.004], now=10.0, max_age=0.5) == pytest.approx(10.0)
    # stamps that cannot be on the node's clock: fall back to now
    assert observation_time([], now=10.0, max_age=0.5) == 10.0
    assert observation_time([0.0, 9.99], now=10.0, max_age=0.5) == 10.0  # unstamped
    assert observation_time([1.7e9, 9.99], now=10.0, max_age=0.5) == 10.0  # wall clock under sim time
    assert observation_time([8.0, 9.99], now=10.0, max_age=0.5) == 10.0  # older than stale


def test_waypoint_position_at_interpolates_and_holds():
    wp = plan_joint_chunk(np.array([[0.02, 0.5], [0.04, 0.5]]), np.array([0.0, 0.5]), LIM, DT, 0.0)
    np.testing.assert_allclose(wp.position_at(0.01, np.array([0.0, 0.5])), [0.01, 0.5])
    np.testing.assert_allclose(wp.position_at(10.0, np.array([0.0, 0.5])), [0.04, 0.5])
