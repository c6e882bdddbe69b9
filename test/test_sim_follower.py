"""The JTC-like follower of the simulated robot, against hand-computed values (no ROS)."""

import numpy as np
import pytest

from ki_vla_ros.sim.follower import SimCommand, Trajectory, TrajectoryError, TrajectoryFollower, sample

J = ("a", "b")


def follower(q=(0.0, 0.0)):
    return TrajectoryFollower(J, np.array(q, float))


def test_holds_initial_position_without_trajectory():
    f = follower((0.5, -1.0))
    np.testing.assert_allclose(f.command(0.0), [0.5, -1.0])
    np.testing.assert_allclose(f.command(123.0), [0.5, -1.0])


def test_linear_from_current_position_then_hold():
    f = follower()
    # received at t=10, stamp 0 = now: points (1, 2) at +1 s, (3, 2) at +2 s
    f.set_trajectory(Trajectory(J, [1.0, 2.0], [[1.0, 2.0], [3.0, 2.0]]), now=10.0)
    np.testing.assert_allclose(f.command(10.0), [0.0, 0.0])
    np.testing.assert_allclose(f.command(10.5), [0.5, 1.0])  # half way to the first point
    np.testing.assert_allclose(f.command(11.0), [1.0, 2.0])
    np.testing.assert_allclose(f.command(11.25), [1.5, 2.0])
    np.testing.assert_allclose(f.command(12.0), [3.0, 2.0])
    np.testing.assert_allclose(f.command(20.0), [3.0, 2.0])  # last point held
    assert f.active_until() == pytest.approx(12.0)


def test_joint_order_by_name():
    f = follower()
    f.set_trajectory(Trajectory(("b", "a"), [1.0], [[2.0, 4.0]]), now=0.0)
    np.testing.assert_allclose(f.command(1.0), [4.0, 2.0])


def test_cubic_hermite_with_velocities():
    f = follower()
    # one point at +1 s: position 1, velocity 0, from rest at 0 -> 3s^2 - 2s^3
    f.set_trajectory(Trajectory(J, [1.0], [[1.0, 1.0]], velocities=[[0.0, 0.0]]), now=0.0)
    for t in (0.25, 0.5, 0.75):
        np.testing.assert_allclose(f.command(t), [3 * t**2 - 2 * t**3] * 2)
    # with an end velocity of 1: p(s) = -2s^3 + 3s^2 + (s^3 - s^2) = -s^3 + 2 s^2
    g = follower()
    g.set_trajectory(Trajectory(J, [1.0], [[1.0, 1.0]], velocities=[[1.0, 1.0]]), now=0.0)
    np.testing.assert_allclose(g.command(0.5), [-(0.5**3) + 2 * 0.25] * 2)
    pos, vel = g.desired_state(0.5)
    np.testing.assert_allclose(vel, [-3 * 0.25 + 4 * 0.5] * 2)


def test_sample_matches_hermite_basis_between_points():
    times = np.array([0.0, 2.0])
    pos = np.array([[1.0], [3.0]])
    vel = np.array([[2.0], [-1.0]])
    s = 0.25
    h = 2.0
    expected = (2 * s**3 - 3 * s**2 + 1) * 1 + (s**3 - 2 * s**2 + s) * 2 * h + (-2 * s**3 + 3 * s**2) * 3 + (
        s**3 - s**2
    ) * (-1) * h
    p, _ = sample(times, pos, vel, 0.5)
    assert p[0] == pytest.approx(expected)


def test_new_trajectory_replaces_running_one_from_its_start():
    f = follower()
    f.set_trajectory(Trajectory(J, [1.0], [[1.0, 0.0]]), now=0.0)
    np.testing.assert_allclose(f.command(0.5), [0.5, 0.0])
    # at 0.5 a new one starts from the current desired position (0.5) towards -1 at +0.5 s
    f.set_trajectory(Trajectory(J, [0.5], [[-1.0, 0.0]]), now=0.5)
    np.testing.assert_allclose(f.command(0.75), [-0.25, 0.0])
    np.testing.assert_allclose(f.command(1.0), [-1.0, 0.0])
    np.testing.assert_allclose(f.command(5.0), [-1.0, 0.0])


