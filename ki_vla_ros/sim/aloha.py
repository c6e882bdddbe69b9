"""Bimanual ALOHA simulator on plain MuJoCo, built from the assets that ``gym-aloha`` ships.

The scene is gym-aloha's ``bimanual_viperx_transfer_cube.xml`` (two ViperX 300s arms, table,
cameras) with its single box replaced by a red and a blue cube (see :mod:`ki_vla_ros.sim.tasks`).

Conventions (same as the real ALOHA ROS 2 stack):

* 14-D state / action: per arm ``[waist, shoulder, elbow, forearm_roll, wrist_angle,
  wrist_rotate, gripper]``, left arm first, then right arm; names in :data:`JOINT_NAMES`.
* The six arm joints are in radians. The gripper is normalised: ``0`` = closed, ``1`` = open,
  mapped linearly onto the finger slide range of the model (0.021 .. 0.057 m per finger). While
  holding a cube the measured gripper value stays above 0 (the cube blocks the fingers).
* Joint-space position control at :data:`CONTROL_HZ` (50 Hz); each control step runs
  ``round(0.02 / timestep)`` physics substeps (timestep 2 ms -> 10 substeps).
* Cameras are exposed under the real-robot names: ``top`` -> ``cam_high``, ``left_wrist`` ->
  ``cam_left_wrist``, ``right_wrist`` -> ``cam_right_wrist``. ``cam_high`` is re-framed from
  gym-aloha's wide top view (1.3 m across the table: a cube was 4 px at 112 px) to look straight
  down on the cube layout region: :data:`CAM_HIGH_VIEW` m across the table top (see docs/sim.md).

Rendering needs an OpenGL backend; offscreen use ``MUJOCO_GL=egl`` (set by default here when
``MUJOCO_GL`` is unset). Mesa's software rasteriser (llvmpipe, what EGL gives on a machine without
a GPU) is told to rasterise in the calling thread (``LP_NUM_THREADS=0``, unless set): at the
model's 112 px its worker threads cost more than they share (6.2 vs 7.7 ms of CPU per image on a
2-core EPYC, the same pixels), and they would wake on the core the policy runs on.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "0")  # llvmpipe: no rasteriser threads (read when GL loads)

import mujoco  # noqa: E402

CONTROL_HZ = 50.0
CONTROL_DT = 1.0 / CONTROL_HZ

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
ARM_SIDES = ("left", "right")
JOINT_NAMES: tuple[str, ...] = tuple(f"{s}_{j}" for s in ARM_SIDES for j in (*ARM_JOINTS, "gripper"))

#: real-robot camera name -> MuJoCo camera name in the gym-aloha model
CAMERA_MAP = {"cam_high": "top", "cam_left_wrist": "left_wrist", "cam_right_wrist": "right_wrist"}
DEFAULT_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")

#: ``cam_high`` framing: straight down from CAM_HIGH_POS (image right = +x, image up = +y), a
#: square view CAM_HIGH_VIEW m wide at the table top (z = 0): a 4 cm cube is 12 px at 112 px,
#: the cube layout region (x +-0.14, y 0.42..0.62 with the cube extents) 78 % x 56 % of the image
CAM_HIGH_POS = (0.0, 0.52, 0.8)
CAM_HIGH_VIEW = 0.36

#: finger slide range (m) of the model; gripper 0 -> closed (lower), 1 -> open (upper)
FINGER_CLOSED = 0.021
FINGER_OPEN = 0.057

#: arm pose at reset (radians), the "sleep-ready" pose of gym-aloha's keyframe; gripper open
HOME_ARM = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0])
HOME_GRIPPER = 1.0

CUBE_HALF = 0.02  # cube half size (m)
CUBE_COLORS = {"red": (0.9, 0.1, 0.1, 1.0), "blue": (0.1, 0.2, 0.9, 1.0)}
#: tool centre point between the finger pads, in the gripper_link frame
TCP_OFFSET = (0.118, 0.0, 0.0087)


def asset_dir() -> Path:
    """Directory of gym-aloha's MuJoCo assets inside the installed package."""
    import importlib.util

    spec = importlib.util.find_spec("gym_aloha")
    if spec is None or spec.origin is None:
        raise ImportError("gym-aloha is not installed; it ships the ALOHA MuJoCo assets")
    return Path(spec.origin).parent / "assets"


