"""Can the vision tower find the cubes, and does its position embedding's start matter? (issue 12)

Runs the vision pre-training of `ki_vla_ros.train.vision_pretrain` (the `small` tower alone, from
scratch, regressing the red and blue cube's table (x, y) from one 112 px `cam_high` view through a
position-blind attention-pooling head) once per initialisation of the tower's position embedding:

* ``normal`` — N(0, 0.02²), learned (the tower's start before this benchmark);
* ``sincos`` — the 2-D sine-cosine code (`vision.sincos_2d`), then learned (the tower's start since).

    MUJOCO_GL=egl python benchmarks/localize_probe.py --out outputs/localize --train-scenes 3000 \\
        --heldout-scenes 300 --steps 1500 --variants normal sincos

Prints and writes OUT/localize.json: the held-out error (cm, cubes visible in the view) over
training per variant, beside always answering the mean position.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.train.vision_pretrain import mean_position_baseline_cm, pretrain, splits


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-scenes", type=int, default=3000)
    p.add_argument("--heldout-scenes", type=int, default=300)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="render processes")
    p.add_argument("--variants", nargs="+", choices=["normal", "sincos"], default=["normal", "sincos"])
    args = p.parse_args(argv)
    cfg = ModelConfig.preset("small")
    train, held = splits(args.out, cfg.image_size, args.train_scenes, args.heldout_scenes, args.seed, args.workers)
    torch.set_num_threads(args.threads)
    results = {"args": {k: str(v) for k, v in vars(args).items()},
               "mean_position_baseline_cm": mean_position_baseline_cm(train, held), "variants": []}
    print("reference, always the mean position:", results["mean_position_baseline_cm"], flush=True)
    for v in args.variants:
        _, curve = pretrain(cfg, train, held, args.steps, args.batch_size, args.lr, args.seed, v, args.eval_every)
        results["variants"].append({"variant": v, "curve": curve, "final": curve[-1]})
        (args.out / "localize.json").write_text(json.dumps(results, indent=1))
    print(json.dumps([{"variant": r["variant"], **r["final"]} for r in results["variants"]], indent=1))


if __name__ == "__main__":
    main()
