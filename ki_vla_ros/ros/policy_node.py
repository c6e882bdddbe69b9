"""The policy node: cameras + joint states in, safe action chunks out, for one embodiment.

A managed (lifecycle) node, as nav2 and ros2_control nodes are:
  unconfigured  parameters only (the configuration ones can be changed only here)
  configure     loads the embodiment and the model, runs one warm-up inference on a synthetic
                observation of the right shapes (no cold start on the first real chunk), creates
                the robot interfaces -> inactive. A failure (no model, bad config) logs the reason
                in one line and leaves the node unconfigured; fix it and configure again.
  activate      ~/start is accepted -> active
  deactivate    stops like ~/stop: the robot holds where it is commanded -> inactive
  cleanup       frees the model and the robot interfaces -> unconfigured
  shutdown      holds the robot if it was running, frees everything -> finalized (the process ends)
The launch files and `ki-vla run` configure and activate it; the `policy_node` executable alone
waits for a lifecycle manager (`ros2 lifecycle set /policy_node configure`, then `activate`).
SIGINT / SIGTERM: a running node holds the robot, stops its inference thread and timers, exits 0.

Parameters (the configuration ones, marked *, can be changed only while unconfigured):
  embodiment* (str)     name in config/embodiments/ or path to a YAML file [aloha_bimanual]
  model* (str)          model folder; '' = the embodiment's (relative to the package share dir)
  backend* (str)        auto | torch | onnxruntime | openvino | tensorrt; auto: the fastest path
                        checked for the model's weights on this kind of CPU (OpenVINO int8, else
                        ONNX Runtime fp32), exported on first configure [torch]
  precision* (str)      auto | fp32 | bf16 | fp16 | int8: what the backend computes in; other than
                        fp32 only once the model folder records it as checked (docs/runtime.md,
                        "Precision") [auto: fp32 on torch / onnxruntime, bf16 or fp16 on tensorrt]
  policy_class* (str)   '' = ki_vla_ros.runtime.Policy; 'module:Class' = custom policy hook
  num_steps* (int)      flow-matching integration steps, 0 = the model folder's num_flow_steps
                        (model.yaml; what its training chose) [0]
  threads* (int)        intra-op threads for inference, 0 = the library's default (one per
                        core); on a machine shared with other processes (a simulator, drivers)
                        fewer threads keep inference latency steady [0]
  instruction (str)     the language command; settable at run time, validated (not empty,
                        at most max_instruction_chars) [""]
  max_instruction_chars* (int) [500]
  autostart (bool)      start as soon as an instruction is set (when active) [false]
  control_rate_hz*, execute_steps*, stale_timeout_s, max_inference_s: overrides of the
                        embodiment (0 = use the embodiment's value)
  seed (int)            sampling seed, -1 = random [-1]
  diagnostics_period_s (float) [0.5] (read-only)
  use_sim_time (bool)   follow /clock (standard)

Interfaces: always ~/start, ~/stop (std_srvs/Trigger; start is refused unless active),
~/instruction (std_msgs/String), /diagnostics (diagnostic_msgs/DiagnosticArray), the lifecycle
services (~/change_state, ~/get_state, ...); once configured the embodiment's camera / JointState
subscriptions (sensor-data QoS) and outputs, ~/action_chunk (std_msgs/Float64MultiArray, dims
[horizon, action], the raw chunk in embodiment order).

States (diagnostics): unconfigured, inactive, idle (active, not started; nothing is commanded),
running, holding (started, but data is stale or invalid, inference overran, or a chunk was
unsafe: no new commands, streamed outputs hold the last commanded position, the base gets zero
twist; resumes by itself when the cause clears).
"""

from __future__ import annotations

