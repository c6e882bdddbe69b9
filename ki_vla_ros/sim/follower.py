"""A joint_trajectory_controller-like follower for the simulator (no ROS imports).

Semantics follow ros2_control's joint_trajectory_controller (JTC), as the policy node expects
(see the robot conventions):

* A trajectory has joint names (any order, any subset of the controller's joints), a start time
  (``0`` = "now", i.e. the time it is received), and points with positions, optional velocities
  and ``time_from_start``.
* A new trajectory *replaces* the running one from its start time on. Until then (a start time
  in the future) the old one keeps running.
* The segment before the first point starts at the controller's desired state when the
  trajectory starts (position and, for cubic segments, velocity), so nothing jumps.
* Interpolation: cubic Hermite when every point has velocities, linear otherwise. After the last
  point its position is held (velocity zero).
* Joints of the controller that the trajectory does not name hold their desired position at the
  trajectory's start.

Times are plain seconds on one clock (the simulator's sim time). Invalid trajectories raise
:class:`TrajectoryError` with the reason; the follower keeps its previous trajectory.

:class:`SimCommand` combines one follower per controller into the 14-D ALOHA command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class TrajectoryError(ValueError):
    """A trajectory the follower refuses (unknown joints, bad sizes, non-finite values, ...)."""


@dataclass
class Trajectory:
    """``positions`` [N, J] and optional ``velocities`` [N, J] for ``joint_names`` (J), at
    ``times`` [N] seconds after ``start_time`` (``0`` or ``None`` = when it is received)."""

    joint_names: Sequence[str]
    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray | None = None
    start_time: float | None = 0.0


@dataclass
class _Active:
    start: float  # absolute start time
    times: np.ndarray  # [M] absolute times, first = start (the anchor)
    positions: np.ndarray  # [M, J] (controller joints, anchor first)
    velocities: np.ndarray | None  # [M, J] or None (linear)


@dataclass
class TrajectoryFollower:
    """One controller: ``joints`` (its joint names, fixed order) starting at ``initial``."""

    joints: Sequence[str]
    initial: np.ndarray
    _queue: list = field(default_factory=list, repr=False)  # trajectories not yet started
    _active: _Active | None = field(default=None, repr=False)
    _hold: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.joints = tuple(self.joints)
        self.index = {n: i for i, n in enumerate(self.joints)}
        self.reset(self.initial)

    # ----------------------------------------------------------------------------- control
    def reset(self, positions) -> None:
        """Drop every trajectory and hold ``positions``."""
        q = np.asarray(positions, np.float64).reshape(len(self.joints))
        self._hold = q.copy()
        self._active = None
        self._queue = []

    def set_trajectory(self, traj: Trajectory, now: float) -> None:
        """Accept ``traj`` received at ``now`` (raises TrajectoryError and keeps the old one)."""
        names = list(traj.joint_names)
        unknown = [n for n in names if n not in self.index]
        if unknown:
            raise TrajectoryError(f"unknown joint names {unknown}; this controller has {list(self.joints)}")
        if len(set(names)) != len(names):
            raise TrajectoryError(f"duplicate joint names in {names}")
        times = np.asarray(traj.times, np.float64).reshape(-1)
        n = len(times)
        pos = np.asarray(traj.positions, np.float64)
        if n == 0:
            # JTC: an empty trajectory cancels the running one -> hold the current desired state
            start = now if not traj.start_time else float(traj.start_time)
            self._queue = [t for t in self._queue if t[0] < start]
            self._queue.append((start, None))
            return
        if pos.shape != (n, len(names)):
            raise TrajectoryError(f"positions have shape {pos.shape}, expected ({n}, {len(names)})")
        vel = traj.velocities
        if vel is not None:
            vel = np.asarray(vel, np.float64)
            if vel.size == 0:
                vel = None
            elif vel.shape != (n, len(names)):
                raise TrajectoryError(f"velocities have shape {vel.shape}, expected ({n}, {len(names)}) or none")
        if not np.all(np.isfinite(pos)) or (vel is not None and not np.all(np.isfinite(vel))):
            raise TrajectoryError("trajectory contains NaN/inf")
        if not np.all(np.isfinite(times)) or np.any(times < 0) or np.any(np.diff(times) <= 0):
            raise TrajectoryError(f"time_from_start must be >= 0 and strictly increasing, got {times.tolist()}")
        start = now if not traj.start_time else float(traj.start_time)
        cols = [self.index[nm] for nm in names]
        # a newer trajectory replaces everything that would start at or after its own start
        self._queue = [t for t in self._queue if t[0] < start]
        self._queue.append((start, (cols, times, pos, vel)))

    def _activate(self, start: float, payload) -> None:
        q0, v0 = self._desired(start)
        if payload is None:  # empty trajectory: stop, hold the desired position
            self._active, self._hold = None, q0
            return
        cols, times, pos, vel = payload
        others = [c for c in range(len(self.joints)) if c not in cols]
        full_pos = np.tile(q0, (len(times), 1))
        full_pos[:, cols] = pos
        full_vel = None
        if vel is not None:
            full_vel = np.zeros((len(times), len(self.joints)))
            full_vel[:, cols] = vel
        abs_times = start + times
        if times[0] > 0.0:  # anchor: the desired state at the start (no jump)
            v_anchor = v0.copy()
            v_anchor[others] = 0.0
            abs_times = np.concatenate([[start], abs_times])
            full_pos = np.vstack([q0[None], full_pos])
            if full_vel is not None:
                full_vel = np.vstack([v_anchor[None], full_vel])
        self._active = _Active(start, abs_times, full_pos, full_vel)

    def _advance(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            start, payload = self._queue.pop(0)
            self._activate(start, payload)

    def _desired(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        a = self._active
        if a is None:
            return self._hold.copy(), np.zeros(len(self.joints))
        return sample(a.times, a.positions, a.velocities, t)

    def command(self, now: float) -> np.ndarray:
        """Desired positions [J] at ``now`` (the controller's command to the joints)."""
        self._advance(now)
        return self._desired(now)[0]

    def desired_state(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """(positions [J], velocities [J]) desired at ``now``."""
        self._advance(now)
        return self._desired(now)

    def active_until(self) -> float | None:
        """End time of the running trajectory (None when holding)."""
        return float(self._active.times[-1]) if self._active is not None else None


def sample(times: np.ndarray, pos: np.ndarray, vel: np.ndarray | None, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate waypoints (absolute ``times`` [M], ``pos`` [M, J], ``vel`` [M, J] or None) at
    ``t``: cubic Hermite with velocities, linear without; clamps to the first / last point."""
    if t <= times[0]:
        return pos[0].copy(), (vel[0].copy() if vel is not None else np.zeros(pos.shape[1]))
    if t >= times[-1]:
        return pos[-1].copy(), np.zeros(pos.shape[1])
    k = int(np.searchsorted(times, t, side="right")) - 1
    t0, t1 = times[k], times[k + 1]
    h = t1 - t0
    s = (t - t0) / h
    p0, p1 = pos[k], pos[k + 1]
    if vel is None:
        return p0 + s * (p1 - p0), (p1 - p0) / h
    m0, m1 = vel[k] * h, vel[k + 1] * h
    s2, s3 = s * s, s * s * s
    p = (2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0 + (-2 * s3 + 3 * s2) * p1 + (s3 - s2) * m1
    dp = ((6 * s2 - 6 * s) * p0 + (3 * s2 - 4 * s + 1) * m0 + (-6 * s2 + 6 * s) * p1 + (3 * s2 - 2 * s) * m1) / h
    return p, dp


class SimCommand:
    """Controllers (name -> joint names) over one joint vector ``all_joints`` (e.g. the 14 ALOHA
    joints): routes trajectories to their controller and assembles the full command."""

    def __init__(self, controllers: dict[str, Sequence[str]], all_joints: Sequence[str], initial):
        self.all_joints = tuple(all_joints)
        q = np.asarray(initial, np.float64).reshape(len(self.all_joints))
        pos = {n: i for i, n in enumerate(self.all_joints)}
        self.followers: dict[str, TrajectoryFollower] = {}
        self.columns: dict[str, list[int]] = {}
        for name, joints in controllers.items():
            missing = [j for j in joints if j not in pos]
            if missing:
                raise ValueError(f"controller {name}: joints {missing} are not in {list(self.all_joints)}")
            self.columns[name] = [pos[j] for j in joints]
            self.followers[name] = TrajectoryFollower(tuple(joints), q[self.columns[name]])
        self._initial = q

    def reset(self, positions=None) -> None:
        q = self._initial if positions is None else np.asarray(positions, np.float64)
        for name, f in self.followers.items():
            f.reset(q[self.columns[name]])

    def set_trajectory(self, controller: str, traj: Trajectory, now: float) -> None:
        if controller not in self.followers:
            raise TrajectoryError(f"unknown controller {controller!r}; have {sorted(self.followers)}")
        self.followers[controller].set_trajectory(traj, now)

    def command(self, now: float) -> np.ndarray:
        out = self._initial.copy()
        for name, f in self.followers.items():
            out[self.columns[name]] = f.command(now)
        return out


def is_zero_time(sec: int, nanosec: int) -> bool:
    return sec == 0 and nanosec == 0


def stamp_to_seconds(sec: int, nanosec: int) -> float:
    return float(sec) + float(nanosec) * 1e-9 if not is_zero_time(sec, nanosec) else 0.0


__all__ = ["Trajectory", "TrajectoryError", "TrajectoryFollower", "SimCommand", "sample", "stamp_to_seconds"]
