"""The policy node at real sensor rates: does inference keep the CPU it needs?

Runs the robot stand-in (``camera_publisher``: cameras and joint states at the given rates, the
joints following the node's commands) and the policy node (``ki-vla run``, the given model) as
two processes over DDS on this machine, starts the node, and after ``--seconds`` prints one JSON
object: the node's inference median / p95 (from its own timing of ``policy.infer``) beside the
same policy alone in this process on the same image sizes, chunks published / rejected, holds,
and the node's hold reasons.

    python benchmarks/node_rates.py --camera-rate 30 --state-rate 100 --seconds 20
    python benchmarks/node_rates.py --camera-rate 2 --state-rate 10   # a quiet baseline
    python benchmarks/node_rates.py --threads 1   # one inference thread in the node and alone

Figures depend on the machine and on what else runs: quote them with the CPU and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ki_vla_ros.ros.demo import Child, ros_child_env  # noqa: E402


def policy_alone(model: Path, backend: str, embodiment: str, size: int, repeats: int, threads: int) -> dict:
    """Median / p95 of policy.infer in this process (no ROS), after a warm-up."""
    import torch

    from ki_vla_ros.control.policy_loader import LayoutMapper, load_policy
    from ki_vla_ros.embodiment import load_embodiment
    from ki_vla_ros.runtime.types import Observation

    if threads:
        torch.set_num_threads(threads)
    emb = load_embodiment(embodiment)
    policy = load_policy(model, backend=backend)
    mapper = LayoutMapper(emb, policy)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for c in mapper.camera_names}
    obs = Observation(images=images, state=mapper.state_for_policy(np.zeros(len(emb.state_names))),
                      instruction="pick up the red cube with the left arm")
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        policy.infer(obs, seed=i)
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(float(np.median(times)), 1), "p95_ms": round(float(np.percentile(times, 95)), 1)}


class DiagWatcher:
    """Reads the policy node's /diagnostics in a thread of this process."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("node_rates_bench", context=self.ctx)
        self.values: dict[str, str] = {}
        self.hold_reasons: dict[str, int] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_diag(self, arr) -> None:
        for st in arr.status:
            if "policy_node" in st.name:
                self.values = {kv.key: kv.value for kv in st.values}
                reason = self.values.get("hold_reason", "")
                if reason:
                    key = reason.split(":")[0].split("(")[0].strip()
                    self.hold_reasons[key] = self.hold_reasons.get(key, 0) + 1

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        self.ctx.try_shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="model folder (default: the embodiment's model)")
    ap.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"])
    ap.add_argument("--embodiment", default="aloha_bimanual")
    ap.add_argument("--camera-rate", type=float, default=30.0, help="Hz, every camera")
    ap.add_argument("--state-rate", type=float, default=100.0, help="Hz, every JointState topic")
    ap.add_argument("--image-size", type=int, default=224, help="square camera images (px)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time after the first chunk")
    ap.add_argument("--repeats", type=int, default=30, help="policy-alone inferences")
    ap.add_argument("--threads", type=int, default=0,
                    help="inference threads, the same for the node and the policy alone (0 = one per core)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="extra policy node parameter (repeatable)")
    opts = ap.parse_args()
    from ki_vla_ros.embodiment import load_embodiment, resolve_model_dir

    model = resolve_model_dir(opts.model, load_embodiment(opts.embodiment))

    alone = policy_alone(model, opts.backend, opts.embodiment, opts.image_size, opts.repeats, opts.threads)
    env = ros_child_env()
    logs = Path(tempfile.mkdtemp(prefix="node_rates_"))
    py = sys.executable
    stand_in = Child("stand_in", [py, "-m", "ki_vla_ros.ros.camera_publisher", "--embodiment", opts.embodiment,
                                  "--rate", str(opts.state_rate), "--camera-rate", str(opts.camera_rate),
                                  "--image-size", str(opts.image_size), str(opts.image_size)],
                     env, logs / "stand_in.log")
    node_args = [py, "-m", "ki_vla_ros.cli", "run", "--embodiment", opts.embodiment, "--model", str(model),
                 "--backend", opts.backend, "--instruction", "pick up the red cube with the left arm",
                 "--autostart", "-p", f"threads:={opts.threads}"]
    for p in opts.param:
        node_args += ["-p", p]
    node = Child("policy_node", node_args, env, logs / "policy_node.log")
    watcher = DiagWatcher()
    result: dict = {}
    try:
        deadline = time.monotonic() + 120.0
        while int(watcher.values.get("chunks_published", "0")) < 1:
            if time.monotonic() > deadline or not node.alive() or not stand_in.alive():
                raise RuntimeError("the node published no chunk within 120 s\n" + node.tail() + stand_in.tail())
            time.sleep(0.1)
        start = dict(watcher.values)
        holds0 = dict(watcher.hold_reasons)
        time.sleep(opts.seconds)
        end = dict(watcher.values)

        def delta(key):
            return int(end.get(key, "0")) - int(start.get(key, "0"))

        result = {
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "camera_rate_hz": opts.camera_rate,
            "state_rate_hz": opts.state_rate,
            "image_size": opts.image_size,
            "seconds": opts.seconds,
            "threads": opts.threads,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "policy_alone_ms": alone,
            "node_inference_ms": {"median_ms": float(end.get("inference_ms_p50", "nan")),
                                  "p95_ms": float(end.get("inference_ms_p95", "nan"))},
            "node_over_alone_median": round(float(end.get("inference_ms_p50", "nan")) / alone["median_ms"], 2),
            "chunks_published": delta("chunks_published"),
            "chunks_rejected": delta("chunks_rejected"),
            "overruns": delta("overruns"),
            "holds": delta("holds"),
            "hold_reasons_seen": {k: v - holds0.get(k, 0) for k, v in watcher.hold_reasons.items()
                                  if v - holds0.get(k, 0) > 0},
            "last_reject_reason": end.get("last_reject_reason", ""),
        }
    finally:
        watcher.close()
        node.stop()
        stand_in.stop()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
