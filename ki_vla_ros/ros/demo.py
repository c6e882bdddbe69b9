"""The main job: the simulated ALOHA and the policy node, closed loop, over real DDS.

``ki-vla demo``: one episode; prints success, whether the instruction was followed and the
control latency; writes a video of ``cam_high`` and a plot of commanded vs measured joints.
``ki-vla eval``: N seeded episodes per task; success and instruction-following rates.

Both use :class:`SimRig`: the sim node and the policy node run as two child processes (as a
robot driver and the policy would on a real robot: no shared GIL, each can crash alone), both
with ``use_sim_time``; this process is only the operator. It talks to them through their
interfaces: the sim's ``~/reset`` and parameters (task, seed, episode length), the policy
node's ``instruction`` parameter (the standard ``set_parameters`` service), ``~/start`` /
``~/stop``, ``/diagnostics`` and ``~/action_chunk``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SIM_NODE = "/sim_node"
RECORD_DRAIN_S = 0.1  # the recorder drains its queues this often ...
RECORD_QUEUE_DEPTH = 200  # ... each holds this many messages (4 s of the 50 Hz topics)
POLICY_NODE = "/policy_node"
DEFAULT_DURATION = {"pick": 8.0, "handover": 15.0}  # sim seconds; the expert needs 3.9 / 8.3 s


class DemoError(RuntimeError):
    """An infrastructure failure (a process died, discovery or a service timed out)."""


@dataclass
class EpisodeResult:
    task: str
    instruction: str
    seed: int
    success: bool
    instruction_followed: bool
    sim_time_s: float
    wall_time_s: float
    chunks: int
    trajectories_executed: int
    inference_ms_p50: float | None
    inference_ms_p95: float | None
    latency_sim_ms_p50: float | None
    latency_sim_ms_p95: float | None
    real_time_factor: float
    max_joint_motion: float  # largest |measured - initial| over the episode (rad / normalised)
    tracking_error_mean: float | None  # mean |commanded - measured| over joints and time
    policy_holds: int
    reach_m: float | None = None  # closest the instructed arm came to the instructed cube (sim/tasks.py)
    lift_m: float | None = None  # highest the instructed cube rose
    reach_other_m: float | None = None  # closest the instructed arm came to the other cube
    observation_age_sim_ms_p50: float | None = None  # oldest sensor stamp -> inference start
    recording: dict = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        rec = d.pop("recording")
        d["recorded"] = {"commands": len(rec.get("cmd", [])), "frames": len(rec.get("frames", []))}
        return d


# ------------------------------------------------------------------------------------ processes


def ros_child_env(domain: int | None = None) -> dict[str, str]:
    """This process's environment for ROS, set in os.environ too: LOCALHOST discovery and a
    domain of its own unless the user set them (a real robot's settings are the user's)."""
    if "ROS_AUTOMATIC_DISCOVERY_RANGE" not in os.environ:
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(domain if domain is not None else 1 + os.getpid() % 100)
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sim and policy share the CPU: no spinning threads
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A node process with its output in a log file; stopped with SIGINT, then killed."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, nice: int = 0):
        self.name, self.log_path = name, log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, text=True,
                                      preexec_fn=(lambda: os.nice(nice)) if nice else None)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 2000) -> str:
        try:
            self._log.flush()
        except ValueError:
            pass
        return f"--- {self.name} ({self.log_path}) ---\n" + self.log_path.read_text()[-n:]

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


# ------------------------------------------------------------------------------------ the rig


class SimRig:
    """Sim node + policy node processes and an operator node in this process."""

    def __init__(self, model_dir: Path, backend: str = "torch", log_dir: Path = Path("outputs/demo/logs"),
                 image_size: int = 0, camera_every: int = 1, render_quality: str = "fast",
                 real_time_factor: float = 1.0, num_steps: int = 0, record_video: bool = False,
                 policy_class: str = "", threads: int = 0, precision: str = "auto", sim_nice: int = 0):
        self.model_dir, self.backend, self.policy_class = Path(model_dir), backend, policy_class
        self.threads, self.precision = threads, precision
        # the stand-in robot (sim node, this process's recorder thread) yields the CPU to the policy
        # node: on a real robot cameras and controllers do not run on the policy's cores
        self.sim_nice = sim_nice
        self.log_dir = Path(log_dir)
        self.sim_params = {"image_size": image_size, "camera_every": camera_every,
                           "render_quality": render_quality, "real_time_factor": float(real_time_factor)}
        self.num_steps = num_steps
        self.record_video = record_video
        self.children: list[Child] = []
        self.node = None
        self._lock = threading.Lock()
        self._rec_on = False
        self._reset_recording()

    # --------------------------------------------------------------------------- start / stop
    def start(self, timeout: float = 180.0) -> None:
        env = ros_child_env()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        py = sys.executable
        sim_args = [py, "-m", "ki_vla_ros.ros.sim_node", "--ros-args"]
        for k, v in self.sim_params.items():
            sim_args += ["-p", f"{k}:={v}"]
        self.children.append(Child("sim_node", sim_args, env, self.log_dir / "sim_node.log", nice=self.sim_nice))
        pol_args = [py, "-m", "ki_vla_ros.cli", "run", "--model", str(self.model_dir), "--backend", self.backend,
                    "--use-sim-time", "-p", f"num_steps:={self.num_steps}", "-p", f"precision:={self.precision}"]
        if self.policy_class:
            pol_args += ["--policy-class", self.policy_class]
        if self.threads:
            pol_args += ["-p", f"threads:={self.threads}"]
        self.children.append(Child("policy_node", pol_args, env, self.log_dir / "policy_node.log"))
        self._start_operator()
        self._wait_ready(timeout)

    def _start_operator(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray, String

        from ki_vla_ros.embodiment import load_embodiment
        from ki_vla_ros.ros.intake import SensorIntake

        self.emb = load_embodiment("aloha_bimanual")
        self._ctx = rclpy.Context()
        rclpy.init(context=self._ctx)
        self.node = rclpy.create_node("ki_vla_demo", context=self._ctx)
        self._status: dict = {}
        self._diag: dict = {}
        self._diag_lat: list[float] = []
        self._diag_age: list[float] = []
        status_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        n = self.node
        n.create_subscription(String, f"{SIM_NODE}/episode_status", self._on_status, status_qos)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        n.create_subscription(Float64MultiArray, f"{POLICY_NODE}/action_chunk", self._on_chunk, 10)
        # the recording (commands, measured joints, the video's camera) is taken raw and in batches:
        # no Python work per message while the episode runs (ros/intake.py); decoded after it
        self._tap = SensorIntake(self._ctx, "_ki_vla_demo_recorder")
        deep = QoSProfile(depth=RECORD_QUEUE_DEPTH, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._tap.add("cmd", JointState, f"{SIM_NODE}/joint_commands", deep)
        for src in self.emb.state:
            self._tap.add(f"state {src.topic}", JointState, src.topic, deep)
        if self.record_video:
            self._tap.add("frame", Image, self.emb.cameras[0].topic, deep)
        n.create_timer(RECORD_DRAIN_S, self._drain_recording)
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(n)
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._spin.start()

    def _spin_loop(self) -> None:
        if self.sim_nice:  # this thread only (Linux: a thread's nice value is its own)
            tid = threading.get_native_id()
            try:
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.sim_nice)
            except OSError:  # elsewhere this would lower the whole process; the recorder then shares equally
                pass
        try:
            self._executor.spin()
        except Exception:  # noqa: BLE001 - shutdown
            pass

    def _check_children(self) -> None:
        for c in self.children:
            if not c.alive():
                raise DemoError(f"{c.name} exited with code {c.popen.returncode}\n{c.tail()}")

    def _wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self._check_children()
            time.sleep(0.05)
        if not predicate():
            raise DemoError(f"timed out after {timeout:g} s waiting for {what}\n"
                            + "\n".join(c.tail() for c in self.children))

    def _wait_ready(self, timeout: float) -> None:
        def policy_sees_robot():
            d = self._diag
            ages = [v for k, v in d.items() if k.startswith("age_ms")]
            return bool(ages) and all(v != "never" for v in ages)

        self._wait(lambda: bool(self._status), timeout, "the sim node's episode status")
        self._wait(policy_sees_robot, timeout, "the policy node to receive the sim's cameras and joint states")

    def close(self) -> dict[str, int | None]:
        codes = {}
        try:
            if self.node is not None and self.children and self.children[1].alive():
                try:
                    self._trigger(f"{POLICY_NODE}/stop", timeout=3.0)
                except DemoError:
                    pass
        finally:
            for c in reversed(self.children):
                codes[c.name] = c.stop()
            if self.node is not None:
                self._executor.shutdown(timeout_sec=2.0)
                self._spin.join(timeout=5.0)
                self._tap.close()
                self.node.destroy_node()
                self._ctx.try_shutdown()
                self.node = None
        return codes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------------------- callbacks
    def _on_status(self, msg) -> None:
        self._status = json.loads(msg.data)

    def _on_diag(self, arr) -> None:
        for st in arr.status:
            if "policy_node" in st.name:
                values = {kv.key: kv.value for kv in st.values}
                self._diag = values
                if self._rec_on and values.get("state") == "running":
                    try:
                        self._diag_lat.append(float(values.get("latency_ms_last", "nan")))
                        self._diag_age.append(float(values.get("observation_age_ms_last", "nan")))
                    except ValueError:
                        pass

    def _on_chunk(self, msg) -> None:
        if self._rec_on:
            with self._lock:
                self._rec["chunks"] += 1

    def _drain_recording(self) -> None:
        """Move what the recorder's subscriptions queued into the recording (raw), or drop it
        between episodes. Runs on a timer, and once more when an episode ends."""
        taken = self._tap.drain()
        if self._rec_on:
            with self._lock:
                for key, got in taken.items():
                    self._rec["raw"].setdefault(key, []).extend(t.raw for t in got)

    def _decode_recording(self, raw: dict[str, list[bytes]]) -> dict:
        """Raw messages -> commands with the joint states of the same sim step (the sim stamps both
        with its clock), and the video's frames (stamp, RGB)."""
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image, JointState

        from ki_vla_ros.ros.conversions import image_to_rgb, joint_positions
        from ki_vla_ros.ros.conversions import stamp_seconds as stamp

        states = []
        for src in self.emb.state:
            msgs = (deserialize_message(b, JointState) for b in raw.get(f"state {src.topic}", []))
            states.append({stamp(m): joint_positions(m, src.joints) for m in msgs})
        out = {"cmd_t": [], "cmd": [], "meas": []}
        for b in raw.get("cmd", []):
            m = deserialize_message(b, JointState)
            t = stamp(m)
            if all(t in st for st in states):
                out["cmd_t"].append(t)
                out["cmd"].append(np.array(m.position))
                out["meas"].append(np.concatenate([st[t] for st in states]))
        frames = (deserialize_message(b, Image) for b in raw.get("frame", []))
        out["frames"] = [(stamp(m), image_to_rgb(m)) for m in frames]
        return out

    def _reset_recording(self) -> None:
        self._rec = {"chunks": 0, "raw": {}}
        self._diag_lat, self._diag_age = [], []

    # ----------------------------------------------------------------------------- services
    def _call(self, srv_type, name: str, request, timeout: float = 15.0):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise DemoError(f"service {name} not available after {timeout:g} s")
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not future.done():
                raise DemoError(f"service {name} did not answer within {timeout:g} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def _trigger(self, name: str, timeout: float = 15.0):
        from std_srvs.srv import Trigger

        res = self._call(Trigger, name, Trigger.Request(), timeout)
        if not res.success:
            raise DemoError(f"{name} refused: {res.message}")
        return res

    def set_params(self, node: str, **values) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        for (k, _), r in zip(values.items(), self._call(SetParameters, f"{node}/set_parameters", req).results):
            if not r.successful:
                raise DemoError(f"{node}: parameter {k} refused: {r.reason}")

    # ------------------------------------------------------------------------------ episode
    def run_episode(self, task_name: str, seed: int, duration: float | None = None,
                    wall_timeout: float | None = None, instruction: str | None = None) -> EpisodeResult:
        """Reset the sim to (task, seed), send the instruction (default: the task's canonical one),
        start the policy, run until success or ``duration`` sim seconds, stop the policy."""
        from ki_vla_ros.sim.tasks import get_task

        task = get_task(task_name)
        instruction = instruction or task.instruction
        duration = float(duration or DEFAULT_DURATION[task.kind])
        wall_timeout = wall_timeout or 120.0 + 40.0 * duration
        self._trigger(f"{POLICY_NODE}/stop")
        time.sleep(0.3)  # the stop's hold trajectory reaches the sim before the reset
        self.set_params(SIM_NODE, task=task.name, seed=int(seed), max_sim_time_s=duration)
        episode_before = self._status.get("episode", -1)
        self._trigger(f"{SIM_NODE}/reset")
        self._wait(lambda: self._status.get("episode", -1) > episode_before, 30.0, "the sim's reset")
        with self._lock:
            self._reset_recording()
        diag0 = dict(self._diag)
        traj0 = int(self._status.get("trajectories", 0))
        self.set_params(POLICY_NODE, instruction=instruction, seed=int(seed))
        wall0 = time.monotonic()
        self._rec_on = True
        self._trigger(f"{POLICY_NODE}/start")
        episode = self._status.get("episode")

        def finished():
            st = self._status
            return st.get("episode") == episode and (st.get("success") or st.get("done"))

        self._wait(finished, wall_timeout, f"the episode to end ({duration:g} s sim time)")
        wall = time.monotonic() - wall0
        st = dict(self._status)  # the outcome when the episode ended
        self._drain_recording()
        self._rec_on = False
        self._trigger(f"{POLICY_NODE}/stop")
        time.sleep(0.6)  # one more diagnostics message with this episode's statistics
        diag = dict(self._diag)
        st["trajectories"] = int(st.get("trajectories", 0)) - traj0
        return self._result(task, instruction, seed, st, diag, diag0, wall)

    def _result(self, task, instruction, seed, st, diag, diag0, wall) -> EpisodeResult:
        def num(d, k):
            try:
                return float(d[k])
            except (KeyError, ValueError):
                return None

        with self._lock:
            raw, chunks = self._rec["raw"], self._rec["chunks"]
            lat = [v for v in self._diag_lat if np.isfinite(v)]
            age = [v for v in self._diag_age if np.isfinite(v)]
        rec = {"chunks": chunks, **self._decode_recording(raw)}
        cmd, meas = np.array(rec["cmd"]), np.array(rec["meas"])
        motion = float(np.max(np.abs(meas - meas[0]))) if len(meas) else 0.0
        track = float(np.mean(np.abs(cmd - meas))) if len(meas) else None
        chunks_diag = (num(diag, "chunks_published") or 0) - (num(diag0, "chunks_published") or 0)
        return EpisodeResult(
            task=task.name, instruction=instruction, seed=int(seed),
            success=bool(st.get("success")), instruction_followed=bool(st.get("instruction_followed")),
            sim_time_s=float(st.get("episode_time", 0.0)), wall_time_s=round(wall, 2),
            chunks=int(max(chunks_diag, rec["chunks"])),
            trajectories_executed=int(st.get("trajectories", 0)),
            inference_ms_p50=num(diag, "inference_ms_p50"), inference_ms_p95=num(diag, "inference_ms_p95"),
            latency_sim_ms_p50=float(np.percentile(lat, 50)) if lat else None,
            latency_sim_ms_p95=float(np.percentile(lat, 95)) if lat else None,
            observation_age_sim_ms_p50=float(np.percentile(age, 50)) if age else None,
            real_time_factor=float(st.get("real_time_factor", 0.0)),
            max_joint_motion=motion, tracking_error_mean=track,
            policy_holds=int((num(diag, "holds") or 0) - (num(diag0, "holds") or 0)),
            reach_m=num(st, "reach_m"), lift_m=num(st, "lift_m"),
            reach_other_m=num(st, "reach_other_m"),
            recording=rec,
        )


# ------------------------------------------------------------------------------------ outputs


def format_report(r: EpisodeResult) -> str:
    def ms(v):
        return "n/a" if v is None else f"{v:.0f} ms"

    yes = {True: "yes", False: "no"}
    lines = [
        f"task:                  {r.task} (seed {r.seed})",
        f"instruction:           {r.instruction!r}",
        f"success:               {yes[r.success]}",
        f"instruction followed:  {yes[r.instruction_followed]}",
        f"progress:              instructed arm came within {_cm(r.reach_m).strip()} of the instructed cube, lifted"
        f" it {_cm(r.lift_m).strip()}; came within {_cm(r.reach_other_m).strip()} of the other cube",
        f"sim time:              {r.sim_time_s:.2f} s  (wall {r.wall_time_s:.1f} s, sim speed "
        f"{r.real_time_factor:.2f}x real time)",
        f"control latency:       inference median {ms(r.inference_ms_p50)}, p95 {ms(r.inference_ms_p95)} (wall);"
        f" observation->command median {ms(r.latency_sim_ms_p50)}, p95 {ms(r.latency_sim_ms_p95)} (sim time)",
        f"chunks:                {r.chunks} published, {r.trajectories_executed} trajectories executed by the sim,"
        f" {r.policy_holds} holds",
        f"joints:                moved up to {r.max_joint_motion:.3f}, mean |commanded - measured| "
        + ("n/a" if r.tracking_error_mean is None else f"{r.tracking_error_mean:.3f}"),
    ]
    return "\n".join(lines)


def save_video(frames: list, path: Path, fps: float) -> Path:
    """mp4 of the frames (imageio-ffmpeg); a PNG strip of up to 8 frames if that fails."""
    frames = [f for _, f in sorted(frames, key=lambda x: x[0])]
    if not frames:
        raise ValueError("no camera frames were received")
    try:
        import imageio.v2 as imageio

        with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=7, macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)
        return path
    except Exception as exc:  # noqa: BLE001 - fall back to a still strip
        import imageio.v2 as imageio

        idx = np.linspace(0, len(frames) - 1, min(8, len(frames))).astype(int)
        strip = path.with_suffix(".png")
        imageio.imwrite(str(strip), np.concatenate([frames[i] for i in idx], axis=1))
        print(f"(video failed: {exc}; wrote a PNG strip)", file=sys.stderr)
        return strip


