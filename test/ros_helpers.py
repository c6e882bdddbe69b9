"""Helpers for the ROS tests: a scripted test policy, process management, an observer node.

`ScriptedPolicy` is loadable by the policy node process through its `policy_class` parameter
(`ros_helpers:ScriptedPolicy`, with this folder on PYTHONPATH): the same hook a user's custom
policy class uses. Nothing here is imported by the package itself.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# ------------------------------------------------------------------------------- test policy


class ScriptedPolicy:
    """A deterministic stand-in for a VLA policy (same interface as ki_vla_ros.runtime.Policy).

    From the current state it predicts a 50-step chunk where joint 0 moves +0.04 per step
    (2 rad/s at 50 Hz), joint 1 aims far beyond any limit (5.0, so the node must clamp), and
    the grippers (joints 6 and 13 when present) go to 1.0 for an instruction containing "open",
    0.0 for "close", else 0.5. An instruction containing "nan" yields NaN in the chunk (the node
    must refuse it). Sleeps SCRIPTED_POLICY_DELAY_S (default 0.03 s) to simulate inference."""

    action_horizon = 50
    layout = None

    def __init__(self, model_dir: str = ""):
        self.model_dir = model_dir
        self.calls = 0

    @classmethod
    def load(cls, model_dir, backend="torch", num_steps=10, precision="auto"):
        return cls(str(model_dir))

    def infer(self, obs, seed=None):
        from ki_vla_ros.runtime.types import PolicyOutput

        t0 = time.perf_counter()
        time.sleep(float(os.environ.get("SCRIPTED_POLICY_DELAY_S", "0.03")))
        for name, img in obs.images.items():
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, (name, img.shape)
        state = np.asarray(obs.state, np.float64)
        assert np.all(np.isfinite(state)), "the node passed a non-finite state to the policy"
        h = self.action_horizon
        actions = np.tile(state, (h, 1))
        actions[:, 0] = state[0] + 0.04 * (np.arange(h) + 1)
        if state.size > 1:
            actions[:, 1] = 5.0
        text = obs.instruction.lower()
        grip = 1.0 if "open" in text else 0.0 if "close" in text else 0.5
        for j in (6, 13):
            if j < state.size:
                actions[:, j] = grip
        if "nan" in text:
            actions[3, 2] = np.nan
        self.calls += 1
        return PolicyOutput(actions=actions, timings_ms={"total": (time.perf_counter() - t0) * 1000})


class ScriptedMobilePolicy(ScriptedPolicy):
    """ScriptedPolicy plus a base command [linear x 1.0 (beyond the 0.5 limit), angular z 0.3]."""

    def infer(self, obs, seed=None):
        out = super().infer(obs, seed)
        base = np.tile([[1.0, 0.3]], (len(out.actions), 1))
        out.actions = np.hstack([out.actions, base])
        return out


# ----------------------------------------------------------------------------- environment

_domains = itertools.count()


def ros_environment(tmp_dir: Path) -> dict[str, str]:
    """Set (in os.environ) and return a full environment for this process and its children:
    LOCALHOST discovery, a ROS_DOMAIN_ID of its own (a range apart from conftest's), ROS_HOME
    in `tmp_dir`, this folder and the repository on PYTHONPATH."""
    domain = 102 + (os.getpid() % 6) * 20 + next(_domains) % 20
    env = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(domain),
        "ROS_HOME": str(tmp_dir / "ros_home"),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }
    os.environ.update(env)
    full = dict(os.environ)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(HERE), full.get("PYTHONPATH", "")]))
    full["PYTHONUNBUFFERED"] = "1"
    return full


class Proc:
    """A child process with its output in a log file; stopped with SIGINT, then killed.

    `terminal`: the process leads a process group of its own and SIGINT goes to the whole group,
    as Ctrl-C in a terminal does (`ros2 launch` then leaves the SIGINT of its children to the
    terminal: signalled alone, it escalates to SIGTERM after 5 s)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, stdin: bool = False, cwd: Path = REPO,
                 terminal: bool = False):
        self.terminal = terminal
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115
        self.popen = subprocess.Popen(
            args,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            cwd=str(cwd),
            start_new_session=terminal,
        )

    def send(self, line: str) -> None:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def tail(self, n: int = 3000) -> str:
        return f"--- {self.log_path.name} ---\n" + self.output()[-n:]

    def stop(self, timeout: float = 8.0, sig: int = signal.SIGINT) -> int | None:
        if self.popen.poll() is None:
            if self.terminal:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.terminal:  # nothing of the group outlives the test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()
        return self.popen.returncode


def policy_node_cmd(*params: str, embodiment: str = "aloha_bimanual", policy_class="ros_helpers:ScriptedPolicy"):
    """Command line for a policy node process (`python -m ki_vla_ros.ros.policy_node`)."""
    args = [
        sys.executable,
        "-m",
        "ki_vla_ros.ros.policy_node",
        "--ros-args",
        "-p",
        f"embodiment:={embodiment}",
        "-p",
        f"policy_class:={policy_class}",
    ]
    for p in params:
        args += ["-p", p]
    return args


