"""The simulated ALOHA as a ROS 2 robot: MuJoCo (``ki_vla_ros.sim``) behind the real robot's topics.

To the policy node it looks like the real bimanual robot of ``aloha_bimanual.yaml``: cameras
(``sensor_msgs/Image`` rgb8, sensor-data QoS), per-arm ``JointState`` on
``/follower_left/joint_states`` / ``/follower_right/joint_states``, and a
joint_trajectory_controller per arm on ``/left_arm_controller/joint_trajectory`` /
``/right_arm_controller/joint_trajectory`` (JTC semantics: :mod:`ki_vla_ros.sim.follower`).

Time: the node is the clock. It steps the physics at 50 Hz of sim time, never faster than
``real_time_factor`` x real time (slower when rendering is slow), and publishes ``/clock`` after
every step; every stamp it writes is that clock. Run the other nodes with ``use_sim_time``.
The clock never goes backwards: a reset continues it (``episode_time`` restarts at 0).

Between a reset (or start-up) and the first joint command the robot holds still: the physics is
not stepped (no sag, the cameras show exactly the reset scene), while the clock, joint states and
cameras keep publishing so a policy sees fresh data. The episode (``episode_time``) starts with
the first accepted command, as a recorded demonstration starts with its first action. After a
``~/reset`` a policy that never commands ends the episode after ``max_sim_time_s`` of waiting;
after start-up the sim waits for its first command without limit (an operator launching the sim
by hand needs time to send an instruction).

Parameters:
  embodiment (str)         topics and image size [aloha_bimanual] (read-only)
  task (str)               task name (ki_vla_ros.sim.tasks) used at the next ~/reset [pick_red_left]
  seed (int)               scene seed used at the next ~/reset [0]
  image_size (int)         square camera images in pixels, 0 = the embodiment's [0] (read-only)
  camera_every (int)       publish the cameras every k-th control step [1]
  render_quality (str)     fast | full [fast] (read-only)
  max_sim_time_s (float)   episode length in sim seconds; the sim pauses there, 0 = no limit [0]
  hold_until_command (bool) hold still after a reset until the first command [true]
  real_time_factor (float) upper bound on sim speed, 0 = as fast as it goes [1.0]
  status_period_s (float)  sim seconds between ~/episode_status messages [0.2]

Interfaces: /clock (rosgraph_msgs/Clock); the embodiment's camera and JointState topics;
``~/joint_commands`` (sensor_msgs/JointState: the controllers' commanded positions, all joints);
``~/episode_status`` (std_msgs/String, JSON: episode, task, instruction, seed, episode_time,
sim_time, waiting_for_command, success, instruction_followed, reach_m, lift_m, reach_other_m (graded progress,
sim/tasks.py), done, real_time_factor, step_ms, trajectories,
trajectory_errors, last_error; reliable + transient local); ``~/reset`` (std_srvs/Trigger:
a new episode with the current task / seed parameters). Trajectories with unknown joints or bad
sizes are refused with a warning (counted in the status), never a crash.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ki_vla_ros.embodiment import load_embodiment  # noqa: E402
from ki_vla_ros.ros.conversions import (  # noqa: E402
    duration_to_seconds,
    rgb_to_image,
    seconds_to_time,
    stamp_seconds,
)
from ki_vla_ros.ros.spin import run_node  # noqa: E402
from ki_vla_ros.sim.follower import SimCommand, Trajectory, TrajectoryError  # noqa: E402

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
STATUS_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def trajectory_from_msg(msg: JointTrajectory) -> Trajectory:
    """JointTrajectory -> follower Trajectory (start_time 0 = now; velocities only when every
    point has one per joint)."""
    n = len(msg.joint_names)
    pts = msg.points
    for k, p in enumerate(pts):
        if len(p.positions) != n:
            raise TrajectoryError(f"point {k} has {len(p.positions)} positions for {n} joints")
    with_vel = bool(pts) and all(len(p.velocities) == n for p in pts)
    return Trajectory(
        joint_names=list(msg.joint_names),
        times=np.array([duration_to_seconds(p.time_from_start) for p in pts], np.float64),
        positions=np.array([list(p.positions) for p in pts], np.float64).reshape(len(pts), n),
        velocities=np.array([list(p.velocities) for p in pts], np.float64) if with_vel else None,
        start_time=stamp_seconds(msg),
    )


class SimNode(Node):
    def __init__(self, node_name: str = "sim_node", **kwargs):
        super().__init__(node_name, **kwargs)
        from ki_vla_ros.sim import tasks as sim_tasks
        from ki_vla_ros.sim.aloha import CAMERA_MAP, CONTROL_DT, JOINT_NAMES, AlohaSim

        self._tasks = sim_tasks
        ro = ParameterDescriptor(read_only=True)
        self.declare_parameter("embodiment", "aloha_bimanual", ro)
        self.declare_parameter("task", "pick_red_left")
        self.declare_parameter("seed", 0)
        self.declare_parameter("image_size", 0, ro)
        self.declare_parameter("camera_every", 1)
        self.declare_parameter("render_quality", "fast", ro)
        self.declare_parameter("max_sim_time_s", 0.0)
        self.declare_parameter("real_time_factor", 1.0)
        self.declare_parameter("status_period_s", 0.2)
        self.declare_parameter("hold_until_command", True)
        self._check(self._validate([self.get_parameter(n) for n in ("task", "camera_every", "max_sim_time_s",
                                                                      "real_time_factor", "status_period_s")]))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        emb = load_embodiment(self._p("embodiment"))
        self.embodiment = emb
        for c in emb.cameras:
            if c.name not in CAMERA_MAP or c.message != "raw":
                raise ValueError(f"camera {c.name!r} ({c.message}): the sim renders raw {sorted(CAMERA_MAP)}")
        unknown = [j for j in emb.state_names if j not in JOINT_NAMES]
        if unknown:
            raise ValueError(f"embodiment joints {unknown} are not simulated ({list(JOINT_NAMES)})")
        size = int(self._p("image_size")) or (int(emb.cameras[0].image_size[0]) if emb.cameras else 224)
        self.image_size = size
        self.dt = CONTROL_DT
        self.joint_names = JOINT_NAMES
        # OpenGL (EGL) contexts belong to one thread: the sim is built, rendered, reset and closed
        # only in the sim loop thread
        self._make_sim = lambda: AlohaSim(
            task=self._p("task"),
            seed=int(self._p("seed")),
            image_size=size,
            cameras=tuple(c.name for c in emb.cameras),
            render_quality=self._p("render_quality"),
        )
        self._controllers = {o.topic: list(o.joints) for o in emb.outputs
                             if o.type in ("joint_trajectory", "joint_group_position")}
        self.sim = None
        self.command = None
        self._lock = threading.Lock()
        self._offset = 0.0  # clock time at the reset of the current episode
        self._held = 0.0  # clock time spent holding still since that reset
        self._waiting = bool(self._p("hold_until_command"))
        self._wait_limited = False  # does waiting count toward max_sim_time_s (after a ~/reset)
        self._frames: dict[str, np.ndarray] = {}  # the last images rendered
        self._episode = 0
        self._steps = 0
        self._done = False
        self._stats = {"trajectories": 0, "trajectory_errors": 0}
        self._last_error = ""
        self._last_warn = 0.0
        self._rtf_window: deque = deque(maxlen=50)  # (wall, sim) pairs
        self._step_ms: deque = deque(maxlen=50)
        self._next_status = 0.0

        self._clock_pub = self.create_publisher(Clock, "/clock", 10)
        self._cam_pubs = [(c.name, self.create_publisher(Image, c.topic, qos_profile_sensor_data))
                          for c in emb.cameras]
        self._state_pubs = [(s.joints, [JOINT_NAMES.index(j) for j in s.joints],
                             self.create_publisher(JointState, s.topic, qos_profile_sensor_data))
                            for s in emb.state]
        self._cmd_pub = self.create_publisher(JointState, "~/joint_commands", 10)
        self._status_pub = self.create_publisher(String, "~/episode_status", STATUS_QOS)
        for o in emb.outputs:
            if o.type == "joint_trajectory":
                self.create_subscription(JointTrajectory, o.topic, self._trajectory_cb(o.topic), COMMAND_QOS)
            elif o.type == "joint_group_position":
                self.create_subscription(Float64MultiArray, o.topic, self._group_cb(o.topic, list(o.joints)),
                                         COMMAND_QOS)
        self.create_service(Trigger, "~/reset", self._on_reset)

        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._reset_request = threading.Event()
        self._reset_done = threading.Event()
        self._reset_error: BaseException | None = None
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="sim_loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(120.0) or self.failed is not None:
            self._stopping.set()
            raise RuntimeError(f"simulator did not start: {self.failed}")
        self.get_logger().info(
            f"simulated '{emb.name}': task {self.sim.task.name!r}, seed {self.sim.seed}, "
            f"{len(emb.cameras)} cameras {size}x{size} every {self._p('camera_every')} step(s), "
            f"render {self._p('render_quality')}"
        )

    # ---------------------------------------------------------------------------- parameters
    def _p(self, name):
        return self.get_parameter(name).value

    @staticmethod
    def _check(result: SetParametersResult) -> None:
        if not result.successful:
            raise ValueError(result.reason)

    def _validate(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "task":
                try:
                    self._tasks.get_task(p.value)
                except (KeyError, ValueError) as exc:
                    return SetParametersResult(successful=False, reason=f"task: {exc}")
            if p.name == "camera_every" and int(p.value) < 1:
                return SetParametersResult(successful=False, reason="camera_every must be >= 1")
            if p.name in ("max_sim_time_s", "real_time_factor") and float(p.value) < 0:
                return SetParametersResult(successful=False, reason=f"{p.name} must be >= 0")
            if p.name == "status_period_s" and float(p.value) <= 0:
                return SetParametersResult(successful=False, reason="status_period_s must be > 0")
        return SetParametersResult(successful=True)

    def _on_set_parameters(self, params):
        return self._validate(params)

    # ------------------------------------------------------------------------------ commands
    def now(self) -> float:
        """The clock time (s) the node publishes: episode offset + time held still + sim time."""
        return self._offset + self._held + self.sim.sim_time

    def _commanded(self) -> None:
        """A command was accepted (lock held): a waiting episode starts."""
        if self._waiting:
            self._waiting = False
            self.get_logger().info(f"episode {self._episode}: first command, the episode starts")

    def _refuse(self, topic: str, exc: Exception) -> None:
        self._stats["trajectory_errors"] += 1
        self._last_error = f"{topic}: {exc}"
        if time.monotonic() - self._last_warn > 2.0:
            self._last_warn = time.monotonic()
            self.get_logger().warning(f"command refused on {topic}: {exc}")

    def _trajectory_cb(self, topic):
        def cb(msg):
            with self._lock:
                try:
                    self.command.set_trajectory(topic, trajectory_from_msg(msg), self.now())
                    self._stats["trajectories"] += 1
                    self._commanded()
                except TrajectoryError as exc:
                    self._refuse(topic, exc)

        return cb

    def _group_cb(self, topic, joints):
        def cb(msg):
            with self._lock:
                try:
                    if len(msg.data) != len(joints):
                        raise TrajectoryError(f"{len(msg.data)} values for {len(joints)} joints")
                    traj = Trajectory(joints, np.zeros(1), np.asarray(msg.data, np.float64)[None])
                    self.command.set_trajectory(topic, traj, self.now())
                    self._commanded()
                except TrajectoryError as exc:
                    self._refuse(topic, exc)

        return cb

    def _on_reset(self, request, response):
        try:
            self.reset()
        except Exception as exc:  # noqa: BLE001 - answer the caller
            response.success, response.message = False, f"reset failed: {type(exc).__name__}: {exc}"
            return response
        response.success = True
        response.message = f"episode {self._episode}: task {self.sim.task.name!r}, seed {self.sim.seed}"
        return response

    def reset(self, timeout: float = 30.0) -> None:
        """New episode with the current task / seed parameters (done by the sim thread); the
        clock continues."""
        self._reset_done.clear()
        self._reset_error = None
        self._reset_request.set()
        if not self._reset_done.wait(timeout):
            raise TimeoutError(f"the simulator did not reset within {timeout:g} s")
        if self._reset_error is not None:
            raise self._reset_error
        self.get_logger().info(f"reset: episode {self._episode}, task {self.sim.task.name!r}, seed {self.sim.seed}")

    def _do_reset(self) -> None:
        self._reset_request.clear()
        try:
            with self._lock:
                task = self._tasks.get_task(self._p("task"))
                self._offset = self.now() + self.dt
                self._held = 0.0
                self._waiting = bool(self._p("hold_until_command"))
                self._wait_limited = True
                self.sim.task = task
                self.sim.reset(int(self._p("seed")))
                # a new scene: the frames kept while holding still show the old one
                self._frames.clear()
                self.command.reset(self.sim.last_action)
                self._episode += 1
                self._steps = 0
                self._done = False
                self._next_status = 0.0
                self._rtf_window.clear()
                self._publish_state(images=True)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            self._reset_error = exc
        self._reset_done.set()

    # ---------------------------------------------------------------------------------- loop
    def _publish_state(self, images: bool) -> None:
        """Clock, joint states, commands, (cameras), status at the current sim time. Lock held."""
        t = self.now()
        stamp = seconds_to_time(t)
        self._clock_pub.publish(Clock(clock=stamp))
        q, v = self.sim.joint_positions(), self.sim.joint_velocities()
        for joints, idx, pub in self._state_pubs:
            msg = JointState(name=list(joints), position=q[idx].tolist(), velocity=v[idx].tolist())
            msg.header.stamp = stamp
            pub.publish(msg)
        cmd = JointState(name=list(self.joint_names), position=self.sim.last_action.tolist())
        cmd.header.stamp = stamp
        self._cmd_pub.publish(cmd)
        if images:
            for name, pub in self._cam_pubs:
                if not (self._waiting and name in self._frames):  # holding still: same scene
                    self._frames[name] = self.sim.render(name)
                pub.publish(rgb_to_image(self._frames[name], stamp, frame_id=name))
        if t + 1e-9 >= self._next_status or self._done:
            self._next_status = t + float(self._p("status_period_s"))
            self._status_pub.publish(String(data=json.dumps(self.status())))

    def status(self) -> dict:
        rtf = 0.0
        if len(self._rtf_window) >= 2:
            (w0, s0), (w1, s1) = self._rtf_window[0], self._rtf_window[-1]
            rtf = (s1 - s0) / (w1 - w0) if w1 > w0 else 0.0
        return {
            "episode": self._episode,
            "task": self.sim.task.name,
            "instruction": self.sim.task.instruction,
            "seed": self.sim.seed,
            "episode_time": round(self.sim.sim_time, 4),
            "sim_time": round(self.now(), 4),
            "waiting_for_command": self._waiting,
            "steps": self._steps,
            "success": self.sim.success(),
            "instruction_followed": self.sim.instruction_followed(),
            **{k: round(v, 4) for k, v in self.sim.progress().items()},
            "done": self._done,
            "real_time_factor": round(rtf, 3),
            "step_ms": round(float(np.mean(self._step_ms)), 2) if self._step_ms else 0.0,
            **self._stats,
            "last_error": self._last_error,
        }

    def _loop(self) -> None:
        try:
            with self._lock:
                self.sim = self._make_sim()
                self.command = SimCommand(self._controllers, self.joint_names, self.sim.last_action)
                self._publish_state(images=True)
            self._ready.set()
            self._run_loop()
        except Exception as exc:  # noqa: BLE001 - report, then take the node down
            if self._ready.is_set() and (self._stopping.is_set() or not rclpy.ok()):
                return  # shutting down (SIGINT): publishing on a closed context fails, that's all
            self.failed = exc
            self.get_logger().error(f"sim loop failed: {type(exc).__name__}: {exc}")
            if self._ready.is_set():
                rclpy.try_shutdown()
            self._ready.set()
        finally:
            if self.sim is not None:
                self.sim.close()

    def _run_loop(self) -> None:
        anchor_wall, anchor_sim = time.monotonic(), None
        while not self._stopping.is_set():
            if self._reset_request.is_set():
                self._do_reset()
                anchor_sim = None
            rtf = float(self._p("real_time_factor"))
            limit = float(self._p("max_sim_time_s"))
            with self._lock:
                waited = self._held if self._wait_limited else 0.0
                if self._done or (limit > 0 and max(self.sim.sim_time, waited) >= limit - 1e-9):
                    if not self._done:
                        self._done = True
                        self._publish_status_now()
                    paused = True
                else:
                    paused = False
                    w0 = time.perf_counter()
                    if self._waiting:
                        self._held += self.dt  # the clock runs, the physics holds still
                    else:
                        target = self.command.command(self.now() + self.dt)
                        self.sim.step(target, render=False)
                    self._steps += 1
                    every = int(self._p("camera_every"))
                    self._publish_state(images=self._steps % every == 0)
                    self._step_ms.append((time.perf_counter() - w0) * 1000)
                    sim_t = self.now()
                    self._rtf_window.append((time.monotonic(), sim_t))
            if paused:
                anchor_sim = None
                self._stopping.wait(0.05)
                continue
            # pace: sim time never runs ahead of real time x rtf; when behind, do not catch up
            if anchor_sim is None:
                anchor_wall, anchor_sim = time.monotonic(), sim_t
                continue
            if rtf > 0:
                due = anchor_wall + (sim_t - anchor_sim) / rtf
                ahead = due - time.monotonic()
                if ahead > 0:
                    self._stopping.wait(ahead)
                elif ahead < -0.1:
                    anchor_wall, anchor_sim = time.monotonic(), sim_t

    def _publish_status_now(self) -> None:
        self._status_pub.publish(String(data=json.dumps(self.status())))

    def shutdown(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


def main(args: list[str] | None = None) -> int:
    return run_node(SimNode, "sim_node", args, (ValueError, KeyError, OSError, ImportError), num_threads=2)


__all__ = ["SimNode", "main", "trajectory_from_msg"]

if __name__ == "__main__":
    sys.exit(main())