def save_joint_plot(rec: dict, names, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array(rec["cmd_t"])
    cmd, meas = np.array(rec["cmd"]), np.array(rec["meas"])
    fig, axes = plt.subplots(7, 2, figsize=(11, 13), sharex=True)
    for j, name in enumerate(names):
        ax = axes[j % 7, j // 7]
        if len(t):
            ax.plot(t - t[0], cmd[:, j], "--", label="commanded")
            ax.plot(t - t[0], meas[:, j], label="measured")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("sim time (s)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- the CLIs


def resolve_model(model: str) -> Path:
    """The model folder (``--model`` or the embodiment's default); DemoError with how to make one."""
    from ki_vla_ros.embodiment import load_embodiment, missing_model_hint, resolve_model_dir

    emb = load_embodiment("aloha_bimanual")
    path = resolve_model_dir(model, emb)
    if not (path / "model.yaml").is_file():
        if model:
            raise DemoError(f"{path} is not a model folder (no model.yaml)")
        raise DemoError(missing_model_hint(emb.model, emb.name, "--model DIR"))
    return path


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:  # raising priority needs privileges; the policy node's priority is the reference
        raise argparse.ArgumentTypeError(f"must be >= 0 (the sim's priority is lowered, never raised), got {value}")
    return value


def _common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="",
                    help="model folder (default: the model of config/embodiments/aloha_bimanual.yaml)")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                    help="the policy node's backend [auto: openvino int8 where the model folder records it as "
                         "checked against fp32 on this kind of machine, else onnxruntime fp32 (the ONNX export is "
                         "made on first use); with --precision fp32 onnxruntime, with bf16 / int8 the fastest "
                         "backend whose check of it passed here; torch with --policy-class]")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                    help="what the policy computes in (other than fp32: only once `ki-vla export --precision` "
                         "has checked it on this model folder) [auto: see --backend; fp32 on torch and onnxruntime]")
    ap.add_argument("--duration", type=float, default=None,
                    help="episode length in sim seconds (default: 8 for picks, 15 for hand-overs)")
    ap.add_argument("--image-size", type=int, default=0,
                    help="camera size in pixels (default: the model's input size, so nothing is rendered "
                         "only to be scaled down)")
    ap.add_argument("--camera-every", type=int, default=2,
                    help="publish the cameras every k-th 50 Hz sim step [2: 25 Hz, a camera's rate]")
    ap.add_argument("--threads", type=int, default=1,
                    help="inference threads of the policy node (0 = one per core) [1: the sim needs the other core]")
    ap.add_argument("--sim-nice", type=_non_negative_int, default=5,
                    help="CPU priority the stand-in robot (sim node, recorder) gives up to the policy node "
                         "(nice increment; 0 = equal) [5: on a real robot the cameras and controllers do not "
                         "run on the policy's cores]")
    ap.add_argument("--render-quality", default="fast", choices=["fast", "full"])
    ap.add_argument("--num-steps", type=int, default=0,
                    help="flow-matching steps of the policy [0: the model folder's num_flow_steps]")
    ap.add_argument("--policy-class", default="", metavar="MODULE:CLASS",
                    help="the policy node's policy_class (e.g. ki_vla_ros.runtime.fast_policy:FastTokenPolicy) "
                         "['': the flow policy]")
    ap.add_argument("--real-time-factor", type=float, default=1.0,
                    help="upper bound on the sim's speed (x real time; 0 = unbounded) [1.0]")


