"""Scripted joint-space expert for the tasks of :mod:`ki_vla_ros.sim.tasks`.

Cartesian waypoints for the tool centre point (above the cube, at the cube, lifted, ...) are
interpolated with a smooth-step profile and converted to joint targets at every control step by
damped-least-squares IK on MuJoCo's site Jacobian (``mj_jacSite``) of the TCP site, warm-started
from the previous solution. The commanded 14-D joint targets are what gets recorded as actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from ki_vla_ros.sim.aloha import (
    ARM_SIDES,
    CONTROL_DT,
    DEFAULT_CAMERAS,
    HOME_ARM,
    JOINT_NAMES,
    AlohaSim,
)
from ki_vla_ros.sim.tasks import Task, get_task


def grasp_rotation(side: str, pitch: float) -> np.ndarray:
    """Gripper-link orientation (3x3, columns = link axes in world) for a grasp ``pitch`` rad below
    horizontal, approach pointing away from ``side``'s base, fingers closing along world y."""
    s = 1.0 if side == "left" else -1.0
    c, sn = np.cos(pitch), np.sin(pitch)
    x = np.array([s * c, 0.0, -sn])  # approach axis
    y = np.array([0.0, s, 0.0])  # finger slide axis
    return np.column_stack([x, y, np.cross(x, y)])


class ArmIK:
    """Damped-least-squares IK for one arm's TCP site (position + orientation)."""

    def __init__(self, sim: AlohaSim, side: str):
        self.m = sim.model
        self.d = mujoco.MjData(self.m)
        self.a = ARM_SIDES.index(side)
        self.qadr = sim._arm_qadr[self.a]
        self.dadr = sim._arm_dadr[self.a]
        self.site = self.m.site(f"{side}_tcp").id
        self.body = self.m.site_bodyid[self.site]
        self.lo = sim.lower[7 * self.a : 7 * self.a + 6]
        self.hi = sim.upper[7 * self.a : 7 * self.a + 6]
        self.jacp = np.zeros((3, self.m.nv))
        self.jacr = np.zeros((3, self.m.nv))

    def fk(self, q6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.d.qpos[self.qadr] = q6
        mujoco.mj_kinematics(self.m, self.d)
        return self.d.site_xpos[self.site].copy(), self.d.site_xmat[self.site].reshape(3, 3).copy()

    def solve(self, q0, pos, rot, iters: int = 60, damping: float = 1e-3, w_rot: float = 0.3):
        q = np.array(q0, dtype=float)
        for _ in range(iters):
            p, r = self.fk(q)
            e_pos = pos - p
            e_rot = 0.5 * sum(np.cross(r[:, i], rot[:, i]) for i in range(3))
            if np.linalg.norm(e_pos) < 2e-4 and np.linalg.norm(e_rot) < 2e-3:
                break
            mujoco.mj_comPos(self.m, self.d)
            mujoco.mj_jacSite(self.m, self.d, self.jacp, self.jacr, self.site)
            jac = np.vstack([self.jacp[:, self.dadr], w_rot * self.jacr[:, self.dadr]])
            err = np.concatenate([e_pos, w_rot * e_rot])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(6), err)
            n = np.linalg.norm(dq)
            if n > 0.3:
                dq *= 0.3 / n
            q = np.clip(q + dq, self.lo, self.hi)
        return q


@dataclass
class Episode:
    """One demonstration; arrays are per control step (T steps; observations before each action)."""

    task: str
    instruction: str
    seed: int
    timestamps: np.ndarray  # [T] sim time (s) of each observation
    joint_positions: np.ndarray  # [T, 14] measured
    joint_velocities: np.ndarray  # [T, 14]
    actions: np.ndarray  # [T, 14] commanded joint targets, applied right after the observation
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> [T, S, S, 3] uint8
    success: bool = False
    instruction_followed: bool = False
    joint_names: tuple[str, ...] = JOINT_NAMES
    control_hz: float = 1.0 / CONTROL_DT
    cube_positions: dict[str, list[float]] = field(default_factory=dict)  # initial, per colour

    def __len__(self) -> int:
        return len(self.timestamps)


def _smooth(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3 - 2 * u)