def cam_high_fovy() -> float:
    """Vertical field of view (degrees) that makes ``cam_high`` CAM_HIGH_VIEW m wide at the table."""
    return float(np.degrees(2 * np.arctan(CAM_HIGH_VIEW / 2 / CAM_HIGH_POS[2])))


def build_model(edit=None) -> mujoco.MjModel:
    """Compile the bimanual scene: gym-aloha transfer-cube scene, red + blue cubes, TCP sites, the
    re-framed ``cam_high``. ``edit(spec)``, if given, adds to the scene before it is compiled (the
    VQA scenes of :mod:`ki_vla_ros.sim.vlm_data` add distractor objects; robot task scenes never do)."""
    spec = mujoco.MjSpec.from_file(str(asset_dir() / "bimanual_viperx_transfer_cube.xml"))
    top = spec.camera(CAMERA_MAP["cam_high"])
    top.mode = mujoco.mjtCamLight.mjCAMLIGHT_FIXED
    top.pos = list(CAM_HIGH_POS)
    top.quat = [1, 0, 0, 0]  # looking down -z, image right = +x, image up = +y
    top.fovy = cam_high_fovy()
    for key in list(spec.keys):
        spec.delete(key)
    spec.delete(spec.body("box"))
    for color, rgba in CUBE_COLORS.items():
        body = spec.worldbody.add_body(name=f"{color}_cube", pos=[0, 0.5, CUBE_HALF])
        body.add_freejoint(name=f"{color}_cube_joint")
        # the gym-aloha compiler takes inertia only from geom groups 4-5: give it explicitly
        body.mass = 0.05
        body.inertia = [0.002, 0.002, 0.002]
        body.ipos = [0, 0, 0]
        body.iquat = [1, 0, 0, 0]
        body.explicitinertial = True
        body.add_geom(
            name=f"{color}_cube",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[CUBE_HALF] * 3,
            rgba=list(rgba),
            condim=4,
            friction=[1.0, 0.005, 0.0001],
            solimp=[2, 1, 0.01, 0.5, 2],
            solref=[0.01, 1],
        )
    for side in ARM_SIDES:
        spec.body(f"vx300s_{side}/gripper_link").add_site(
            name=f"{side}_tcp", pos=list(TCP_OFFSET), size=[0.005, 0, 0], rgba=[0, 1, 0, 0]
        )
    if edit is not None:
        edit(spec)
    return spec.compile()


@lru_cache(maxsize=1)
def _limits() -> tuple[np.ndarray, np.ndarray]:
    m = build_model()
    lo, hi = [], []
    for side in ARM_SIDES:
        for j in ARM_JOINTS:
            r = m.joint(f"vx300s_{side}/{j}").range
            lo.append(float(r[0]))
            hi.append(float(r[1]))
        lo.append(0.0)
        hi.append(1.0)
    return np.array(lo), np.array(hi)


def joint_limits() -> tuple[np.ndarray, np.ndarray]:
    """(lower[14], upper[14]) position limits from the model XML; gripper is [0, 1] (normalised)."""
    lo, hi = _limits()
    return lo.copy(), hi.copy()


def joint_limits_dict() -> dict[str, tuple[float, float]]:
    """``{joint_name: (lower, upper)}`` for the embodiment config."""
    lo, hi = _limits()
    return {n: (float(a), float(b)) for n, a, b in zip(JOINT_NAMES, lo, hi, strict=True)}