def model_image_size(model_dir: Path) -> int:
    """The square image size a model folder's model takes (0 when the folder has no manifest)."""
    from ki_vla_ros.runtime.model_dir import ModelDirError, load_manifest

    try:
        return int(load_manifest(model_dir).model.image_size)
    except ModelDirError:
        return 0


def _rig(opts, out: Path, record_video: bool) -> SimRig:
    model = resolve_model(opts.model)
    size = opts.image_size or model_image_size(model)
    from ki_vla_ros.control.policy_loader import export_for, resolve_backend

    backend, precision = resolve_backend(model, opts.backend, opts.precision, opts.policy_class)
    if backend in ("onnxruntime", "openvino") and not opts.policy_class:
        print(f"checking the ONNX export of {model} (made once per weights, in seconds) ...", flush=True)
        if export_for(model, backend, precision, opts.num_steps):
            print(f"exported {model / 'onnx'}", flush=True)
    return SimRig(model, backend=backend, log_dir=out / "logs",
                  image_size=size, camera_every=opts.camera_every, render_quality=opts.render_quality,
                  real_time_factor=opts.real_time_factor, num_steps=opts.num_steps, record_video=record_video,
                  threads=opts.threads, policy_class=opts.policy_class, precision=precision,
                  sim_nice=opts.sim_nice)


