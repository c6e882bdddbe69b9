"""fp32 vs bf16-autocast training curves: the same short `ki-vla train` run per precision and seed,
on generated sim data; one plot and the numbers (docs/training.md, "Precision").

    MUJOCO_GL=egl python -m ki_vla_ros.sim.generate --out data/sim_small --episodes-per-task 4 \\
        --seed 1000 --image-size 112 --tasks pick_red_left pick_red_right pick_blue_left pick_blue_right --vlm-scenes 0
    python benchmarks/precision_curves.py --data data/sim_small --out outputs/precision_curves

Runs with the same seed share initial weights, batches, noise and flow times, so they differ
only by precision; the spread between seeds of one precision is the run-to-run noise. A finished
run (summary.json) is reused, an interrupted one resumed: the script can be re-run piecewise.
Writes OUT/precision_curves.png and OUT/precision_curves.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ki_vla_ros.configio import from_dict
from ki_vla_ros.train.checkpoint import list_checkpoints
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.evaluate import read_csv
from ki_vla_ros.train.trainer import train


def run_config(args, precision: str, seed: int) -> dict:
    return {
        "run_dir": str(Path(args.out) / f"{precision}_seed{seed}"),
        "datasets": [{"name": "sim", "type": "rosbag", "path": str(Path(args.data) / "bags"),
                      "embodiment": "aloha_bimanual", "action_source": "commanded", "val_episodes": args.val_episodes}],
        "model": {"preset": args.preset}, "recipe": args.recipe, "seed": seed, "steps": args.steps,
        "batch_size": args.batch_size, "precision": precision, "threads": args.threads,
        "optim": {"lr": args.lr, "warmup_steps": args.warmup},
        "log_every": 10, "eval_every": args.eval_every, "eval_samples": args.eval_samples,
        "checkpoint_every": args.eval_every, "keep_checkpoints": 1, "progress": False,
        "cache_dir": str(Path(args.out) / "cache"),
    }


def tail_mean(values: np.ndarray, frac: float = 0.2) -> float:
    n = max(1, int(len(values) * frac))
    return float(np.mean(values[-n:]))


def plot(runs: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors, styles = {"fp32": "tab:blue", "bf16": "tab:orange"}, ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for (precision, seed), r in runs.items():
        kw = {"color": colors[precision], "linestyle": styles[seed % len(styles)], "label": f"{precision} seed {seed}"}
        axes[0].plot(r["train"]["step"], r["train"]["loss"], **kw)
        axes[1].plot(r["eval"]["step"], r["eval"]["val_loss"], marker="o", ms=3, **kw)
        axes[2].plot(r["eval"]["step"], r["eval"]["action_mse"], marker="o", ms=3, **kw)
    titles = ("training loss (mean per 10 steps)", "held-out loss", "held-out action MSE (normalised)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "precision_curves.png"
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a sim dataset folder (python -m ki_vla_ros.sim.generate)")
    ap.add_argument("--out", default="outputs/precision_curves")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--recipe", default="ki")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-samples", type=int, default=64)
    ap.add_argument("--val-episodes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch default)")
    args = ap.parse_args()
    out = Path(args.out)
    runs = {}
    for seed in args.seeds:
        for precision in args.precisions:
            cfg = from_dict(TrainConfig, run_config(args, precision, seed))
            run_dir = Path(cfg.run_dir)
            if (run_dir / "summary.json").is_file():
                summary = json.loads((run_dir / "summary.json").read_text())
            else:
                summary = train(cfg, resume=bool(list_checkpoints(run_dir)))
            runs[precision, seed] = {"train": read_csv(run_dir / "train_log.csv"),
                                     "eval": read_csv(run_dir / "eval.csv"), "summary": summary}
    table = {}
    for (precision, seed), r in runs.items():
        table[f"{precision}_seed{seed}"] = {
            "precision": r["summary"].get("precision", precision), "seed": seed,
            "train_loss_last20pct": round(tail_mean(r["train"]["loss"]), 4),
            "val_loss": round(float(r["eval"]["val_loss"][-1]), 4),
            "action_mse": round(float(r["eval"]["action_mse"][-1]), 4),
            "steps_per_s": r["summary"].get("steps_per_s")}
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "data")}, "runs": table}
    for key in ("train_loss_last20pct", "val_loss", "action_mse"):
        by = {p: [v[key] for v in table.values() if v["precision"] == p] for p in args.precisions}
        result[key] = {"mean": {p: round(float(np.mean(v)), 4) for p, v in by.items()},
                       "seed_range": {p: round(float(np.ptp(v)), 4) for p, v in by.items()}}
    (out / "precision_curves.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"plot: {plot(runs, out)}")


if __name__ == "__main__":
    main()