class AlohaSim:
    """Bimanual ALOHA in MuJoCo with joint-space position control at 50 Hz.

    ``task`` is a task name or :class:`ki_vla_ros.sim.tasks.Task` (decides the initial cube
    layout, success and instruction-following); ``None`` uses the first task of the family.
    ``cameras`` are real-robot names (keys of :data:`CAMERA_MAP`); pass ``()`` for no rendering.
    ``render_quality``: ``"fast"`` (default; no shadows, no multisampling: ~6 ms per 224 px image
    on CPU/llvmpipe) or ``"full"`` (gym-aloha's look: 4096 px shadow maps and 4x multisampling,
    ~50 ms per image). Keep it the same for data generation and evaluation.
    ``scene_edit`` is passed to :func:`build_model` (VQA scenes only).
    """

    def __init__(
        self,
        task=None,
        seed: int = 0,
        image_size: int = 224,
        cameras=DEFAULT_CAMERAS,
        render_quality: str = "fast",
        scene_edit=None,
    ):
        from ki_vla_ros.sim import tasks as _tasks

        self.task = _tasks.get_task(task)
        if render_quality not in ("fast", "full"):
            raise ValueError(f"render_quality must be 'fast' or 'full', not {render_quality!r}")
        self.render_quality = render_quality
        self.model = build_model(scene_edit)
        if render_quality == "fast":
            self.model.vis.quality.offsamples = 0
        self.data = mujoco.MjData(self.model)
        self.image_size = int(image_size)
        for c in cameras:
            if c not in CAMERA_MAP:
                raise ValueError(f"unknown camera {c!r}; choose from {sorted(CAMERA_MAP)}")
        self.cameras = tuple(cameras)
        self.n_substeps = max(1, round(CONTROL_DT / self.model.opt.timestep))
        self._renderer = None
        m = self.model
        self._arm_qadr = np.array(
            [m.joint(f"vx300s_{s}/{j}").qposadr[0] for s in ARM_SIDES for j in ARM_JOINTS]
        ).reshape(2, 6)
        self._arm_dadr = np.array(
            [m.joint(f"vx300s_{s}/{j}").dofadr[0] for s in ARM_SIDES for j in ARM_JOINTS]
        ).reshape(2, 6)
        fingers = ("left_finger", "right_finger")
        fjoints = [[m.joint(f"vx300s_{s}/{f}") for f in fingers] for s in ARM_SIDES]
        self._finger_qadr = np.array([[j.qposadr[0] for j in js] for js in fjoints])
        self._finger_dadr = np.array([[j.dofadr[0] for j in js] for js in fjoints])
        act_joint = [m.joint(m.actuator_trnid[i, 0]).name for i in range(m.nu)]
        self._act_arm = np.array(
            [act_joint.index(f"vx300s_{s}/{j}") for s in ARM_SIDES for j in ARM_JOINTS]
        ).reshape(2, 6)
        self._act_finger = np.array(
            [[act_joint.index(f"vx300s_{s}/{f}") for f in ("left_finger", "right_finger")] for s in ARM_SIDES]
        )
        self.lower, self.upper = joint_limits()
        self.last_action = np.zeros(14)
        self.monitor = None
        self.seed = seed
        self.reset(seed)

    # ------------------------------------------------------------------ state
    @property
    def sim_time(self) -> float:
        """Simulated time in seconds since the last reset."""
        return float(self.data.time)

    def joint_positions(self) -> np.ndarray:
        """Measured 14-D joint state (radians, gripper normalised 0 closed .. 1 open)."""
        q = np.empty(14)
        for a in range(2):
            q[7 * a : 7 * a + 6] = self.data.qpos[self._arm_qadr[a]]
            f = self.data.qpos[self._finger_qadr[a]]
            q[7 * a + 6] = ((f[0] - f[1]) / 2 - FINGER_CLOSED) / (FINGER_OPEN - FINGER_CLOSED)
        return q

    def joint_velocities(self) -> np.ndarray:
        """14-D joint velocities (rad/s; gripper in normalised units per second)."""
        v = np.empty(14)
        for a in range(2):
            v[7 * a : 7 * a + 6] = self.data.qvel[self._arm_dadr[a]]
            f = self.data.qvel[self._finger_dadr[a]]
            v[7 * a + 6] = (f[0] - f[1]) / 2 / (FINGER_OPEN - FINGER_CLOSED)
        return v

    def cube_position(self, color: str) -> np.ndarray:
        return self.data.body(f"{color}_cube").xpos.copy()

    def tcp_position(self, side: str) -> np.ndarray:
        return self.data.site(f"{side}_tcp").xpos.copy()

    def observation(self) -> dict:
        return {
            "qpos": self.joint_positions(),
            "qvel": self.joint_velocities(),
            "images": {c: self.render(c) for c in self.cameras},
            "time": self.sim_time,
        }

    # ---------------------------------------------------------------- control
    def reset(self, seed: int | None = None) -> dict:
        """Reset arms to the home pose and place the cubes from ``seed`` (task-specific sampler)."""
        if seed is not None:
            self.seed = int(seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        home = np.concatenate([HOME_ARM, [HOME_GRIPPER], HOME_ARM, [HOME_GRIPPER]])
        self._set_qpos(home)
        rng = np.random.default_rng(self.seed)
        for color, xy in self.task.sample_layout(rng).items():
            adr = m.joint(f"{color}_cube_joint").qposadr[0]
            d.qpos[adr : adr + 7] = [xy[0], xy[1], CUBE_HALF, 1, 0, 0, 0]
        self._apply_action(home)
        mujoco.mj_forward(m, d)
        self.monitor = self.task.monitor(self)
        return self.observation()

    def _set_qpos(self, q14: np.ndarray) -> None:
        for a in range(2):
            self.data.qpos[self._arm_qadr[a]] = q14[7 * a : 7 * a + 6]
            f = FINGER_CLOSED + q14[7 * a + 6] * (FINGER_OPEN - FINGER_CLOSED)
            self.data.qpos[self._finger_qadr[a]] = [f, -f]

    def _apply_action(self, action: np.ndarray) -> None:
        a14 = np.clip(np.asarray(action, dtype=float).reshape(14), self.lower, self.upper)
        self.last_action = a14
        for a in range(2):
            self.data.ctrl[self._act_arm[a]] = a14[7 * a : 7 * a + 6]
            f = FINGER_CLOSED + a14[7 * a + 6] * (FINGER_OPEN - FINGER_CLOSED)
            self.data.ctrl[self._act_finger[a]] = [f, -f]

    def step(self, action, render: bool = True) -> dict:
        """Command the 14-D joint target (clipped to limits), advance one control period (20 ms)."""
        self._apply_action(action)
        for _ in range(self.n_substeps):
            mujoco.mj_step(self.model, self.data)
        if self.monitor is not None:
            self.monitor.update(self)
        if not render:
            return {"qpos": self.joint_positions(), "qvel": self.joint_velocities(), "images": {},
                    "time": self.sim_time}
        return self.observation()

    # -------------------------------------------------------------- rendering
    def render(self, camera: str = "cam_high") -> np.ndarray:
        """uint8 [S, S, 3] RGB image of ``camera`` (real-robot name or MuJoCo camera name)."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.data, camera=CAMERA_MAP.get(camera, camera))
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.render_quality == "full"
        return self._renderer.render().copy()

    def project(self, camera: str, xyz) -> np.ndarray:
        """Pixel (column, row) of world point ``xyz`` in ``camera``'s image at ``image_size``
        (pinhole model of MuJoCo's camera: looks along its -z, x right, y up)."""
        cam = self.data.cam(CAMERA_MAP.get(camera, camera))
        p = cam.xmat.reshape(3, 3).T @ (np.asarray(xyz, float) - cam.xpos)
        f = self.image_size / 2 / np.tan(np.radians(self.model.cam_fovy[cam.id]) / 2)
        return np.array([self.image_size / 2 + f * p[0] / -p[2], self.image_size / 2 - f * p[1] / -p[2]])

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- outcome
    def success(self) -> bool:
        """Task success: the current sim state (`Task.success`) and, for a hand-over, the episode so
        far (the giving arm held the cube: `TaskMonitor.handed_over`)."""
        return bool(self.task.success(self)) and (self.monitor is None or self.monitor.handed_over())

    def instruction_followed(self) -> bool:
        """Whether the episode so far did what the instruction asked (right cube, right arm)."""
        return bool(self.monitor.instruction_followed()) if self.monitor is not None else False

    def progress(self) -> dict[str, float]:
        """The episode's graded progress so far (sim/tasks.py TaskMonitor.progress); {} without a task."""
        return self.monitor.progress() if self.monitor is not None else {}
