"""The closed loop in one process at a fixed latency: the policy node's chunk logic
(`ChunkExecutor`: real-time-chunking prefix, latency compensation, velocity limits, the node's
replan time) drives the simulated ALOHA through its joint-trajectory followers (`SimCommand`), as
`ki-vla eval` does over DDS; but inference takes exactly `latency` control steps of sim time,
during which the arms go on executing the running chunk, and each camera frame is held for
`camera_every` steps (the eval's 25 Hz cameras). The observation time is the oldest stamp of what
the policy saw (`observation_time`), as in the node. Results depend only on the model, the scene
seeds and these settings — not on the machine's load — so they compare models fairly and cost a
fraction of a real-time evaluation (`benchmarks/latency_sweep.py`; the recipe study's `sim_*`
measures).
"""

from __future__ import annotations

import numpy as np

from ki_vla_ros.control.chunk import observation_time
from ki_vla_ros.control.executor import ChunkExecutor, update_latency_estimate
from ki_vla_ros.control.policy_loader import LayoutMapper
from ki_vla_ros.embodiment import load_embodiment
from ki_vla_ros.runtime.types import Observation
from ki_vla_ros.sim.aloha import JOINT_NAMES, AlohaSim
from ki_vla_ros.sim.follower import SimCommand, Trajectory
from ki_vla_ros.sim.tasks import get_task


def run_episode(policy, mapper, emb, task: str, seed: int, latency: int, camera_every: int,
                duration: float, instruction: str, rtc: bool, fixed_noise: bool = False,
                arrival: int = 0, trace_path: str = "", execute_steps: int = 0) -> dict:
    dt = emb.dt
    sim = AlohaSim(task, seed=seed, image_size=policy.config.image_size, cameras=tuple(mapper.camera_names))
    executor = ChunkExecutor(emb)
    command = SimCommand({o.topic: list(o.joints) for o in emb.outputs}, JOINT_NAMES, sim.last_action)
    frames, frame_t = {}, 0.0
    t, step, started, next_infer, chunks, lat_est = 0.0, 0, False, 0.0, 0, latency * dt
    max_prefix = policy.max_action_prefix if rtc else 0
    trace = {"t_obs": [], "elapsed": [], "first": [], "actions": [], "state": [], "cmd_t": [], "cmd": []}

    def advance():
        nonlocal t, step, frames, frame_t
        if started:  # before the first command the sim holds still (its clock runs)
            target = command.command(t + dt)
            trace["cmd_t"].append(t + dt)
            trace["cmd"].append(target)
            sim.step(target, render=False)
        t, step = round(t + dt, 9), step + 1
        if step % camera_every == 0:
            frames = {}

    try:
        while t < duration - 1e-9 and not sim.success():
            if t + 1e-9 >= next_infer:
                if not frames:
                    frames, frame_t = {c: sim.render(c) for c in mapper.camera_names}, t
                state = sim.joint_positions()
                t_obs = observation_time([t, frame_t], t, 1.0)
                prefix = executor.action_prefix(t_obs, lat_est, max_prefix) if max_prefix else None
                extra = {} if prefix is None else {"action_prefix": mapper.actions_for_policy(prefix)}
                out = policy.infer(Observation(images=frames, state=mapper.state_for_policy(state),
                                               instruction=instruction, stamp=t_obs),
                                   seed=seed if fixed_noise else None, **extra)
                for _ in range(latency):  # the running chunk goes on while the next one is computed
                    advance()
                elapsed = t - t_obs
                actions = mapper.actions_for_embodiment(out.actions)
                plan = executor.make_plan(actions, state, elapsed, t)
                # stamped with the publication time, as the node does; `arrival` models a controller
                # that starts it only when it arrives (header stamp 0 = "start now")
                t_arrive = round(t + arrival * dt, 9)
                for p in plan.outputs.values():
                    wp = p.waypoints
                    command.set_trajectory(p.output.topic, Trajectory(p.output.joints, wp.times, wp.positions,
                                                                       wp.velocities, start_time=t_arrive), t)
                executor.accept(plan)
                for k, v in (("t_obs", t_obs), ("elapsed", elapsed), ("first", plan.first_index),
                             ("actions", actions), ("state", state)):
                    trace[k].append(v)
                started, chunks = True, chunks + 1
                lat_est = update_latency_estimate(lat_est, elapsed)
                next_infer = executor.replan_time(plan, len(actions), t_obs, lat_est, execute_steps)
                continue
            advance()
        prog = sim.progress()
        if trace_path:
            np.savez(trace_path, **{k: np.array(v) for k, v in trace.items()})
        return {"task": task, "seed": seed, "latency_steps": latency,
                "execute_steps": execute_steps or emb.execute_steps, "success": bool(sim.success()),
                "instruction_followed": bool(sim.instruction_followed()), "sim_time_s": round(t, 3),
                "chunks": chunks, **{k: round(float(v), 4) for k, v in prog.items()}}
    finally:
        sim.close()


def evaluate_fixed_latency(policy, tasks: list[str], episodes: int, first_seed: int, latency: int = 4,
                           instructions: dict[str, list[str]] | None = None, duration: float = 8.0,
                           camera_every: int = 2, embodiment: str = "aloha_bimanual") -> dict:
    """`episodes` scenes per task (seeds first_seed …), the same noise per scene (fixed_noise), the
    action prefix as the node gives it -> {"success_rate", "instruction_following_rate", "episodes",
    "per_task": {task: success rate}}. `instructions` {task: [phrasing, ...]}: the episodes of a task
    cycle through its list (as `ki-vla eval --instructions`); default: each task's canonical one."""
    emb = load_embodiment(embodiment)
    mapper = LayoutMapper(emb, policy)
    rows = []
    for task in tasks:
        said = (instructions or {}).get(task) or [get_task(task).instruction]
        for i in range(episodes):
            rows.append(run_episode(policy, mapper, emb, task, first_seed + i, latency, camera_every, duration,
                                    said[i % len(said)], rtc=True, fixed_noise=True))
    n = len(rows)
    return {"success_rate": sum(r["success"] for r in rows) / n,
            "instruction_following_rate": sum(r["instruction_followed"] for r in rows) / n, "episodes": n,
            "per_task": {t: float(np.mean([r["success"] for r in rows if r["task"] == t])) for t in tasks}}