import collections
import gc
import sys
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ki_vla_ros.configio import ConfigError
from ki_vla_ros.control.chunk import UnsafeChunkError, observation_time, stale_sources
from ki_vla_ros.control.executor import ChunkExecutor, update_latency_estimate
from ki_vla_ros.control.policy_loader import LayoutMapper, load_policy
from ki_vla_ros.embodiment import Embodiment, load_embodiment, missing_model_hint, resolve_model_dir
from ki_vla_ros.ros.conversions import (
    chunk_to_multiarray,
    compressed_to_rgb,
    image_to_rgb,
    joint_positions,
    make_trajectory,
    seconds_to_duration,
    seconds_to_time,
    stamp_seconds,
)
from ki_vla_ros.ros.intake import SensorIntake
from ki_vla_ros.ros.spin import exit_process, run_node
from ki_vla_ros.runtime.types import Observation
from ki_vla_ros.tokenize.fast import FastDecodeError

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Every callback of this node is short (store bytes, publish, answer a service); inference runs in
# a thread of its own. One executor thread does less Python work per message than several.
EXECUTOR_THREADS = 1
HOLD_ACK_S = 1.0  # at shutdown, for all controllers together: within ros/spin.py's shutdown deadline
# what configure builds from: changeable only while the node is unconfigured
CONFIG_PARAMS = ("embodiment", "model", "backend", "precision", "policy_class", "num_steps", "threads",
                 "max_instruction_chars", "control_rate_hz", "execute_steps")
STARTUP_ERRORS = (ConfigError, ValueError, RuntimeError, OSError)
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def validate_instruction(text: str, max_chars: int) -> str | None:
    """The reason an instruction is refused, or None when it is acceptable."""
    if not isinstance(text, str):
        return "instruction must be a string"
    if not text.strip():
        return "instruction must not be empty"
    if len(text) > max_chars:
        return f"instruction is {len(text)} characters long; at most {max_chars} are accepted"
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        return "instruction contains control characters"
    return None


@dataclass
class _Latest:
    """The newest message of one source, as it came (serialised CDR bytes), and when."""

    raw: bytes | None = None
    t: float | None = None  # reception time, node clock (s)


