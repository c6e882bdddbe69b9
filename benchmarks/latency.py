"""Inference latency of a policy on this machine: prefix, flow loop and whole chunk, how close each
stage runs to the machine's GEMM peak, and the action error of the chosen precision against fp32.

    python benchmarks/latency.py --dims benchmarks/dims/peer.yaml --backend torch --precision bf16
    python benchmarks/latency.py --preset small --cameras 3 --backend onnxruntime --precision int8

Prints one JSON object: median and p95 wall time (ms) of `prefix`, `flow` (all Euler steps), each
called alone, and `total` (`Policy.infer`, preprocessing included; the prefix pass and flow loop in
one `backend.chunk` call, on OpenVINO one graph, so `total` can be below prefix + flow), and the
median CPU time of each (`cpu_ms`, all
threads: on a shared machine the 1-thread CPU time is the figure that holds; OMP_WAIT_POLICY=PASSIVE
keeps idle threads from spinning, see docs/runtime.md); `gflop` and achieved `gflops` (wall) of
prefix and flow loop
(matrix-product FLOPs counted by torch's FlopCounterMode on the fp32 model); the machine's measured
fp32 and bf16 GEMM peak (`gemm_peak_gflops`, 2048³ products with the same threads);
`action_error_vs_fp32` — max / mean |actions − fp32 torch actions| (normalised units) on the same
observations and noise (runtime/precision.py: the check `ki-vla export --precision` records);
the load average while measuring. `--profile` (onnxruntime): where each graph's time goes, per
operator type (kernel ms per run, node count; ONNX Runtime's profiler, in runs of their own after
the timed ones). A random-weight model folder is made in a temporary directory
(weights do not change the cost; the adaRMS gates are opened, as after training, so the error
covers the expert), exported for ONNX Runtime, and a precision other than fp32 is checked first.
Figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from compute import add_model_args, count_flops, gemm_peaks, machine, model_overrides

from ki_vla_ros.export.cli import check_precisions, export_model_dir
from ki_vla_ros.model.synthetic import open_gates
from ki_vla_ros.runtime import Layout, Observation, Policy
from ki_vla_ros.runtime.backends import OnnxRuntimeBackend, op_times_ms
from ki_vla_ros.runtime.init_model import init_model_dir
from ki_vla_ros.runtime.model_dir import load_model_dir, save_model_dir
from ki_vla_ros.runtime.precision import action_error


def stats(samples_ms: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_ms)
    return {"median_ms": round(float(np.median(ms)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def profile_ops(policy, inputs_np, args, out: Path, top: int = 12) -> dict:
    """ONNX Runtime's per-operator-type kernel times of prefix and flow loop, `args.repeats` runs
    after a warm-up, on a second backend with profiling on (the timed one stays unprofiled)."""
    if args.backend != "onnxruntime":
        raise SystemExit("--profile: only with --backend onnxruntime")
    out.mkdir()
    backend = OnnxRuntimeBackend(policy.bundle.path / "onnx", policy.bundle.weights_sha256, args.steps,
                                 threads=args.threads, precision=args.precision, profile_dir=out)
    for i in range(args.repeats + 1):
        backend.flow(backend.prefix(*inputs_np), policy.draw_noise(i))
    result = {}
    for graph, trace in backend.end_profiling().items():
        p = op_times_ms(trace)
        ops = list(p["ops"].values())
        shown = dict(list(p["ops"].items())[:top])
        if len(ops) > top:
            shown["(other)"] = {"ms": round(sum(o["ms"] for o in ops[top:]), 3),
                                "nodes": sum(o["nodes"] for o in ops[top:])}
        result[graph] = {"run_ms": p["run_ms"], "kernels_ms": round(sum(o["ms"] for o in ops), 2), "ops": shown}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino", "tensorrt"])
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | int8 | fp16 (what the backend offers)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads [2]")
    parser.add_argument("--device", default="cpu", help="torch device for the torch backend")
    parser.add_argument("--compile", action="store_true", help="torch.compile the torch backend")
    parser.add_argument("--uncached", action="store_true", help="also time the sampler that recomputes the prefix "
                        "at every step (torch fp32)")
    parser.add_argument("--profile", action="store_true", help="onnxruntime: time per operator type of prefix and "
                        "flow loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks = gemm_peaks()

    cams = [f"cam{i}" for i in range(args.cameras)]
    layout = Layout(cams, [f"q{i}" for i in range(14)], [f"a{i}" for i in range(14)])
    with tempfile.TemporaryDirectory() as tmp:
        b = load_model_dir(init_model_dir(Path(tmp) / "init", layout, preset=args.preset, **model_overrides(args)))
        open_gates(b.model)
        model_dir = save_model_dir(Path(tmp) / "m", b.model, b.layout, b.text_tokenizer, b.action_tokenizer,
                                   b.norm_stats)
        del b
        t = time.perf_counter()
        if args.backend != "torch":
            export_model_dir(model_dir, num_steps=args.steps, precisions=(args.precision,))
        elif args.precision != "fp32":
            check_precisions(model_dir, (args.precision,), args.steps)
        export_s = time.perf_counter() - t
        rng = np.random.default_rng(0)
        obs = Observation({c: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for c in cams},
                          np.zeros(14), "pick up the red cube with the left arm")
        reference = Policy.load(model_dir, backend="torch", num_steps=args.steps)
        model = reference.bundle.model
        inputs = [torch.as_tensor(x) for x in reference.model_inputs(obs)]
        noise = torch.as_tensor(reference.draw_noise(0))
        with torch.no_grad():
            k, v, prefix_mask = model.prefix_cache(*inputs)
            flops = {"prefix": count_flops(model.prefix_cache, *inputs),
                     "flow": count_flops(model.flow_from_cache, k, v, prefix_mask, noise, args.steps)}

        policy = Policy.load(model_dir, backend=args.backend, num_steps=args.steps, device=args.device,
                             compile=args.compile, threads=args.threads, precision=args.precision)
        error = action_error(reference, policy, observations=3)
        inputs_np = policy.model_inputs(obs)
        for _ in range(2):  # warm-up (and torch.compile / engine build; OpenVINO compiles prefix / flow alone here)
            policy.infer(obs, seed=0)
            policy.backend.flow(policy.backend.prefix(*inputs_np), policy.draw_noise(0))
        wall: dict[str, list[float]] = {"prefix": [], "flow": [], "total": []}
        cpu: dict[str, list[float]] = {"prefix": [], "flow": [], "total": []}
        load_before = machine()["loadavg"]
        for i in range(args.repeats):  # the chunk as the node runs it, then its two stages apart
            marks = [(time.perf_counter(), time.process_time())]
            policy.infer(obs, seed=i)
            marks.append((time.perf_counter(), time.process_time()))
            cache = policy.backend.prefix(*inputs_np)
            if isinstance(cache[0], torch.Tensor) and cache[0].is_cuda:  # GPU backends: wait for the work
                torch.cuda.synchronize(cache[0].device)
            marks.append((time.perf_counter(), time.process_time()))
            policy.backend.flow(cache, policy.draw_noise(i))
            marks.append((time.perf_counter(), time.process_time()))
            for key, (a, b) in zip(("total", "prefix", "flow"), zip(marks, marks[1:])):
                wall[key].append((b[0] - a[0]) * 1e3)
                cpu[key].append((b[1] - a[1]) * 1e3)
        medians = {key: stats(values) | {"cpu_ms": round(float(np.median(cpu[key])), 2)}
                   for key, values in wall.items()}
        result = {
            "model": args.dims or args.preset, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "cameras": args.cameras, "prefix_tokens": int(prefix_mask.shape[1]), "backend": args.backend,
            "precision": args.precision, "steps": args.steps, "threads": args.threads, "repeats": args.repeats,
            **medians,
            "gflop": {key: float(f"{f / 1e9:.3g}") for key, f in flops.items()},
            "gflops": {key: round(flops[key] / medians[key]["median_ms"] / 1e6, 1) for key in flops},
            "gemm_peak_gflops": peaks,
            "action_error_vs_fp32": {k: float(f"{v:.3g}") for k, v in error.items()},
            "control_rate_hz_max": round(1e3 / medians["total"]["median_ms"], 1),
            "export_and_check_s": round(export_s, 1),
        }
        if args.uncached:
            samples = []
            for _ in range(3):
                t = time.perf_counter()
                model.sample_actions_uncached(*inputs, noise, num_steps=args.steps)
                samples.append((time.perf_counter() - t) * 1e3)
            result["uncached_torch_total"] = stats(samples)
        if args.profile:
            result["profile"] = profile_ops(policy, inputs_np, args, Path(tmp) / "profile")
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["machine"] = machine() | {"loadavg_before": load_before}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
