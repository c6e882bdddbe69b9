"""`ki-vla train`: train a model from a YAML config (see docs/training.md).

    ki-vla train --config config/train/aloha_sim_ki.yaml [--resume] [--run-dir DIR] [--steps N]
    torchrun --nproc_per_node 2 -m ki_vla_ros.train.cli --config ...     (DDP)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ki_vla_ros.configio import load_config


def train_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ki-vla train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training config YAML (config/train/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue exactly from the run's latest checkpoint")
    parser.add_argument("--run-dir", default=None, help="override run_dir")
    parser.add_argument("--steps", type=int, default=None, help="override steps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from ki_vla_ros.train.config import TrainConfig
    from ki_vla_ros.train.trainer import train

    cfg = load_config(TrainConfig, args.config)
    changes = {}
    if args.run_dir:
        changes["run_dir"] = args.run_dir
    if args.steps:
        changes["steps"] = args.steps
    if args.no_progress:
        changes["progress"] = False
    if changes:
        cfg = dataclasses.replace(cfg, **changes)
        cfg.validate()
    train(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
