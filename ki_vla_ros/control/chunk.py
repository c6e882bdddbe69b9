"""Turning a policy's action chunk into safe commands (pure Python + numpy, no ROS).

Timing convention: a chunk is predicted from an observation taken at time ``t_obs``; action ``i``
(0-based) is the target for ``t_obs + (i + 1) * dt``. When the chunk is ready at ``t_obs +
elapsed``, waypoints whose time has passed (or lie closer than ``min_lead`` ahead) are dropped
and the rest are re-based so ``time_from_start`` counts from now (latency compensation).

Safety, in this order: reject non-finite chunks; clamp positions to joint limits; limit the
change between consecutive waypoints (starting at the current position) to ``velocity * Δt``;
velocities by finite differences (zero at the last waypoint, where the robot stops if no new
chunk arrives). The result never contains NaN or inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class UnsafeChunkError(ValueError):
    """A chunk that must not be executed (non-finite values, wrong shape, nothing left)."""


@dataclass
class JointLimits:
    """Per-joint arrays [D]: position bounds and max |velocity| (units/s)."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray

    @classmethod
    def from_lists(cls, lower, upper, velocity) -> JointLimits:
        lim = cls(
            np.asarray(lower, np.float64), np.asarray(upper, np.float64), np.asarray(velocity, np.float64)
        )
        if not (lim.lower.shape == lim.upper.shape == lim.velocity.shape) or lim.lower.ndim != 1:
            raise ValueError("lower, upper and velocity must be 1-D arrays of the same length")
        if np.any(lim.lower > lim.upper) or np.any(lim.velocity <= 0):
            raise ValueError("expected lower <= upper and velocity > 0")
        return lim


@dataclass
class Waypoints:
    """A safe trajectory: positions [N, D], velocities [N, D], time_from_start [N] (s, > 0,
    increasing), and the index in the original chunk of the first kept action."""

    positions: np.ndarray
    velocities: np.ndarray
    times: np.ndarray
    first_index: int

    def __len__(self) -> int:
        return len(self.times)

    def position_at(self, t: float, start: np.ndarray) -> np.ndarray:
        """Linear interpolation of the commanded position at ``t`` s after publication, starting
        from ``start`` at t=0; the last waypoint is held afterwards."""
        if len(self) == 0:
            return np.asarray(start, np.float64).copy()
        times = np.concatenate([[0.0], self.times])
        pos = np.concatenate([np.asarray(start, np.float64)[None], self.positions])
        return np.array([np.interp(t, times, pos[:, j]) for j in range(pos.shape[1])])


def check_finite(values: np.ndarray, what: str = "chunk") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        raise UnsafeChunkError(f"{what} contains NaN/inf (first at index {tuple(int(i) for i in bad[0])})")
    return arr


def compensate_latency(
    n_steps: int, dt: float, elapsed: float, min_lead: float | None = None
) -> tuple[int, np.ndarray]:
    """(first kept index, re-based times [n_kept]) for a chunk of ``n_steps`` actions at period
    ``dt`` that became ready ``elapsed`` s after its observation. Waypoints closer than
    ``min_lead`` (default: one period) ahead of now are dropped."""
    if dt <= 0:
        raise ValueError("dt must be > 0")
    lead = dt if min_lead is None else min_lead
    times = (np.arange(n_steps) + 1) * dt - max(0.0, float(elapsed))
    keep = np.nonzero(times >= lead - 1e-9)[0]
    if len(keep) == 0:
        return n_steps, np.zeros(0)
    first = int(keep[0])
    return first, times[first:]


def clamp_positions(positions: np.ndarray, limits: JointLimits) -> np.ndarray:
    return np.clip(positions, limits.lower, limits.upper)


def limit_velocity(
    positions: np.ndarray, times: np.ndarray, start: np.ndarray, limits: JointLimits
) -> np.ndarray:
    """Limit every step so |p[k] - p[k-1]| <= velocity * (t[k] - t[k-1]), with p[-1] = start at
    t = 0. Sequential, so a far target is approached at the velocity limit."""
    out = np.array(positions, dtype=np.float64, copy=True)
    prev = np.asarray(start, dtype=np.float64)
    prev_t = 0.0
    for k in range(len(out)):
        max_step = limits.velocity * max(0.0, float(times[k]) - prev_t)
        out[k] = prev + np.clip(out[k] - prev, -max_step, max_step)
        prev, prev_t = out[k], float(times[k])
    return out


