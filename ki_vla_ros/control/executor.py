"""Chunk execution for one embodiment (pure Python, no ROS): the policy node's brain for outputs.

``ChunkExecutor(embodiment)`` splits an action chunk [H, action_dim] over the configured outputs,
makes it safe (``control.chunk``), remembers what was commanded, and answers what to stream at a
control tick, what to hold when the node stops or data goes stale, and which actions the running
chunk commands while the next one is computed (the action prefix of real-time chunking). Times are seconds on the
node's clock (sim time or wall time), passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ki_vla_ros.control.chunk import (
    JointLimits,
    UnsafeChunkError,
    Waypoints,
    check_finite,
    plan_base_chunk,
    plan_joint_chunk,
    stream_index,
)
from ki_vla_ros.embodiment import Embodiment, OutputConfig


@dataclass
class OutputPlan:
    output: OutputConfig
    # joint outputs
    waypoints: Waypoints | None = None
    start: np.ndarray | None = None
    # base_twist
    twist: np.ndarray | None = None  # [N, 2]
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class ChunkPlan:
    """A safe chunk for every output, published at ``t_publish`` (node clock, s)."""

    t_publish: float
    outputs: dict[str, OutputPlan]
    first_index: int


def update_latency_estimate(estimate: float, elapsed: float) -> float:
    """Running observation-to-chunk latency estimate (s): an exponential average, the first
    measurement as is."""
    return 0.7 * estimate + 0.3 * elapsed if estimate else elapsed


class ChunkExecutor:
    def __init__(self, embodiment: Embodiment):
        self.embodiment = embodiment
        self.dt = embodiment.dt
        self.state_index = {name: i for i, name in enumerate(embodiment.state_names)}
        self.limits: dict[str, JointLimits] = {}
        for o in embodiment.outputs:
            if o.type != "base_twist":
                lims = [embodiment.limits.joints[j] for j in o.joints]
                self.limits[o.name] = JointLimits.from_lists(
                    [lim.lower for lim in lims], [lim.upper for lim in lims], [lim.velocity for lim in lims]
                )
        self.plan: ChunkPlan | None = None
        # last position commanded per joint output (streamed or trajectory), for holding
        self.last_command: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------------------------------
    def current_positions(self, output: OutputConfig, state: np.ndarray) -> np.ndarray:
        return np.array([state[self.state_index[j]] for j in output.joints], np.float64)

    def anchor(self, output: OutputConfig, state: np.ndarray, t_publish: float) -> np.ndarray:
        """Where a new chunk for joint ``output`` starts: what the controller is commanding at
        ``t_publish`` (the active chunk's position then, or the held / last command), else, before
        anything was commanded, the measured position.

        Not the state measured at observation time: under inference latency the arm has moved on
        since, and a gripper squeezing an object measures open while it is commanded closed; a
        limiter starting there would drag every new chunk back (and re-open the gripper)."""
        cmd = self.commanded_position(output.name, t_publish)
        if cmd is not None and np.all(np.isfinite(cmd)):
            return np.asarray(cmd, np.float64)
        return self.current_positions(output, state)

    def make_plan(
        self, actions: np.ndarray, state: np.ndarray, elapsed: float, t_publish: float
    ) -> ChunkPlan:
        """Safe per-output plan for a chunk predicted ``elapsed`` s ago from ``state`` (the
        embodiment's state vector, as observed), to be published at ``t_publish``. Joint outputs
        start from :meth:`anchor`. Raises UnsafeChunkError (the chunk must be dropped)."""
        actions = check_finite(actions, "action chunk")
        state = check_finite(state, "joint state")
        if actions.ndim != 2 or actions.shape[1] != self.embodiment.action_dim:
            raise UnsafeChunkError(
                f"action chunk shape {actions.shape}, expected [H, {self.embodiment.action_dim}]"
            )
        outs: dict[str, OutputPlan] = {}
        first = 0
        for o in self.embodiment.outputs:
            sl = actions[:, o.action_slice[0] : o.action_slice[1]]
            if o.type == "base_twist":
                lim = self.embodiment.limits.base
                twist, times = plan_base_chunk(sl, lim.linear, lim.angular, self.dt, elapsed)
                outs[o.name] = OutputPlan(o, twist=twist, times=times)
            else:
                start = self.anchor(o, state, t_publish)
                wp = plan_joint_chunk(sl, start, self.limits[o.name], self.dt, elapsed)
                outs[o.name] = OutputPlan(
                    o,
                    waypoints=wp,
                    start=np.clip(start, self.limits[o.name].lower, self.limits[o.name].upper),
                    times=wp.times,
                )
                first = wp.first_index
        if all(len(p.times) == 0 for p in outs.values()):
            raise UnsafeChunkError("every waypoint passed during inference")
        return ChunkPlan(t_publish=t_publish, outputs=outs, first_index=first)

    def forget(self) -> None:
        """A new run (the node is started again): forget the active chunk and what was commanded,
        so the first chunk starts from the measured state. Between a stop and a start the robot may
        have been reset, moved by hand or its controller restarted: the old command is no longer
        what the controller holds."""
        self.plan = None
        self.last_command.clear()

    def accept(self, plan: ChunkPlan) -> None:
        """The plan was published: it becomes the active chunk."""
        self.plan = plan
        for name, p in plan.outputs.items():
            if p.waypoints is not None and p.output.type == "joint_trajectory" and len(p.waypoints):
                # what the controller will hold at the end of the trajectory
                self.last_command[name] = p.waypoints.positions[-1].copy()

    def commanded_position(self, name: str, now: float) -> np.ndarray | None:
        """Where the active chunk commands joint output ``name`` at ``now`` (or the last
        command when there is no chunk)."""
        if self.plan is not None and name in self.plan.outputs:
            p = self.plan.outputs[name]
            if p.waypoints is not None:
                return p.waypoints.position_at(now - self.plan.t_publish, p.start)
        return self.last_command.get(name)

    def action_prefix(self, t_obs: float, latency: float, max_steps: int) -> np.ndarray | None:
        """Real-time chunking (model/rtc.py): the actions the active chunk commands while the next
        one, observed at ``t_obs``, is computed — at t_obs + (i + 1)·dt for the ceil(latency / dt)
        steps the new chunk will drop as passed (at most ``max_steps``). Embodiment order
        [d, action_dim]: joint outputs their commanded position then, the base its twist then
        (zero after its chunk). None without an active chunk (first chunk, after a hold) or d = 0."""
        plan = self.plan  # one read: a hold from another thread may clear it meanwhile
        steps = min(int(max_steps), int(np.ceil(latency / self.dt - 1e-9)))
        if plan is None or steps <= 0:
            return None
        times = t_obs + (np.arange(steps) + 1) * self.dt - plan.t_publish
        out = np.zeros((steps, self.embodiment.action_dim))
        for o in self.embodiment.outputs:
            p = plan.outputs[o.name]
            cols = slice(*o.action_slice)
            if o.type == "base_twist":
                idx = [stream_index(p.times, t) for t in times]
                out[:, cols] = [p.twist[i] if i is not None else np.zeros(2) for i in idx]
            else:
                out[:, cols] = [p.waypoints.position_at(t, p.start) for t in times]
        return out

    def replan_time(self, plan: ChunkPlan, n_actions: int, t_obs: float, latency_est: float,
                    execute_steps: int | None = None) -> float:
        """When to take the next observation: its chunk (``latency_est`` s later) takes over after
        ``execute_steps`` (default: the embodiment's) of this ``n_actions``-action chunk observed at
        ``t_obs`` — at least one action after the first kept one, never after the chunk ran out."""
        steps = execute_steps or self.embodiment.execute_steps
        executed = max(1, min(steps, n_actions) - plan.first_index)
        return t_obs + (plan.first_index + executed) * self.dt - latency_est

    # ------------------------------------------------------------------------------------------
    def stream(self, now: float) -> dict[str, np.ndarray]:
        """Commands for streamed outputs at a control tick: joint_group_position -> positions,
        base_twist -> [linear x, angular z]. Exhausted chunks hold position / zero twist."""
        cmds: dict[str, np.ndarray] = {}
        for o in self.embodiment.outputs:
            if o.type == "joint_trajectory":
                continue
            p = self.plan.outputs.get(o.name) if self.plan else None
            idx = stream_index(p.times, now - self.plan.t_publish) if p is not None else None
            if o.type == "base_twist":
                cmds[o.name] = p.twist[idx].copy() if idx is not None else np.zeros(2)
            else:
                if idx is not None:
                    self.last_command[o.name] = p.waypoints.positions[idx].copy()
                if o.name in self.last_command:
                    cmds[o.name] = self.last_command[o.name].copy()
        return cmds

    def hold(self, now: float) -> dict[str, np.ndarray]:
        """Stop executing the active chunk: joint outputs keep the position commanded at ``now``,
        the base gets zero twist. Returns the held commands per output (joint outputs that were
        never commanded are absent)."""
        held: dict[str, np.ndarray] = {}
        for o in self.embodiment.outputs:
            if o.type == "base_twist":
                held[o.name] = np.zeros(2)
                continue
            pos = self.commanded_position(o.name, now)
            if pos is not None and np.all(np.isfinite(pos)):
                self.last_command[o.name] = pos.copy()
                held[o.name] = pos.copy()
        self.plan = None
        return held


__all__ = ["ChunkExecutor", "ChunkPlan", "OutputPlan", "update_latency_estimate"]