def test_future_start_time_keeps_old_trajectory_until_then():
    f = follower()
    f.set_trajectory(Trajectory(J, [2.0], [[2.0, 0.0]]), now=0.0)
    f.set_trajectory(Trajectory(J, [1.0], [[0.0, 0.0]], start_time=1.0), now=0.1)
    np.testing.assert_allclose(f.command(0.5), [0.5, 0.0])  # old one still running
    np.testing.assert_allclose(f.command(1.0), [1.0, 0.0])  # new one starts here, at 1.0
    np.testing.assert_allclose(f.command(1.5), [0.5, 0.0])
    np.testing.assert_allclose(f.command(2.0), [0.0, 0.0])
    # a later 'now' trajectory drops queued ones that start after it
    f.set_trajectory(Trajectory(J, [1.0], [[9.0, 9.0]], start_time=10.0), now=2.0)
    f.set_trajectory(Trajectory(J, [1.0], [[1.0, 1.0]]), now=3.0)
    np.testing.assert_allclose(f.command(11.0), [1.0, 1.0])


def test_past_start_time_skips_passed_points():
    f = follower()
    # started at 0 but received at 1.5: the first point (t=1) passed; we are half way to the 2nd
    f.set_trajectory(Trajectory(J, [1.0, 2.0], [[1.0, 0.0], [3.0, 0.0]], start_time=1e-9), now=1.5)
    np.testing.assert_allclose(f.command(1.5), [2.0, 0.0], atol=1e-6)


def test_partial_joints_hold_the_others():
    f = follower((0.3, 0.7))
    f.set_trajectory(Trajectory(("b",), [1.0], [[1.7]]), now=0.0)
    np.testing.assert_allclose(f.command(0.5), [0.3, 1.2])


def test_first_point_at_zero_replaces_anchor():
    f = follower()
    f.set_trajectory(Trajectory(J, [0.0], [[2.0, 2.0]]), now=1.0)
    np.testing.assert_allclose(f.command(1.0), [2.0, 2.0])


def test_empty_trajectory_stops_at_desired_position():
    f = follower()
    f.set_trajectory(Trajectory(J, [1.0], [[1.0, 1.0]]), now=0.0)
    f.set_trajectory(Trajectory(J, [], np.zeros((0, 2))), now=0.5)
    np.testing.assert_allclose(f.command(3.0), [0.5, 0.5])


@pytest.mark.parametrize(
    "traj, match",
    [
        (Trajectory(("a", "zz"), [1.0], [[0.0, 0.0]]), "unknown joint"),
        (Trajectory(("a", "a"), [1.0], [[0.0, 0.0]]), "duplicate"),
        (Trajectory(J, [1.0], [[0.0]]), "shape"),
        (Trajectory(J, [1.0], [[0.0, 0.0]], velocities=[[0.0]]), "velocities"),
        (Trajectory(J, [1.0], [[np.nan, 0.0]]), "NaN"),
        (Trajectory(J, [1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]]), "increasing"),
    ],
)
def test_invalid_trajectories_are_refused_and_old_one_kept(traj, match):
    f = follower()
    f.set_trajectory(Trajectory(J, [1.0], [[1.0, 1.0]]), now=0.0)
    with pytest.raises(TrajectoryError, match=match):
        f.set_trajectory(traj, now=0.5)
    np.testing.assert_allclose(f.command(1.0), [1.0, 1.0])


def test_sim_command_maps_two_arms_to_14d():
    from ki_vla_ros.sim.aloha import JOINT_NAMES

    left, right = JOINT_NAMES[:7], JOINT_NAMES[7:]
    q0 = np.arange(14, dtype=float) * 0.01
    cmd = SimCommand({"left_arm": left, "right_arm": right}, JOINT_NAMES, q0)
    np.testing.assert_allclose(cmd.command(0.0), q0)
    cmd.set_trajectory("right_arm", Trajectory(("right_gripper",), [1.0], [[1.0]]), now=0.0)
    out = cmd.command(1.0)
    assert out[13] == pytest.approx(1.0)
    np.testing.assert_allclose(out[:13], q0[:13])
    with pytest.raises(TrajectoryError, match="unknown joint"):
        cmd.set_trajectory("left_arm", Trajectory(("right_waist",), [1.0], [[0.0]]), now=1.0)
    with pytest.raises(TrajectoryError, match="unknown controller"):
        cmd.set_trajectory("base", Trajectory(("x",), [1.0], [[0.0]]), now=1.0)
    cmd.reset()
    np.testing.assert_allclose(cmd.command(2.0), q0)
