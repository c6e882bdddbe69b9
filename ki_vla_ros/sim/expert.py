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


def grasp_rotation(side: str, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Gripper-link orientation (3x3, columns = link axes in world): approach axis pointing away
    from ``side``'s base, ``pitch`` rad below horizontal; fingers closing along world y, turned by
    ``roll`` rad about the approach axis (pi/2: fingers closing vertically)."""
    s = 1.0 if side == "left" else -1.0
    c, sn = np.cos(pitch), np.sin(pitch)
    x = np.array([s * c, 0.0, -sn])  # approach axis
    y0 = np.array([0.0, s, 0.0])  # finger slide axis at roll 0
    z0 = np.cross(x, y0)
    y = np.cos(roll) * y0 + np.sin(roll) * z0
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
    progress: dict[str, float] = field(default_factory=dict)  # reach_m, lift_m (sim/tasks.py)
    joint_names: tuple[str, ...] = JOINT_NAMES
    control_hz: float = 1.0 / CONTROL_DT
    cube_positions: dict[str, list[float]] = field(default_factory=dict)  # initial, per colour

    def __len__(self) -> int:
        return len(self.timestamps)


def _smooth(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3 - 2 * u)


PRE_GRASP_DZ = 0.10  # pre-grasp height above the cube centre (m)
GRASP_DZ = -0.005  # TCP relative to the cube centre when closing
LIFT_DZ = 0.16  # lift height (m)
PITCH = np.deg2rad(60)  # grasp pitch below horizontal
MEET = np.array([0.0, 0.5, 0.20])  # hand-over point (cube centre)
MEET_BACKOFF = 0.10  # receiver approach / giver retreat distance along x (m)
NOISE_TIME_CONSTANT_S = 0.3  # correlation time of the execution noise (rollout's action_noise)


class ArmScript:
    """Timed script for one arm: joint-space blends and Cartesian TCP moves (IK per step)."""

    def __init__(self, sim: AlohaSim, side: str):
        self.side = side
        self.ik = ArmIK(sim, side)
        self.q = HOME_ARM.copy()
        self.pos, _ = self.ik.fk(self.q)
        self.pitch, self.roll, self.grip = 0.0, 0.0, 1.0
        self.segments: list[tuple] = []
        self.duration = 0.0

    def _add(self, seg) -> ArmScript:
        self.segments.append(seg)
        self.duration += seg[1]
        return self

    def wait_until(self, t: float) -> ArmScript:
        if t > self.duration + 1e-9:
            self._add(("hold", t - self.duration, self.grip))
        return self

    def reach(self, dur: float, pos, pitch: float, roll: float = 0.0) -> ArmScript:
        """Joint-space blend to an IK solution (for the first, large move from home)."""
        rot = grasp_rotation(self.side, pitch, roll)
        q_to = self.ik.solve(self.q, np.asarray(pos, float), rot, iters=400)
        self._add(("joint", dur, q_to, self.grip))
        self.q, self.pos, self.pitch, self.roll = q_to, np.asarray(pos, float), pitch, roll
        return self

    def move(self, dur: float, pos=None, pitch=None, roll=None) -> ArmScript:
        """Straight-line TCP move with the orientation blended in (pitch, roll)."""
        pos = self.pos if pos is None else np.asarray(pos, float)
        pitch = self.pitch if pitch is None else pitch
        roll = self.roll if roll is None else roll
        self._add(("cart", dur, self.pos.copy(), pos, self.pitch, pitch, self.roll, roll, self.grip))
        # plan-time joint estimate at the end of the move (warm start for later reaches)
        self.q = self.ik.solve(self.q, pos, grasp_rotation(self.side, pitch, roll), iters=200)
        self.pos, self.pitch, self.roll = pos, pitch, roll
        return self

    def gripper(self, dur: float, value: float) -> ArmScript:
        self._add(("grip", dur, self.grip, value))
        self.grip = value
        return self

    def start(self) -> None:
        """Reset the runtime state; call before querying :meth:`target` in increasing time."""
        self._q = HOME_ARM.copy()
        self._seg = -1
        self._q0 = self._q.copy()

    def target(self, t: float) -> np.ndarray:
        """7-D command (6 joints + gripper) at time ``t`` since the start (t non-decreasing)."""
        t0 = 0.0
        for k, seg in enumerate(self.segments):
            kind, dur = seg[0], seg[1]
            if t <= t0 + dur + 1e-9:
                if k != self._seg:  # entering a new segment: remember where it starts
                    self._seg, self._q0 = k, self._q.copy()
                u = _smooth((t - t0) / dur) if dur > 0 else 1.0
                if kind == "hold":
                    return np.append(self._q, seg[2])
                if kind == "joint":
                    self._q = (1 - u) * self._q0 + u * seg[2]
                    return np.append(self._q, seg[3])
                if kind == "grip":
                    return np.append(self._q, (1 - u) * seg[2] + u * seg[3])
                _, _, p0, p1, pi0, pi1, r0, r1, g = seg
                rot = grasp_rotation(self.side, (1 - u) * pi0 + u * pi1, (1 - u) * r0 + u * r1)
                self._q = self.ik.solve(self._q, p0 + u * (p1 - p0), rot)
                return np.append(self._q, g)
            t0 += dur
        return np.append(self._q, self.grip)

    def pick(self, cube_pos) -> ArmScript:
        c = np.asarray(cube_pos, float)
        return (
            self.reach(1.2, c + [0, 0, PRE_GRASP_DZ], PITCH)
            .move(0.8, c + [0, 0, GRASP_DZ])
            .gripper(0.5, 0.0)
            .move(1.0, c + [0, 0, LIFT_DZ])
        )


def plan(sim: AlohaSim, task: Task) -> tuple[ArmScript, ArmScript]:
    """(left script, right script) for ``task`` from the sim's current state."""
    task = get_task(task)
    scripts = {s: ArmScript(sim, s) for s in ARM_SIDES}
    doer = scripts[task.arm]
    doer.pick(sim.cube_position(task.cube))
    if task.kind == "pick":
        doer.wait_until(doer.duration + 0.4)
    else:
        recv = scripts[task.other_arm]
        s_giver = -1.0 if task.arm == "left" else 1.0  # giver's side along x
        doer.move(1.4, MEET, pitch=0.0)
        t_meet = doer.duration
        # receiver: fingers closing vertically, approaching horizontally from its own side
        recv.wait_until(t_meet - 1.4)
        recv.reach(1.4, MEET + [-s_giver * MEET_BACKOFF, 0, 0], 0.0, roll=np.pi / 2)
        recv.move(0.8, MEET).gripper(0.5, 0.0)
        doer.wait_until(recv.duration).gripper(0.4, 1.0)
        doer.move(0.8, MEET + [s_giver * MEET_BACKOFF, 0, 0.02])
        recv.wait_until(doer.duration).move(0.6, MEET + [-s_giver * 0.05, 0, 0.02])
        doer.wait_until(recv.duration + 0.3)
        recv.wait_until(doer.duration)
    end = max(sc.duration for sc in scripts.values())
    for sc in scripts.values():
        sc.wait_until(end)
    return scripts["left"], scripts["right"]


def expert_actions(sim: AlohaSim, task: Task):
    """Generator of 14-D commanded actions for ``task`` from the sim's current (reset) state."""
    left, right = plan(sim, task)
    for sc in (left, right):
        sc.start()
    n = int(round(left.duration / CONTROL_DT))
    for i in range(n):
        t = (i + 1) * CONTROL_DT
        yield np.concatenate([left.target(t), right.target(t)])


def execution_noise(steps: int, scale: float, seed: int, time_constant_s: float = NOISE_TIME_CONSTANT_S,
                    dt: float = CONTROL_DT) -> np.ndarray:
    """[steps, 14] perturbations for the arm joints' commands (grippers 0): per joint a stationary
    first-order autoregressive process with standard deviation ``scale`` (rad) and correlation time
    ``time_constant_s``: slow drifts the position controller follows, like a policy's errors, not
    white noise it would filter out."""
    rng = np.random.default_rng(seed)
    a = float(np.exp(-dt / time_constant_s))
    out = np.zeros((steps, len(JOINT_NAMES)))
    arm = [i for i, name in enumerate(JOINT_NAMES) if not name.endswith("gripper")]
    x = rng.normal(0.0, scale, len(arm))
    for k in range(steps):
        out[k, arm] = x
        x = a * x + np.sqrt(1.0 - a * a) * rng.normal(0.0, scale, len(arm))
    return out


def rollout(task, seed: int, image_size: int = 224, cameras=DEFAULT_CAMERAS, expert_task=None,
            action_noise: float = 0.0) -> Episode:
    """Run the scripted expert on ``task`` from ``seed``.

    ``expert_task`` (default: ``task``) lets the expert perform a *different* task than the one
    judged, e.g. the wrong arm, to check that the predicates tell them apart.

    ``action_noise`` (rad, 0 = off): the arm commands that are *executed* carry
    :func:`execution_noise` (seeded by the episode seed), the actions *recorded* are the expert's
    own. The expert's targets are a function of time, not of the measured state, so from the
    perturbed states the recorded action leads back to the demonstrated path: demonstrations of
    recovery (DART, Laskey et al. 2017), which clean demonstrations never show a cloned policy.
    """
    if not action_noise >= 0:
        raise ValueError(f"action_noise: expected >= 0 rad, got {action_noise}")
    task = get_task(task)
    doer = get_task(expert_task) if expert_task is not None else task
    sim = AlohaSim(task, seed=seed, image_size=image_size, cameras=cameras)
    try:
        obs = sim.observation()
        cubes = {c: sim.cube_position(c).tolist() for c in ("red", "blue")}
        ts, qs, vs, acts = [], [], [], []
        imgs = {c: [] for c in cameras}
        script = list(expert_actions(sim, doer))
        noise = execution_noise(len(script), action_noise, seed)  # exact zeros for action_noise 0
        for act, perturb in zip(script, noise, strict=True):
            ts.append(obs["time"])
            qs.append(obs["qpos"])
            vs.append(obs["qvel"])
            acts.append(act)
            for c in cameras:
                imgs[c].append(obs["images"][c])
            obs = sim.step(act + perturb, render=bool(cameras))
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
            progress=sim.progress(),
            cube_positions=cubes,
        )
    finally:
        sim.close()