def finite_difference_velocities(positions: np.ndarray, times: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Velocities [N, D] by (central) finite differences over (start at t=0, waypoints); zero at
    the last waypoint."""
    n = len(positions)
    if n == 0:
        return np.zeros_like(positions)
    pos = np.concatenate([np.asarray(start, np.float64)[None], positions])
    t = np.concatenate([[0.0], times])
    if n == 1:
        return np.zeros_like(positions)
    vel = np.gradient(pos, t, axis=0)[1:]
    vel[-1] = 0.0
    return vel


def plan_joint_chunk(
    actions: np.ndarray,
    current: np.ndarray,
    limits: JointLimits,
    dt: float,
    elapsed: float,
    min_lead: float | None = None,
) -> Waypoints:
    """A chunk's joint actions [H, D] -> safe, latency-compensated waypoints.

    Raises UnsafeChunkError for NaN/inf in the actions or current state, a shape mismatch, or a
    chunk whose every waypoint has already passed."""
    actions = check_finite(actions, "action chunk")
    current = check_finite(current, "current joint state")
    if actions.ndim != 2 or actions.shape[1] != len(limits.lower) or current.shape != limits.lower.shape:
        raise UnsafeChunkError(
            f"shape mismatch: actions {actions.shape}, state {current.shape}, {len(limits.lower)} joints"
        )
    first, times = compensate_latency(len(actions), dt, elapsed, min_lead)
    if len(times) == 0:
        raise UnsafeChunkError(
            f"every waypoint passed during inference ({elapsed * 1000:.0f} ms for "
            f"{len(actions)} steps of {dt * 1000:.0f} ms)"
        )
    # the robot may sit outside its limits (calibration); start clamping from the clamped state
    start = clamp_positions(current, limits)
    pos = clamp_positions(actions[first:], limits)
    pos = limit_velocity(pos, times, start, limits)
    vel = finite_difference_velocities(pos, times, start)
    vel = np.clip(vel, -limits.velocity, limits.velocity)
    return Waypoints(positions=pos, velocities=vel, times=times, first_index=first)


def plan_base_chunk(
    actions: np.ndarray,
    max_linear: float,
    max_angular: float,
    dt: float,
    elapsed: float,
    min_lead: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Base actions [H, 2] (linear x, angular z) -> (clamped commands [N, 2], times [N]) after
    latency compensation. Non-finite values raise UnsafeChunkError."""
    actions = check_finite(actions, "base actions")
    if actions.ndim != 2 or actions.shape[1] != 2:
        raise UnsafeChunkError(f"base actions must be [H, 2], got {actions.shape}")
    first, times = compensate_latency(len(actions), dt, elapsed, min_lead)
    cmd = actions[first:].copy()
    cmd[:, 0] = np.clip(cmd[:, 0], -max_linear, max_linear)
    cmd[:, 1] = np.clip(cmd[:, 1], -max_angular, max_angular)
    return cmd, times


def stream_index(times: np.ndarray, t: float) -> int | None:
    """Index of the waypoint to stream at ``t`` s after publication (the first one not yet due),
    or None when the chunk is exhausted."""
    if len(times) == 0:
        return None
    idx = int(np.searchsorted(times, t - 1e-9, side="left"))
    return idx if idx < len(times) else None


def observation_time(stamps: list[float], now: float, max_age: float) -> float:
    """When an observation was taken, for latency compensation: the oldest of its messages'
    header stamps (the capture times of the images and joint states it was made of), on the
    clock of ``now``. The time since then, not only the inference time, has passed before its
    chunk is published: rendering, transport and waiting for the next control period count too.

    Falls back to ``now`` when a stamp cannot be on that clock: zero (unstamped), more than
    ``max_age`` s old (a driver stamping with another clock, e.g. wall time under sim time).
    A stamp slightly ahead of ``now`` (the clock message not yet seen) counts as ``now``."""
    if not stamps:
        return now
    oldest = min(stamps)
    if oldest <= 0.0 or now - oldest > max_age or max(stamps) > now + max_age:
        return now
    return min(oldest, now)


def stale_sources(stamps: dict[str, float | None], now: float, timeout: float) -> list[str]:
    """Names whose last reception (seconds, same clock as ``now``) is missing or older than
    ``timeout``."""
    return [name for name, t in stamps.items() if t is None or now - t > timeout]


__all__ = [
    "UnsafeChunkError",
    "JointLimits",
    "Waypoints",
    "check_finite",
    "compensate_latency",
    "clamp_positions",
    "limit_velocity",
    "finite_difference_velocities",
    "plan_joint_chunk",
    "plan_base_chunk",
    "stream_index",
    "observation_time",
    "stale_sources",
]
