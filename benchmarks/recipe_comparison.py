"""Recipe comparison at toy scale: pi0, joint and ki, each with and without VLM co-training.

Every recipe gets the same model (preset + overrides), data, seed, batch size, optimiser and
number of steps; nothing is tuned per recipe. For each: train, read the held-out curves, export,
and run closed-loop episodes in the simulator (`ki-vla eval`, scene seeds not in the training
data). Prints one JSON object and writes a Markdown table.

    python benchmarks/recipe_comparison.py --base-config config/train/aloha_sim_ki.yaml \\
        --preset tiny --steps 1500 --episodes 1 --out runs/compare

"Steps to reach a fixed loss" = the first evaluation step at which the held-out action MSE
(sampled chunk vs recorded chunk, normalised units) is at or below --mse-threshold, fixed before
the runs; "—" if never reached.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

RECIPES = ("pi0", "pi0_vlm", "joint_no_vlm", "joint", "ki_no_vlm", "ki")
TOY_OVERRIDES = {"action_horizon": 50, "image_size": 64, "patch_size": 16, "max_target_tokens": 160}


def run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")


def read_eval(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-config", default="config/train/aloha_sim_ki.yaml")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--episodes", type=int, default=1, help="closed-loop episodes per task and recipe (0: none)")
    ap.add_argument("--eval-seed", type=int, default=900000)
    ap.add_argument("--tasks", default="pick_red_left,pick_red_right,pick_blue_left,pick_blue_right",
                    help="closed-loop tasks ('all' for the hand-overs too)")
    ap.add_argument("--mse-threshold", type=float, default=0.1)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--out", default="runs/compare")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.base_config).read_text())
    results = {}
    for recipe in args.recipes.split(","):
        run_dir = out / recipe
        cfg = dict(base, recipe=recipe, steps=args.steps, run_dir=str(run_dir), eval_every=args.eval_every,
                   checkpoint_every=args.steps, keep_checkpoints=1, ema_decay=0.0, progress=False,
                   model={"preset": args.preset, "overrides": TOY_OVERRIDES},
                   optim=dict(base["optim"], warmup_steps=min(base["optim"]["warmup_steps"], args.steps // 10)))
        cfg_path = out / f"{recipe}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        t0 = time.perf_counter()
        if not (run_dir / "summary.json").is_file():
            run([sys.executable, "-m", "ki_vla_ros.cli", "train", "--config", str(cfg_path)],
                out / f"{recipe}.train.log")
        train_s = time.perf_counter() - t0
        curve = read_eval(run_dir / "eval.csv")
        reached = next((int(r["step"]) for r in curve if r.get("action_mse", 1e9) <= args.mse_threshold), None)
        entry = {"train_s": round(train_s, 1), "steps_to_mse": reached, "final": curve[-1] if curve else {}}
        if args.episodes:
            model_dir = run_dir / "model"
            if not model_dir.is_dir():
                run([sys.executable, "-m", "ki_vla_ros.cli", "export", "--checkpoint", str(run_dir), "--out",
                     str(model_dir), "--no-onnx"], out / f"{recipe}.export.log")
            eval_dir = run_dir / "closed_loop"
            run([sys.executable, "-m", "ki_vla_ros.cli", "eval", "--model", str(model_dir), "--episodes",
                 str(args.episodes), "--tasks", args.tasks, "--seed", str(args.eval_seed), "--out", str(eval_dir)],
                out / f"{recipe}.eval.log")
            closed = json.loads((eval_dir / "results.json").read_text())
            entry["closed_loop"] = closed["overall"]
        results[recipe] = entry
        print(json.dumps({recipe: entry}), flush=True)

    lines = [
        f"| recipe | held-out action MSE | FAST token acc | VLM answer acc | steps to MSE ≤ {args.mse_threshold} "
        "| closed-loop success | instruction followed |",
        "|---|---|---|---|---|---|---|",
    ]
    def num(d, key, fmt):  # "—" for metrics a recipe does not have (NaN) or did not measure
        v = d.get(key)
        return "—" if v is None or v != v else format(v, fmt)

    for recipe, e in results.items():
        f, c = e["final"], e.get("closed_loop", {})
        lines.append(
            f"| `{recipe}` | {num(f, 'action_mse', '.3f')} | {num(f, 'fast_token_acc', '.2f')} "
            f"| {num(f, 'vlm_answer_acc', '.2f')} | {num(e, 'steps_to_mse', 'd')} "
            f"| {num(c, 'success_rate', '.0%')} | {num(c, 'instruction_following_rate', '.0%')} |"
        )
    table = "\n".join(lines)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