def demo_main(argv: list[str] | None = None) -> int:
    """`ki-vla demo`: one closed-loop episode of the simulated ALOHA driven by the policy node."""
    from ki_vla_ros.sim.tasks import TASK_NAMES

    ap = argparse.ArgumentParser(prog="ki-vla demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="pick_red_left", choices=TASK_NAMES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/demo", help="folder for the video, plot, report and logs")
    _common_args(ap)
    opts = ap.parse_args(argv)
    out = Path(opts.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        rig = _rig(opts, out, record_video=True)
    except DemoError as exc:
        print(f"ki-vla demo: {exc}", file=sys.stderr)
        return 2
    print(f"ki-vla demo: starting the sim and the policy node (model {rig.model_dir}, backend {rig.backend}, "
          f"precision {rig.precision}) ...", flush=True)
    try:
        rig.start()
        print(f"running {opts.task} (seed {opts.seed}; ROS_DOMAIN_ID {os.environ.get('ROS_DOMAIN_ID')}) ...",
              flush=True)
        r = rig.run_episode(opts.task, opts.seed, opts.duration)
    except (DemoError, KeyboardInterrupt) as exc:
        print(f"ki-vla demo: failed: {exc}", file=sys.stderr)
        rig.close()
        return 1
    codes = rig.close()
    print(format_report(r))
    fps = 50.0 / max(1, opts.camera_every)
    files = []
    try:
        files.append(save_video(r.recording["frames"], out / "episode.mp4", fps))
    except (ValueError, OSError) as exc:
        print(f"(no video: {exc})", file=sys.stderr)
    from ki_vla_ros.sim.aloha import JOINT_NAMES

    files.append(save_joint_plot(r.recording, JOINT_NAMES, out / "joints.png",
                                 f"{r.task} seed {r.seed}: success {r.success}"))
    report = {**r.summary(), "model": str(rig.model_dir), "backend": rig.backend, "precision": rig.precision,
              "exit_codes": codes}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    files.append(out / "report.json")
    print("saved:                 " + ", ".join(str(f) for f in files))
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """`ki-vla eval`: closed-loop success and instruction following per task over seeded episodes."""
    from ki_vla_ros.sim.tasks import TASK_NAMES, TASKS, read_instruction_file

    ap = argparse.ArgumentParser(prog="ki-vla eval", description=eval_main.__doc__.split(":", 1)[1].strip())
    ap.add_argument("--episodes", type=int, default=5, help="episodes per task (seeds S .. S+N-1) [5]")
    ap.add_argument("--tasks", default=None, help=f"'all' or a comma list of {', '.join(TASK_NAMES)} "
                    "[all; with --instructions: the file's tasks]")
    ap.add_argument("--instructions", default="", metavar="FILE",
                    help="JSON object {task: [instruction, ...]}: the episodes of a task cycle through its list "
                         "(e.g. config/eval/heldout_phrasings.json); other tasks get their canonical instruction")
    ap.add_argument("--seed", type=int, default=900000,
                    help="first scene seed [900000: not among the training data seeds]")
    ap.add_argument("--out", default="outputs/eval", help="folder for results.json / results.csv / logs")
    _common_args(ap)
    opts = ap.parse_args(argv)
    try:
        given = read_instruction_file(opts.instructions) if opts.instructions else {}
    except ValueError as exc:
        ap.error(f"--instructions {exc}")
    if opts.tasks is None:
        tasks = list(given) if given else list(TASK_NAMES)
    else:
        tasks = list(TASK_NAMES) if opts.tasks == "all" else [t.strip() for t in opts.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASK_NAMES]
    if bad or not tasks or opts.episodes < 1:
        ap.error(f"unknown tasks {bad}; choose from {', '.join(TASK_NAMES)}" if bad else "nothing to evaluate")
    instructions = {t: list(given.get(t, [TASKS[t].instruction])) for t in tasks}
    out = Path(opts.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        rig = _rig(opts, out, record_video=False)
    except DemoError as exc:
        print(f"ki-vla eval: {exc}", file=sys.stderr)
        return 2
    results: list[EpisodeResult] = []
    try:
        rig.start()
        for task in tasks:
            for k in range(opts.episodes):
                said = instructions[task][k % len(instructions[task])]
                r = rig.run_episode(task, opts.seed + k, opts.duration, instruction=said)
                results.append(r)
                print(f"  {task:<28} seed {r.seed:<5} success {int(r.success)}  followed "
                      f"{int(r.instruction_followed)}  reach {_cm(r.reach_m)}  lift {_cm(r.lift_m)}  "
                      f"other cube {_cm(r.reach_other_m)}  "
                      f"sim {r.sim_time_s:5.2f} s  chunks {r.chunks}"
                      + (f"  {said!r}" if given else ""), flush=True)
    except (DemoError, KeyboardInterrupt) as exc:
        print(f"ki-vla eval: failed: {exc}", file=sys.stderr)
        rig.close()
        return 1
    rig.close()
    summary = summarize(results)
    print(format_table(summary))
    meta = {"model": str(rig.model_dir), "backend": rig.backend, "precision": rig.precision,
            "episodes_per_task": opts.episodes,
            "first_seed": opts.seed, "duration": opts.duration, "image_size": opts.image_size,
            "camera_every": opts.camera_every, "render_quality": opts.render_quality,
            "real_time_factor": opts.real_time_factor, "num_steps": opts.num_steps,
            "execute_steps": rig.emb.execute_steps, "threads": opts.threads,
            "instructions_file": opts.instructions or None, "instructions": instructions}
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, **summary, "episodes": [r.summary() for r in results]}, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        rows = [r.summary() for r in results]
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"saved: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def _cm(v: float | None) -> str:
    return "  n/a" if v is None else f"{v * 100:4.1f}cm"


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None


def _rates(rs: list[EpisodeResult]) -> dict:
    return {"episodes": len(rs),
            "success_rate": sum(r.success for r in rs) / len(rs),
            "instruction_following_rate": sum(r.instruction_followed for r in rs) / len(rs),
            "median_reach_m": _median([r.reach_m for r in rs]),
            "median_lift_m": _median([r.lift_m for r in rs]),
            "median_reach_other_m": _median([r.reach_other_m for r in rs]),
            "mean_sim_time_s": float(np.mean([r.sim_time_s for r in rs])),
            "seeds": sorted({r.seed for r in rs})}


def summarize(results: list[EpisodeResult]) -> dict[str, dict]:
    """``{"overall": rates, "per_task": {task: rates + instructions}, "per_instruction": {task:
    {instruction: rates}}}``; rates: episodes, success_rate, instruction_following_rate,
    median_reach_m, median_lift_m, median_reach_other_m (None where the sim reported no progress), mean_sim_time_s,
    seeds. Tasks and instructions in the order they were run."""
    out: dict[str, dict] = {"overall": _rates(results) if results else {}, "per_task": {}, "per_instruction": {}}
    for name in dict.fromkeys(r.task for r in results):
        rs = [r for r in results if r.task == name]
        said = list(dict.fromkeys(r.instruction for r in rs))
        out["per_task"][name] = {**_rates(rs), "instructions": said}
        out["per_instruction"][name] = {i: _rates([r for r in rs if r.instruction == i]) for i in said}
    return out


def format_table(summary: dict[str, dict]) -> str:
    """Per task and overall; under a task evaluated with several instructions, one row each."""
    def row(label, r):
        return (f"{label:<28} {r['episodes']:>8} {r['success_rate']:>8.0%} {r['instruction_following_rate']:>9.0%} "
                f"{_cm(r['median_reach_m']):>8} {_cm(r['median_lift_m']):>8} {_cm(r['median_reach_other_m']):>8} "
                f"{r['mean_sim_time_s']:>6.2f}")

    lines = [f"{'task':<28} {'episodes':>8} {'success':>8} {'followed':>9} {'reach':>8} {'lift':>8} {'other':>8} "
             f"{'sim s':>6}"]
    for name, r in summary["per_task"].items():
        lines.append(row(name, r))
        per = summary["per_instruction"][name]
        if len(per) > 1:
            lines += [row("", ri) + f"  {i!r}" for i, ri in per.items()]
    if summary["overall"]:
        lines.append(row("all", summary["overall"]))
    return "\n".join(lines)


__all__ = ["SimRig", "EpisodeResult", "demo_main", "eval_main", "format_report", "summarize", "resolve_model"]

if __name__ == "__main__":
    sys.exit(demo_main())