def stand_in_cmd(*extra: str, embodiment: str = "aloha_bimanual"):
    return [
        sys.executable,
        "-m",
        "ki_vla_ros.ros.camera_publisher",
        "--embodiment",
        embodiment,
        "--image-size",
        "96",
        "128",
        "--stdin",
        *extra,
    ]


# what a clean run and a clean SIGINT / SIGTERM never print (issue 15: publishing on a dead context)
PROBLEMS = ("[ERROR]", "Traceback", "never retrieved", "Failed to publish", "context is invalid", "Exception")


def problem_lines(output: str, expected: tuple[str, ...] = ()) -> list[str]:
    """The lines of a process's output that report errors, except those containing one of
    `expected` (an error the test provoked on purpose)."""
    return [line for line in output.splitlines()
            if any(p in line for p in PROBLEMS) and not any(e in line for e in expected)]


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ------------------------------------------------------------------------------- observer


class Observer:
    """An rclpy node in the test process, spun in a background thread: records messages,
    calls services and sets parameters of the node under test."""

    def __init__(self, name: str = "test_observer"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        # a context of its own: several observers may live at once (module and test fixtures)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.rclpy = rclpy
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self.messages: dict[str, list] = {}
        self.stamps: dict[str, list[float]] = {}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - shutdown
            pass

    def subscribe(self, msg_type, topic: str, qos=10) -> None:
        self.messages.setdefault(topic, [])
        self.stamps.setdefault(topic, [])

        def cb(msg):
            with self.lock:
                self.messages[topic].append(msg)
                self.stamps[topic].append(time.monotonic())

        self.node.create_subscription(msg_type, topic, cb, qos)

    def received(self, topic: str, since: float = 0.0) -> list:
        with self.lock:
            return [m for m, t in zip(self.messages[topic], self.stamps[topic]) if t >= since]

    def call(self, srv_type, name: str, request=None, timeout: float = 10.0):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available after {timeout} s")
            future = client.call_async(request if request is not None else srv_type.Request())
            if not wait_until(future.done, timeout):
                raise TimeoutError(f"service {name} did not answer within {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameter(self, node_name: str, name: str, value):
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request()
        req.parameters = [Parameter(name, value=value).to_parameter_msg()]
        return self.call(SetParameters, f"{node_name}/set_parameters", req).results[0]

    def get_parameter(self, node_name: str, name: str):
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        req = GetParameters.Request(names=[name])
        return parameter_value_to_python(self.call(GetParameters, f"{node_name}/get_parameters", req).values[0])

    def lifecycle(self, node_name: str, transition: str, timeout: float = 60.0) -> bool:
        """Ask a managed node for a transition by label (configure, activate, deactivate, cleanup,
        shutdown) through its lifecycle_msgs/ChangeState service; whether it succeeded."""
        from lifecycle_msgs.srv import ChangeState

        req = ChangeState.Request()
        req.transition.label = transition
        return self.call(ChangeState, f"{node_name}/change_state", req, timeout).success

    def lifecycle_state(self, node_name: str, timeout: float = 30.0) -> str:
        """The managed node's state label (unconfigured, inactive, active, finalized) by GetState."""
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"{node_name}/get_state", timeout=timeout).current_state.label

    def latest_diagnostics(self, topic: str = "/diagnostics", node_name: str = "policy_node") -> dict | None:
        msgs = self.received(topic)
        for arr in reversed(msgs):
            for st in arr.status:
                if node_name in st.name:
                    values = {kv.key: kv.value for kv in st.values}
                    values["_level"] = int.from_bytes(st.level, "little") if isinstance(st.level, bytes) else st.level
                    values["_message"] = st.message
                    return values
        return None

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


# ---------------------------------------------------------------------------------- launch


def launch_missing() -> str | None:
    """Why `launch` / `launch_ros` cannot be imported and how to get them (they are not on PyPI),
    or None when they can."""
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
    except ImportError as exc:
        return (f"launch / launch_ros not importable ({exc}): they are not on PyPI; scripts/setup.sh installs "
                "them from ../shared/wheels/ros2-launch when that folder exists (or install ROS 2)")
    return None


def require_launch() -> None:
    """Skip the calling test module, with launch_missing()'s reason, where launch is missing."""
    import pytest

    if reason := launch_missing():
        pytest.skip(reason, allow_module_level=True)


def installed_env(tmp_dir: Path, install: Path) -> dict[str, str]:
    """ros_environment() for processes that use a `colcon build` install (ament index, launch
    files, lib/ki_vla_ros executables) instead of this checkout; the test policies from here."""
    env = ros_environment(tmp_dir)
    site = next((install / "lib").glob("python3*/site-packages"))
    env["AMENT_PREFIX_PATH"] = str(install)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(HERE)])
    return env