# phase durations (s)
T_REACH, T_DESCEND, T_CLOSE, T_LIFT, T_HOLD = 1.2, 0.8, 0.5, 1.0, 0.4
PRE_GRASP_DZ = 0.10
GRASP_DZ = -0.005
LIFT_DZ = 0.16
PITCH = np.deg2rad(60)


class PickPlan:
    """Time-indexed Cartesian plan + gripper command for one arm picking up one cube."""

    def __init__(self, sim: AlohaSim, side: str, cube: str):
        self.side = side
        self.ik = ArmIK(sim, side)
        self.rot = grasp_rotation(side, PITCH)
        c = sim.cube_position(cube)
        start, _ = self.ik.fk(HOME_ARM)
        above = c + [0, 0, PRE_GRASP_DZ]
        at = c + [0, 0, GRASP_DZ]
        lifted = c + [0, 0, LIFT_DZ]
        self.segments = [  # (duration, from, to, gripper)
            (T_REACH, start, above, 1.0),
            (T_DESCEND, above, at, 1.0),
            (T_CLOSE, at, at, 0.0),
            (T_LIFT, at, lifted, 0.0),
            (T_HOLD, lifted, lifted, 0.0),
        ]
        self.duration = sum(s[0] for s in self.segments)
        # pre-grasp pose solved once from home (many iterations: home is far from top-down);
        # the reach is a joint-space blend home -> pre-grasp, then Cartesian IK per step
        self.q_home = HOME_ARM.copy()
        self.q_above = self.ik.solve(self.q_home, above, self.rot, iters=300)
        self.q = self.q_above.copy()

    def target(self, t: float) -> tuple[np.ndarray, float]:
        t0 = 0.0
        for k, (dur, a, b, g) in enumerate(self.segments):
            if t < t0 + dur or k == len(self.segments) - 1:
                u = _smooth((t - t0) / dur)
                if k == 0:
                    return (1 - u) * self.q_home + u * self.q_above, 1.0
                pos = a + u * (b - a)
                self.q = self.ik.solve(self.q, pos, self.rot)
                grip = g if k != 2 else 1.0 - u
                return self.q.copy(), grip
            t0 += dur
        raise AssertionError


def expert_actions(sim: AlohaSim, task: Task):
    """Generator of 14-D commanded actions for ``task`` from the sim's current (reset) state."""
    task = get_task(task)
    home = np.concatenate([HOME_ARM, [1.0]])
    plan = PickPlan(sim, task.arm, task.cube)
    n = int(round(plan.duration / CONTROL_DT))
    a_idx = ARM_SIDES.index(task.arm)
    for i in range(n):
        q, g = plan.target((i + 1) * CONTROL_DT)
        act = np.concatenate([home, home])
        act[7 * a_idx : 7 * a_idx + 7] = np.concatenate([q, [g]])
        yield act


def rollout(task, seed: int, image_size: int = 224, cameras=DEFAULT_CAMERAS, expert_task=None) -> Episode:
    """Run the scripted expert on ``task`` from ``seed``.

    ``expert_task`` (default: ``task``) lets the expert perform a *different* task than the one
    judged, e.g. the wrong arm, to check that the predicates tell them apart.
    """
    task = get_task(task)
    doer = get_task(expert_task) if expert_task is not None else task
    sim = AlohaSim(task, seed=seed, image_size=image_size, cameras=cameras)
    try:
        obs = sim.observation()
        cubes = {c: sim.cube_position(c).tolist() for c in ("red", "blue")}
        ts, qs, vs, acts = [], [], [], []
        imgs = {c: [] for c in cameras}
        for act in expert_actions(sim, doer):
            ts.append(obs["time"])
            qs.append(obs["qpos"])
            vs.append(obs["qvel"])
            acts.append(act)
            for c in cameras:
                imgs[c].append(obs["images"][c])
            obs = sim.step(act, render=bool(cameras))
        return Episode(
            task=task.name,
            instruction=task.instruction,
            seed=int(seed),
            timestamps=np.array(ts),
            joint_positions=np.array(qs),
            joint_velocities=np.array(vs),
            actions=np.array(acts),
            images={c: np.stack(v) for c, v in imgs.items()},
            success=sim.success(),
            instruction_followed=sim.instruction_followed(),
            cube_positions=cubes,
        )
    finally:
        sim.close()
