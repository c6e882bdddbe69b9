"""Inference latency of a policy on this machine: image encoding, prefix, flow loop, total.

Prints one JSON object: median and p95 (ms) per stage, peak resident memory, and the same model
sampling with the prefix recomputed at every flow step (no cache), for comparison.

    python benchmarks/latency.py --preset small --cameras 3 --backend onnxruntime --steps 10

A random-weight model folder of the preset is made in a temporary directory (weights do not
change the cost). Figures depend on the machine: quote them with its CPU/GPU and thread count.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.runtime import Layout, Observation, Policy
from ki_vla_ros.runtime.init_model import init_model_dir


def stats(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"median_ms": round(float(np.median(ms)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch / ORT intra-op threads (default: all)")
    parser.add_argument("--device", default="cpu", help="torch device for the torch backend")
    parser.add_argument("--compile", action="store_true", help="torch.compile the torch backend")
    parser.add_argument("--no-uncached", action="store_true", help="skip the uncached comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cams = [f"cam{i}" for i in range(args.cameras)]
    layout = Layout(cams, [f"q{i}" for i in range(14)], [f"a{i}" for i in range(14)])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_model_dir(Path(tmp) / "m", layout, preset=args.preset)
        if args.backend != "torch":
            from ki_vla_ros.export.cli import export_model_dir

            t = time.perf_counter()
            export_model_dir(model_dir, num_steps=args.steps,
                             precisions=("fp32",) if args.backend == "onnxruntime" else ("fp32", "fp16", "bf16"))
            export_s = time.perf_counter() - t
        else:
            export_s = 0.0
        rng = np.random.default_rng(0)
        obs = Observation({c: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for c in cams},
                          np.zeros(14), "pick up the red cube with the left arm")
        # image encoding (vision tower, all views) timed in torch before a backend session exists
        reference = Policy.load(model_dir, backend="torch", num_steps=args.steps)
        model = reference.bundle.model
        inputs = [torch.as_tensor(x) for x in reference.model_inputs(obs)]
        stages: dict[str, list[float]] = {"image_encoding": [], "prefix": [], "flow": [], "total": []}
        with torch.no_grad():
            for i in range(args.repeats + 3):
                t = time.perf_counter()
                model.vision(inputs[0].flatten(0, 1))
                if i >= 3:
                    stages["image_encoding"].append(time.perf_counter() - t)

        policy = Policy.load(model_dir, backend=args.backend, num_steps=args.steps, device=args.device,
                             compile=args.compile, threads=args.threads)
        for _ in range(3):  # warm-up (and torch.compile / engine build)
            policy.infer(obs, seed=0)
        for i in range(args.repeats):
            out = policy.infer(obs, seed=i)
            for key in ("prefix", "flow", "total"):
                stages[key].append(out.timings_ms[key] / 1e3)
        result = {
            "preset": args.preset, "cameras": args.cameras, "backend": args.backend, "steps": args.steps,
            "threads": torch.get_num_threads() if args.threads is None else args.threads,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "prefix_tokens": int(policy.backend.prefix(*[x.numpy() for x in inputs])[2].shape[1]),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
            **{k: stats(v) for k, v in stages.items()},
            "control_rate_hz_max": round(1e3 / stats(stages["total"])["median_ms"], 1),
            "export_s": round(export_s, 1),
        }
        if not args.no_uncached:
            noise = torch.as_tensor(policy.draw_noise(0))
            samples = []
            for _ in range(max(3, args.repeats // 4)):
                t = time.perf_counter()
                model.sample_actions_uncached(*inputs, noise, num_steps=args.steps)
                samples.append(time.perf_counter() - t)
            result["uncached_torch_total"] = stats(samples)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