class PolicyNode(LifecycleNode):
    def __init__(self, node_name: str = "policy_node", **kwargs):
        super().__init__(node_name, **kwargs)

        def conf(description: str) -> ParameterDescriptor:
            return ParameterDescriptor(description=f"{description} (set while unconfigured)")

        self.declare_parameter("embodiment", "aloha_bimanual", conf("name in config/embodiments/ or a YAML path"))
        self.declare_parameter("model", "", conf("model folder; '' = the embodiment's"))
        self.declare_parameter("backend", "torch", conf("auto | torch | onnxruntime | openvino | tensorrt"))
        self.declare_parameter("precision", "auto", conf("auto | fp32 | bf16 | fp16 | int8 (checked ones only)"))
        self.declare_parameter("policy_class", "", conf("'' = ki_vla_ros.runtime.Policy; 'module:Class' = custom"))
        self.declare_parameter("num_steps", 0, conf("flow-matching integration steps (0: the model folder's)"))
        self.declare_parameter("threads", 0, conf("inference threads, 0 = one per core"))
        self.declare_parameter("max_instruction_chars", 500, conf("longest instruction accepted"))
        self.declare_parameter(
            "instruction",
            "",
            ParameterDescriptor(
                description="language command; validated: not empty, at most max_instruction_chars"
            ),
        )
        self.declare_parameter("autostart", False)
        self.declare_parameter("control_rate_hz", 0.0, conf("0 = the embodiment's"))
        self.declare_parameter("execute_steps", 0, conf("0 = the embodiment's"))
        self.declare_parameter("stale_timeout_s", 0.0)
        self.declare_parameter("max_inference_s", 0.0)
        self.declare_parameter("seed", -1)
        self.declare_parameter("diagnostics_period_s", 0.5, ParameterDescriptor(read_only=True))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.embodiment: Embodiment | None = None  # set by configure, as are the policy and the robot I/O
        self.policy = None
        self._configured = self._active = False
        self.finished = False  # finalized: the process may end (ros/spin.py)
        self.configure_error = ""
        self._warmup_ms: float | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._entities: list = []  # subscriptions, publishers and timers made by configure
        self._intake: SensorIntake | None = None  # sensor subscriptions, made by configure
        self._pubs: dict = {}
        self._new_session()

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.create_subscription(String, "~/instruction", self._on_instruction_topic, 10)
        self.create_timer(float(self._p("diagnostics_period_s")), self._publish_diagnostics)
        self.get_logger().info("unconfigured: waiting for configure (lifecycle)")

    # -------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the node unconfigured, with the reason
            expected = isinstance(exc, (ConfigError, ValueError, OSError))
            self.configure_error = str(exc) if expected else f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: {self.configure_error}")
            self._release()
            return FAILURE
        self.configure_error = ""
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self.get_logger().info("active: idle until an instruction and ~/start")
        if self._p("autostart") and self._p("instruction"):
            self._set_running(True)
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._set_running(False)  # as ~/stop: the robot holds where it is commanded
        self._active = False
        self.get_logger().info("inactive: ~/start is refused until activate")
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("unconfigured: model and robot interfaces released")
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._running:
            self._set_running(False)
            deadline = time.monotonic() + HOLD_ACK_S  # the hold reaches the controllers before we go
            for pub in self._pubs.values():
                pub.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))
        self._active = False
        self._release()
        self.finished = True
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._release()
        return SUCCESS  # -> unconfigured

    def configure_and_activate(self) -> None:
        """Both transitions in this process (`ki-vla run`); ConfigError with the reason if one fails."""
        if self.trigger_configure() != SUCCESS:
            raise ConfigError(f"configure failed: {self.configure_error}")
        if self.trigger_activate() != SUCCESS:
            raise ConfigError("activate failed")

    def shutdown(self) -> None:
        """Before the node is destroyed (SIGINT / SIGTERM, ros/spin.py): the shutdown transition
        unless it happened already (finalized)."""
        if not self.finished:
            self.trigger_shutdown()

    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    def _configure(self) -> None:
        emb = load_embodiment(self._p("embodiment"))
        if self._p("control_rate_hz") > 0:
            emb.control_rate_hz = float(self._p("control_rate_hz"))
        if self._p("execute_steps") > 0:
            emb.execute_steps = int(self._p("execute_steps"))
        self.embodiment = emb
        initial = self._p("instruction")
        if initial and validate_instruction(initial, self.max_chars):
            raise ConfigError(f"parameter 'instruction': {validate_instruction(initial, self.max_chars)}")

        model_dir = resolve_model_dir(self._p("model"), emb)
        if not self._p("policy_class") and not model_dir.exists():
            model = self._p("model") or emb.model
            raise ConfigError(missing_model_hint(model, emb.name))
        self.get_logger().info(f"loading policy from {model_dir} (backend {self._p('backend')})")
        self.policy = load_policy(
            model_dir,
            backend=self._p("backend"),
            precision=self._p("precision"),
            num_steps=int(self._p("num_steps")),
            policy_class=self._p("policy_class"),
            threads=int(self._p("threads")),
        )
        runs_on = getattr(getattr(self.policy, "backend", None), "name", None)
        if runs_on:
            self.get_logger().info(f"policy runs on {runs_on} in {getattr(self.policy, 'precision', '?')}")
        self.mapper = LayoutMapper(emb, self.policy)
        self.executor_ = ChunkExecutor(emb)
        self._warm_up()
        self._new_session()

        # Sensor intake costs no Python work per message (ros/intake.py): the subscriptions wait in
        # DDS queues on a node no executor spins; the newest raw bytes per source are taken when
        # inference (or diagnostics) needs them and decoded only then. At 30 Hz cameras and 100 Hz
        # joint states, handling every message starved the inference thread of its own process.
        self._cam_types = {c.name: Image if c.message == "raw" else CompressedImage for c in emb.cameras}
        self._state_joints = {s.topic: list(s.joints) for s in emb.state}
        self._intake = SensorIntake(self.context, f"_{self.get_name()}_sensors", self.get_namespace())
        for cam in emb.cameras:
            self._intake.add(f"camera {cam.name}", self._cam_types[cam.name], cam.topic, qos_profile_sensor_data)
        for src in emb.state:
            self._intake.add(f"joint state {src.topic}", JointState, src.topic, qos_profile_sensor_data)
        self._pubs = {}
        for o in emb.outputs:
            if o.type == "joint_trajectory":
                self._pubs[o.name] = self.create_publisher(JointTrajectory, o.topic, COMMAND_QOS)
            elif o.type == "joint_group_position":
                self._pubs[o.name] = self.create_publisher(Float64MultiArray, o.topic, COMMAND_QOS)
            else:
                twist_type = Twist if o.twist_type == "Twist" else TwistStamped
                self._pubs[o.name] = self.create_publisher(twist_type, o.topic, COMMAND_QOS)
        self._chunk_pub = self.create_publisher(Float64MultiArray, "~/action_chunk", COMMAND_QOS)
        self._entities += [*self._pubs.values(), self._chunk_pub]
        # trajectories go out once per chunk; a control-rate timer would only wake the executor
        if any(o.type != "joint_trajectory" for o in emb.outputs):
            self._entities.append(self.create_timer(emb.dt, self._control_tick))

        self._stopping.clear()
        self._thread = threading.Thread(target=self._inference_loop, name="policy_inference", daemon=True)
        self._thread.start()
        self._configured = True
        self.get_logger().info(
            f"inactive: embodiment '{emb.name}': {len(emb.cameras)} cameras, {len(emb.state_names)} joints, "
            f"{emb.action_dim}-D actions at {emb.control_rate_hz:g} Hz; warm-up inference {self._warmup_ms:.0f} ms"
        )

    def _new_session(self) -> None:
        """Fresh intake slots (one per source of the embodiment, none before configure), state and
        counters."""
        emb = self.embodiment
        self._cams = {c.name: _Latest() for c in emb.cameras} if emb else {}
        self._states = {s.topic: _Latest() for s in emb.state} if emb else {}
        self._running = False
        self._status = "idle"
        self._hold_reason = ""
        self._holding = False
        self._stats = {"chunks_published": 0, "chunks_rejected": 0, "overruns": 0, "holds": 0}
        self._last_reject = ""
        self._infer_ms = collections.deque(maxlen=200)
        self._latency_s = collections.deque(maxlen=200)
        self._obs_age_s = 0.0  # the last observation's stamp -> its inference start
        self._latency_est = 0.0
        self._last_instruction_used = ""
        self._next_infer_t = 0.0

    def _warm_up(self) -> None:
        """One inference on a synthetic observation (black images of each camera's size, zero
        state): the first real chunk then pays no cold-start cost, and a policy whose outputs do
        not fit the embodiment fails here rather than on the robot."""
        sizes = {c.name: tuple(c.image_size) for c in self.embodiment.cameras}
        images = {name: np.zeros((*sizes[name], 3), np.uint8) for name in self.mapper.camera_names}
        state = self.mapper.state_for_policy(np.zeros(len(self.embodiment.state_names)))
        obs = Observation(images=images, state=state, instruction=self._p("instruction") or "warm up", stamp=0.0)
        wall0 = time.perf_counter()
        try:
            out = self.policy.infer(obs, seed=0)
        except FastDecodeError as exc:  # a token-decoding policy may find no chunk for black frames: it
            self._warmup_ms = (time.perf_counter() - wall0) * 1000.0  # holds whenever that happens while running
            self.get_logger().warning(f"warm-up on a synthetic observation: {exc}")
            return
        self._warmup_ms = (time.perf_counter() - wall0) * 1000.0
        self.mapper.actions_for_embodiment(out.actions)

    def _release(self) -> None:
        """Stop the inference thread, destroy what configure made, drop the model."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        with self._lock:
            self._running = self._holding = False
        for entity in self._entities:  # through the node, which drops them from its executor's wait set
            if isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            elif isinstance(entity, Timer):
                self.destroy_timer(entity)
            else:
                self.destroy_publisher(entity)
        self._entities, self._pubs = [], {}
        if self._intake is not None:
            self._intake.close()
            self._intake = None
        self.policy = self.mapper = self.executor_ = self.embodiment = None
        self._configured = self._active = False
        self._warmup_ms = None
        self._new_session()
        gc.collect()

    # ---------------------------------------------------------------------------------- helpers
    def _p(self, name):
        return self.get_parameter(name).value

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _stale_timeout(self) -> float:
        v = float(self._p("stale_timeout_s"))
        return v if v > 0 else self.embodiment.safety.stale_timeout_s

    def _max_inference(self) -> float:
        v = float(self._p("max_inference_s"))
        return v if v > 0 else self.embodiment.safety.max_inference_s

    @property
    def max_chars(self) -> int:
        return int(self._p("max_instruction_chars"))

    @property
    def status(self) -> str:
        """What the node is doing: unconfigured, inactive, idle, running or holding."""
        if not self._configured:
            return "unconfigured"
        return self._status if self._active else "inactive"

    # -------------------------------------------------------------------------------- callbacks
    def _drain(self) -> None:
        """The newest sensor messages into the intake slots, each stamped on the node clock with
        the time DDS received it (its age is measured in wall time)."""
        intake = self._intake
        taken = intake.take() if intake is not None else {}
        if not taken:
            return
        now = self._now()
        with self._lock:
            slots = {**{f"camera {n}": v for n, v in self._cams.items()},
                     **{f"joint state {t}": v for t, v in self._states.items()}}
            for key, got in taken.items():
                if key in slots:
                    slots[key].raw, slots[key].t = got.raw, now - got.age_s

    def _joint_states(self, stamps: list[float] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
        """The newest joint positions per state topic, decoded now, and the problems of those
        that cannot be used (missing joint, NaN/inf): such a state is never acted on. Appends
        each message's header stamp (s) to ``stamps`` when given."""
        with self._lock:
            raws = {topic: v.raw for topic, v in self._states.items()}
        positions, errors = {}, []
        for topic, raw in raws.items():
            if raw is None:
                continue
            msg = deserialize_message(raw, JointState)
            try:
                positions[topic] = joint_positions(msg, self._state_joints[topic])
            except ValueError as exc:
                errors.append(f"joint state {topic}: {exc}")
            if stamps is not None:
                stamps.append(stamp_seconds(msg))
        return positions, errors

    def _on_set_parameters(self, params):
        for p in params:
            if p.name in CONFIG_PARAMS and self._configured:
                return SetParametersResult(
                    successful=False,
                    reason=f"{p.name} can be changed only while the node is unconfigured (now {self.status}): "
                    "deactivate and clean it up first",
                )
            if p.name == "instruction":
                reason = validate_instruction(p.value, self.max_chars)
                if reason:
                    return SetParametersResult(successful=False, reason=reason)
            if (
                p.name in ("stale_timeout_s", "max_inference_s")
                and p.type_ == Parameter.Type.DOUBLE
                and p.value < 0
            ):
                return SetParametersResult(successful=False, reason=f"{p.name} must be >= 0")
        for p in params:
            if p.name == "instruction":
                self.get_logger().info(f"instruction: {p.value!r}")
                self._wake.set()
                if self._p("autostart") and not self._running:
                    threading.Timer(0.0, self._set_running, (True,)).start()
        return SetParametersResult(successful=True)

    def _on_instruction_topic(self, msg):
        result = self.set_parameters([Parameter("instruction", Parameter.Type.STRING, msg.data)])[0]
        if not result.successful:
            self.get_logger().warning(f"instruction on ~/instruction refused: {result.reason}")

    def _on_start(self, request, response):
        if not self._active:
            why = f" (configure failed: {self.configure_error})" if self.configure_error else ""
            response.success = False
            response.message = f"the node is {self.status}{why}: configure and activate it first (lifecycle)"
            return response
        if not self._p("instruction").strip():
            response.success, response.message = (
                False,
                "no instruction set: set the 'instruction' parameter first",
            )
            return response
        self._set_running(True)
        response.success, response.message = True, f"started with instruction {self._p('instruction')!r}"
        return response

    def _on_stop(self, request, response):
        was = self._running
        self._set_running(False)
        response.success, response.message = True, "stopped" if was else "already idle"
        return response

    def _set_running(self, on: bool) -> None:
        with self._lock:
            if on == self._running or (on and not self._active):
                return
            self._running = on
        if on:
            self._status, self._holding, self._hold_reason = "running", False, ""
            self._next_infer_t = 0.0
            self.executor_.forget()  # the first chunk of a run starts where the robot is
            self.get_logger().info("started")
        else:
            self._enter_hold("stopped", idle=True)
            self.get_logger().info("stopped")
        self._wake.set()

    # ------------------------------------------------------------------------------ hold / stream
    def _enter_hold(self, reason: str, idle: bool = False) -> None:
        """Stop executing: joint trajectories get a one-point hold at the commanded position,
        streamed outputs keep the last command (control tick), the base gets zero twist."""
        with self._lock:  # a stopped node stays idle: a late hold from the inference thread is moot
            if not idle and not self._running:
                return
            first = not self._holding
            self._holding, self._hold_reason = True, reason
            self._status = "idle" if idle else "holding"
        if not first:
            return
        self._stats["holds"] += 0 if idle else 1
        if not idle:
            self.get_logger().warning(f"holding: {reason}")
        held = self.executor_.hold(self._now())
        for o in self.embodiment.outputs:
            if o.name not in held:
                continue
            if o.type == "joint_trajectory":
                msg = make_trajectory(
                    o.joints, held[o.name][None], np.zeros((1, len(o.joints))), np.array([self.embodiment.dt])
                )
                self._pubs[o.name].publish(msg)
            elif o.type == "base_twist":
                self._publish_twist(o, np.zeros(2))
            else:
                self._publish_group(o, held[o.name])

    def _publish_twist(self, o, cmd) -> None:
        cmd = np.where(np.isfinite(cmd), cmd, 0.0)
        if o.twist_type == "Twist":
            msg = Twist()
            twist = msg
        else:
            msg = TwistStamped()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = o.frame_id
            twist = msg.twist
        twist.linear.x, twist.angular.z = float(cmd[0]), float(cmd[1])
        self._pubs[o.name].publish(msg)

    def _publish_group(self, o, positions) -> None:
        if not np.all(np.isfinite(positions)):
            return
        self._pubs[o.name].publish(Float64MultiArray(data=[float(v) for v in positions]))

    def _control_tick(self) -> None:
        with self._lock:
            running = self._running
        if not running:
            return
        now = self._now()
        if self._holding:
            cmds = {
                o.name: (np.zeros(2) if o.type == "base_twist" else self.executor_.last_command.get(o.name))
                for o in self.embodiment.outputs
                if o.type != "joint_trajectory"
            }
        else:
            cmds = self.executor_.stream(now)
        for o in self.embodiment.outputs:
            cmd = cmds.get(o.name)
            if cmd is None:
                continue
            if o.type == "base_twist":
                self._publish_twist(o, cmd)
            elif o.type == "joint_group_position":
                self._publish_group(o, cmd)

    # -------------------------------------------------------------------------------- inference
    def _input_problems(self, now: float) -> list[str]:
        self._drain()
        timeout = self._stale_timeout()
        problems = []
        with self._lock:
            cams = {f"camera {n}": v.t for n, v in self._cams.items()}
            states = {f"joint state {t}": v.t for t, v in self._states.items()}
        for name in stale_sources({**cams, **states}, now, timeout):
            t = {**cams, **states}[name]
            problems.append(f"{name} never received" if t is None else f"{name} stale ({now - t:.2f} s old)")
        return problems + self._joint_states()[1]

    def _snapshot(self) -> tuple[dict[str, np.ndarray], np.ndarray, list[float]]:
        """Images and the state vector from the newest messages (decoded here, not on arrival),
        and the header stamps of those messages (s). Raises ValueError for an image or joint
        state that cannot be used."""
        stamps: list[float] = []
        positions, errors = self._joint_states(stamps)
        if errors:
            raise ValueError("; ".join(errors))
        with self._lock:
            raws = {n: v.raw for n, v in self._cams.items()}
        state = np.concatenate([positions[s.topic] for s in self.embodiment.state])
        images = {}
        for name in self.mapper.camera_names:
            msg = deserialize_message(raws[name], self._cam_types[name])
            images[name] = image_to_rgb(msg) if self._cam_types[name] is Image else compressed_to_rgb(msg)
            stamps.append(stamp_seconds(msg))
        return images, state, stamps

    def _inference_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._inference_step()
            except Exception as exc:  # noqa: BLE001 - keep the node alive, report and hold
                self.get_logger().error(f"inference step failed: {type(exc).__name__}: {exc}")
                self._stats["chunks_rejected"] += 1
                self._last_reject = f"{type(exc).__name__}: {exc}"
                if self._running:
                    self._enter_hold(f"error: {exc}")
                self._stopping.wait(0.1)

    def _inference_step(self) -> None:
        if not self._running:
            self._wake.wait(0.05)
            self._wake.clear()
            return
        now = self._now()
        problems = self._input_problems(now)
        if problems:
            self._enter_hold("; ".join(problems))
            self._stopping.wait(0.01)
            return
        if now < self._next_infer_t and not self._holding:
            # until the next inference, re-check the inputs every control period (stale data -> hold)
            self._stopping.wait(min(self.embodiment.dt, max(0.0, self._next_infer_t - now)))
            return
        instruction = self._p("instruction")
        images, state, stamps = self._snapshot()
        if not np.all(np.isfinite(state)):  # joint_positions already refuses these; belt and braces
            self._enter_hold("joint state not finite")
            return
        wall0, now = time.perf_counter(), self._now()
        t_obs = observation_time(stamps, now, self._stale_timeout())
        self._obs_age_s = now - t_obs
        obs = Observation(images=images, state=self.mapper.state_for_policy(state), instruction=instruction,
                          stamp=t_obs)
        seed = int(self._p("seed"))
        # real-time chunking: a policy trained to continue an action prefix gets what the running
        # chunk commands during the expected latency, so the new chunk carries on from it
        prefix = self.executor_.action_prefix(t_obs, self._latency_est, getattr(self.policy, "max_action_prefix", 0))
        prefix = None if prefix is None else self.mapper.actions_for_policy(prefix)
        extra = {} if prefix is None else {"action_prefix": prefix}
        out = self.policy.infer(obs, seed=None if seed < 0 else seed, **extra)
        infer_ms = (time.perf_counter() - wall0) * 1000.0
        t_done = self._now()
        elapsed = max(0.0, t_done - t_obs)
        self._infer_ms.append(infer_ms)
        self._latency_s.append(elapsed)
        if not self._running:
            return
        if elapsed > self._max_inference():
            self._stats["overruns"] += 1
            self._enter_hold(
                f"inference overran: {elapsed * 1000:.0f} ms > {self._max_inference() * 1000:.0f} ms"
            )
            return
        problems = self._input_problems(t_done)
        if problems:
            self._enter_hold("; ".join(problems))
            return
        try:
            actions = self.mapper.actions_for_embodiment(out.actions)
            self._chunk_pub.publish(
                chunk_to_multiarray(np.nan_to_num(actions, nan=0.0, posinf=0.0, neginf=0.0))
            )
            plan = self.executor_.make_plan(actions, state, elapsed, t_done)
        except (UnsafeChunkError, ValueError) as exc:
            self._stats["chunks_rejected"] += 1
            self._last_reject = str(exc)
            self._enter_hold(f"chunk rejected: {exc}")
            return
        with self._lock:
            if not self._running:
                return
            for name, p in plan.outputs.items():
                if p.output.type == "joint_trajectory":
                    wp = p.waypoints
                    # header.stamp = publication time: the controller runs the waypoints at the planned
                    # times however long the message takes to arrive (JTC semantics)
                    self._pubs[name].publish(
                        make_trajectory(p.output.joints, wp.positions, wp.velocities, wp.times,
                                        stamp=seconds_to_time(t_done))
                    )
            self.executor_.accept(plan)
            resumed = self._holding
            # under the lock: a stop between the publish and here must leave the node idle
            self._holding, self._hold_reason, self._status = False, "", "running"
        self._stats["chunks_published"] += 1
        self._last_instruction_used = instruction
        if resumed:
            self.get_logger().info("fresh data: resuming")
        self._latency_est = update_latency_estimate(self._latency_est, elapsed)
        self._next_infer_t = self.executor_.replan_time(plan, len(actions), t_obs, self._latency_est)

    # ------------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        self._drain()
        now = self._now()
        st = DiagnosticStatus()
        st.name = f"{self.get_fully_qualified_name()}: policy"
        emb_name = self.embodiment.name if self.embodiment else self._p("embodiment")
        st.hardware_id = emb_name
        status = self.status
        if self.configure_error:
            st.level, st.message = DiagnosticStatus.ERROR, f"{status}: configure failed: {self.configure_error}"
        else:
            st.level = DiagnosticStatus.WARN if status == "holding" else DiagnosticStatus.OK
            st.message = status + (f": {self._hold_reason}" if status == "holding" and self._hold_reason else "")
        infer = np.array(self._infer_ms) if self._infer_ms else np.zeros(1)
        lat = np.array(self._latency_s) * 1000 if self._latency_s else np.zeros(1)
        values = {
            "state": status,
            "hold_reason": self._hold_reason if status == "holding" else "",
            "configure_error": self.configure_error,
            "warmup_ms": "" if self._warmup_ms is None else f"{self._warmup_ms:.1f}",
            "embodiment": emb_name,
            "instruction": self._p("instruction"),
            "last_chunk_instruction": self._last_instruction_used,
            "inference_ms_last": f"{infer[-1]:.1f}",
            "inference_ms_p50": f"{np.percentile(infer, 50):.1f}",
            "inference_ms_p95": f"{np.percentile(infer, 95):.1f}",
            "latency_ms_last": f"{lat[-1]:.1f}",
            "observation_age_ms_last": f"{self._obs_age_s * 1000:.1f}",
            "chunks_published": str(self._stats["chunks_published"]),
            "chunks_rejected": str(self._stats["chunks_rejected"]),
            "overruns": str(self._stats["overruns"]),
            "holds": str(self._stats["holds"]),
            "last_reject_reason": self._last_reject,
        }
        with self._lock:
            for n, v in self._cams.items():
                values[f"age_ms camera {n}"] = "never" if v.t is None else f"{(now - v.t) * 1000:.0f}"
            for t, v in self._states.items():
                values[f"age_ms joint state {t}"] = "never" if v.t is None else f"{(now - v.t) * 1000:.0f}"
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self._diag_pub.publish(arr)



def main(args: list[str] | None = None) -> NoReturn:
    """The `policy_node` executable: unconfigured until a lifecycle manager (the launch files,
    `ros2 lifecycle set`) configures and activates it."""
    exit_process(run_node(PolicyNode, "policy_node", args, STARTUP_ERRORS, num_threads=EXECUTOR_THREADS))


__all__ = ["PolicyNode", "main", "validate_instruction", "seconds_to_duration"]

if __name__ == "__main__":
    sys.exit(main())
