"""Training-step time of the `tiny` and `small` presets on CPU, recipes `pi0` and `ki`, and the
ki/pi0 overhead (the paper reports ≈20% for the joint objective). Also the `small` inference time
(3 camera views + 10 Euler steps). Prints one JSON object.

    .venv/bin/python benchmarks/train_step.py [--steps 10] [--threads N] [--precision fp32|bf16] [--batch-size B]

A step = compute_loss + backward + AdamW step on a synthetic batch (`model.synthetic`): `pi0`
batches hold only prefix tokens (flow loss); `ki` batches add FAST targets (≈1/12 of H·D tokens,
as measured for FAST on smooth chunks) and, for half the examples, a short text answer.
`--precision bf16`: the forward under bf16 autocast, as the trainer's `precision: bf16`
(train/precision.py); `--batch-size` overrides the batch size of both presets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ki_vla_ros.model import KIVLA, RECIPES, ModelConfig
from ki_vla_ros.model.masks import PREFIX
from ki_vla_ros.model.synthetic import open_gates, synthetic_batch
from ki_vla_ros.train.precision import autocast

SETTINGS = {  # preset -> batch size, camera views, prefix text tokens, FAST tokens for ki
    "tiny": dict(batch_size=8, num_views=2, prefix_len=16, fast_len=8),
    "small": dict(batch_size=8, num_views=3, prefix_len=32, fast_len=40),
}


def timed(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def train_step_ms(preset: str, recipe: str, steps: int, precision: str = "fp32") -> float:
    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset(preset))
    params = RECIPES[recipe].configure(model)
    opt = torch.optim.AdamW(params, lr=1e-4)
    s = SETTINGS[preset]
    if recipe == "pi0":
        batch = synthetic_batch(model.config, s["batch_size"], s["num_views"], s["prefix_len"], text_len=0,
                                fast_len=0, mix="action")
    else:
        batch = synthetic_batch(model.config, s["batch_size"], s["num_views"], s["prefix_len"], text_len=6,
                                fast_len=s["fast_len"], mix="both")
        batch["action_mask"][:] = True
    del batch["time"]  # sample flow time as in training

    def step():
        with autocast(precision, torch.device("cpu")):
            out = model.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    return timed(step, steps)


def inference_ms(preset: str, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset(preset)).eval()
    open_gates(model)
    b = synthetic_batch(model.config, batch_size=1, num_views=3, prefix_len=model.config.max_prefix_tokens,
                        text_len=0, fast_len=0, mix="action")
    b["image_mask"][:] = True
    mask = b["token_kind"] == PREFIX
    args = (b["images"], b["image_mask"], b["tokens"], mask, b["state"])
    with torch.inference_mode():
        prefix = timed(lambda: model.prefix_cache(*args), steps)
        k, v, pm = model.prefix_cache(*args)
        t = torch.ones(1)
        step = timed(lambda: model.expert_velocity(k, v, pm, b["noise"], t), steps)
        total = timed(lambda: model.sample_actions(*args, b["noise"], num_steps=10), steps)
    return {"prefix_ms": round(prefix, 1), "expert_step_ms": round(step, 2), "total_10_steps_ms": round(total, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="1 by default: stable numbers on a shared CPU")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="training steps only [fp32]")
    ap.add_argument("--batch-size", type=int, default=0, help="training batch size (0: tiny 8, small 8)")
    args = ap.parse_args()
    if args.batch_size:
        for s in SETTINGS.values():
            s["batch_size"] = args.batch_size
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"threads": torch.get_num_threads(), "precision": args.precision, "train_step_ms": {}, "ki_over_pi0": {}}
    for preset in ("tiny", "small"):
        ms = {r: round(train_step_ms(preset, r, args.steps, args.precision), 1) for r in ("pi0", "ki")}
        result["train_step_ms"][preset] = ms | {"batch": SETTINGS[preset]}
        result["ki_over_pi0"][preset] = round(ms["ki"] / ms["pi0"] - 1.0, 3)
    result["inference_small"] = inference_ms("small", args.steps)
    result["params_small"] = sum(p.numel() for p in KIVLA(ModelConfig.preset("small")).parameters())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
