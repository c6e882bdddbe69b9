"""Training-step time on this machine: compute_loss + backward + the trainer's AdamW step on a
synthetic batch, per recipe, with the achieved GFLOP/s against the machine's GEMM peak.

    python benchmarks/train_step.py --dims benchmarks/dims/peer.yaml --batch-size 4 --precision bf16
    python benchmarks/train_step.py --preset small --recipes pi0,ki --threads 1

Prints one JSON object: `train_step_ms` (median per recipe), `gflop` per step (matrix products of
forward and backward, counted by torch's FlopCounterMode) and achieved `gflops`, the machine's
measured fp32 / bf16 GEMM peak (`gemm_peak_gflops`), `ki_over_pi0` when both recipes run (the
paper reports ≈20 % for the joint objective), the load average while measuring.

Batches (`model.synthetic`): `pi0` batches hold only prefix tokens (flow loss); `ki` batches add
FAST targets (≈1/12 of H·D tokens, as measured for FAST on smooth chunks) and, for half the
examples, a short text answer. `--precision bf16`: the forward under bf16 autocast, as the
trainer's `precision: bf16` (train/precision.py); the optimiser is the trainer's (`make_optimizer`,
fused AdamW in a single process). `--compile`: the loss under `torch.compile` (Inductor; on CPU it
needs a C++ compiler), timed after a first step that compiles it (`compile_s`; the FLOPs are
counted on the eager loss). Figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from compute import add_model_args, count_flops, gemm_peaks, machine, model_config

from ki_vla_ros.model import KIVLA, RECIPES
from ki_vla_ros.model.synthetic import synthetic_batch
from ki_vla_ros.train.config import OptimConfig
from ki_vla_ros.train.precision import autocast
from ki_vla_ros.train.trainer import make_optimizer

SETTINGS = {  # preset -> camera views, prefix text tokens, FAST tokens for ki (other dims: like small)
    "tiny": dict(num_views=2, prefix_len=16, fast_len=8),
    "small": dict(num_views=3, prefix_len=32, fast_len=40),
}


def train_step(config, recipe: str, batch_size: int, precision: str, views: int, prefix_len: int, fast_len: int,
               compile: bool = False):
    """(step function, its matrix-product FLOPs, seconds spent compiling)."""
    torch.manual_seed(0)
    model = KIVLA(config)
    params = RECIPES[recipe].configure(model)
    opt = make_optimizer(params, {id(p): n for n, p in model.named_parameters()}, OptimConfig(lr=1e-4), fused=True)
    if recipe == "pi0":
        batch = synthetic_batch(model.config, batch_size, views, prefix_len, text_len=0, fast_len=0, mix="action")
    else:
        batch = synthetic_batch(model.config, batch_size, views, prefix_len, text_len=6, fast_len=fast_len, mix="both")
        batch["action_mask"][:] = True
    del batch["time"]  # sample flow time as in training

    loss_fn = model.compute_loss

    def loss_backward():
        with autocast(precision, torch.device("cpu")):
            out = loss_fn(batch)
        out["loss"].backward()

    def step():
        loss_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = count_flops(loss_backward)
    opt.zero_grad(set_to_none=True)
    compile_s = 0.0
    if compile:
        loss_fn = torch.compile(model.compute_loss)
        t0 = time.perf_counter()
        loss_backward()
        compile_s = time.perf_counter() - t0
        opt.zero_grad(set_to_none=True)
    return step, flops, compile_s


def median_ms(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--recipes", default="ki", help="comma-separated recipes to time [ki]")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cameras", type=int, default=None, help="camera views per example [tiny 2, others 3]")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="prefix text tokens [tiny 16, small 32, "
                    "--dims: the file's max_prefix_tokens]")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median) [5]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--compile", action="store_true", help="time the loss under torch.compile (compile_s: first step)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = model_config(args)
    s = dict(SETTINGS.get(args.preset, SETTINGS["small"]))
    if args.dims:
        s["prefix_len"] = config.max_prefix_tokens
    s["num_views"] = args.cameras or s["num_views"]
    s["prefix_len"] = args.prompt_tokens or s["prefix_len"]
    peaks = gemm_peaks()
    result = {"model": args.dims or args.preset, "params_m": round(sum(p.numel() for p in KIVLA(config).parameters())
                                                                   / 1e6, 2),
              "batch": args.batch_size, "cameras": s["num_views"], "prompt_tokens": s["prefix_len"],
              "precision": args.precision, "compile": args.compile, "threads": args.threads, "steps": args.steps,
              "train_step_ms": {}, "gflop": {}, "gflops": {}}
    load_before = machine()["loadavg"]
    for recipe in args.recipes.split(","):
        step, flops, compile_s = train_step(config, recipe, args.batch_size, args.precision, s["num_views"],
                                            s["prefix_len"], s["fast_len"], compile=args.compile)
        ms = median_ms(step, args.steps)
        if args.compile:
            result.setdefault("compile_s", {})[recipe] = round(compile_s, 1)
        result["train_step_ms"][recipe] = round(ms, 1)
        result["gflop"][recipe] = float(f"{flops / 1e9:.3g}")
        result["gflops"][recipe] = round(flops / ms / 1e6, 1)
    if {"pi0", "ki"} <= set(result["train_step_ms"]):
        result["ki_over_pi0"] = round(result["train_step_ms"]["ki"] / result["train_step_ms"]["pi0"] - 1.0, 3)
    result["gemm_peak_gflops"] = peaks
    result["machine"] = machine() | {"loadavg_before": load_before}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