def launch_cmd(path: Path, **launch_args: str) -> list[str]:
    """Command line that runs a launch file as `ros2 launch` would (run_launch_file)."""
    code = ("import sys, json, ros_helpers; "
            "sys.exit(ros_helpers.run_launch_file(sys.argv[1], **json.loads(sys.argv[2])))")
    return [sys.executable, "-c", code, str(path), json.dumps(launch_args)]


def run_launch_file(path: str, **launch_args: str) -> int:
    """Run a launch file like `ros2 launch` does (LaunchService + IncludeLaunchDescription) until
    SIGINT; print every started process's exit code as 'EXIT name code'. Meant to be run in a
    child process: python -c 'import ros_helpers; ros_helpers.run_launch_file(...)'."""
    import launch
    from launch.actions import IncludeLaunchDescription, RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    def on_exit(event, context):
        print(f"EXIT {event.action.name} {event.returncode}", flush=True)

    ld = launch.LaunchDescription(
        [
            RegisterEventHandler(OnProcessExit(on_exit=on_exit)),
            IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=list(launch_args.items())),
        ]
    )
    service = launch.LaunchService()
    service.include_launch_description(ld)
    return service.run()


# ------------------------------------------------------------------------------ bags, models


def write_aloha_bag(
    path: Path,
    duration_s: float = 5.0,
    cam_hz: float = 10.0,
    state_hz: float = 50.0,
    image_hw: tuple[int, int] = (64, 64),
    commands: bool = False,
    storage: str = "sqlite3",
) -> Path:
    """A rosbag2 (written with rosbags, no rclpy) with the aloha_bimanual cameras and joint states
    (all joints at 0), and with `commands` one JointTrajectory per arm every 0.5 s commanding 0
    for 50 steps at 50 Hz."""
    from ki_vla_ros.bagio import typestore, write_bag
    from ki_vla_ros.embodiment import load_embodiment

    ts = typestore()
    T = ts.types
    emb = load_embodiment("aloha_bimanual")
    t0 = 1_700_000_000 * 10**9

    def header(t_ns, frame=""):
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id=frame
        )

    records = []
    h, w = image_hw
    for k in range(int(duration_s * cam_hz)):
        t = t0 + int(k / cam_hz * 1e9)
        for i, cam in enumerate(emb.cameras):
            img = np.full((h, w, 3), (k * 10 + i * 50) % 256, np.uint8)
            msg = T["sensor_msgs/msg/Image"](
                header=header(t, cam.name),
                height=h,
                width=w,
                encoding="rgb8",
                is_bigendian=0,
                step=w * 3,
                data=img.ravel(),
            )
            records.append((cam.topic, "sensor_msgs/msg/Image", t, msg))
    for k in range(int(duration_s * state_hz)):
        t = t0 + int(k / state_hz * 1e9)
        for src in emb.state:
            msg = T["sensor_msgs/msg/JointState"](
                header=header(t),
                name=list(src.joints),
                position=np.zeros(len(src.joints)),
                velocity=np.zeros(len(src.joints)),
                effort=np.zeros(0),
            )
            records.append((src.topic, "sensor_msgs/msg/JointState", t, msg))
    if commands:
        Duration = T["builtin_interfaces/msg/Duration"]
        for k in range(int(duration_s * 2)):
            t = t0 + int(k * 0.5e9)
            for o in emb.outputs:
                points = [
                    T["trajectory_msgs/msg/JointTrajectoryPoint"](
                        positions=np.zeros(len(o.joints)),
                        velocities=np.zeros(0),
                        accelerations=np.zeros(0),
                        effort=np.zeros(0),
                        time_from_start=Duration(sec=0, nanosec=int((i + 1) * 0.02e9)),
                    )
                    for i in range(50)
                ]
                msg = T["trajectory_msgs/msg/JointTrajectory"](
                    header=T["std_msgs/msg/Header"](
                        stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""
                    ),
                    joint_names=list(o.joints),
                    points=points,
                )
                records.append((o.topic, "trajectory_msgs/msg/JointTrajectory", t, msg))
    records.sort(key=lambda r: r[2])
    write_bag(path, records, storage=storage)
    return path


def tiny_model_dir(out: Path, embodiment: str = "aloha_bimanual") -> Path:
    """A random-weight `tiny` model folder for an embodiment (ki_vla_ros.runtime.init_model), with
    normalisation ranges from the embodiment's joint limits."""
    from ki_vla_ros.embodiment import load_embodiment
    from ki_vla_ros.runtime import Layout
    from ki_vla_ros.runtime.init_model import init_model_dir

    emb = load_embodiment(embodiment)
    lims = emb.limits.joints

    def rng(names):
        lo = [lims[n].lower if n in lims else -1.0 for n in names]
        hi = [lims[n].upper if n in lims else 1.0 for n in names]
        return np.array(lo), np.array(hi)

    layout = Layout(emb.camera_names, emb.state_names, emb.action_names, emb.control_rate_hz)
    return init_model_dir(
        out, layout, preset="tiny", seed=0, state_range=rng(emb.state_names), action_range=rng(emb.action_names)
    )
