"""Fit first (issue 12, item 1): overfit a preset on a few episodes of one task under variants of
the training settings, and measure what a grasp needs, in robot units, through the deployed path
(checkpoint -> model folder -> `Policy` -> `eval_bag` on the training bags themselves):

* ``arm_mae_rad`` — mean |action - expert command| over the working arm's six joints (rad), every
  action of the chunks predicted every ``--stride`` s along the episodes;
* ``first_chunk_arm_mae_rad`` — the same for the first chunk only (t = 0), the one that starts the
  reach; ``gripper_mae`` (0 closed .. 1 open) and ``idle_arm_mae_rad`` beside them.

    MUJOCO_GL=egl python -m ki_vla_ros.sim.generate --out data/overfit --episodes-per-task 2 --seed 1000 \\
        --image-size 112 --tasks pick_red_left --vlm-scenes 0 --phrasings canonical
    python benchmarks/overfit.py --data data/overfit --out outputs/overfit --steps 300 --variants base lr1e-3
    python benchmarks/overfit.py ... --variants delta_k4 delta_k4_sample --flow-steps 1 2 5 10
    python benchmarks/overfit.py --data data/overfit8 --init outputs/of3000_k4/delta_k4/model ...  # warm start
    python benchmarks/overfit.py ... --init-vision models/vision_loc   # a pre-trained vision tower

Variants (`VARIANTS`; all start from `base`, the default model's training settings at this
scale: lr 5e-4, warm-up 100, cosine to 0.1 x lr, EMA 0.999, Beta(1.5, 1) flow times, the dataset's
default min_quantile_range). ``time_uniform`` / ``time_low`` replace `KIVLA.sample_time` in this
process only (a diagnostic, not a training option). A killed variant resumes from its last checkpoint
(every 250 steps); a finished one (summary.json) is measured again, or trained on when `--steps` asks
for more. Prints and writes OUT/overfit.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.configio import from_dict
from ki_vla_ros.control.eval_bag import evaluate_bag
from ki_vla_ros.embodiment import load_embodiment
from ki_vla_ros.model import KIVLA
from ki_vla_ros.model.recipes import RECIPES
from ki_vla_ros.runtime.fast_policy import FastTokenPolicy
from ki_vla_ros.runtime.policy import Policy
from ki_vla_ros.sim.instruction_swap import arm_errors
from ki_vla_ros.sim.tasks import TASKS
from ki_vla_ros.tokenize.fast import FastDecodeError
from ki_vla_ros.train.checkpoint import list_checkpoints
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.evaluate import read_csv
from ki_vla_ros.train.to_model_dir import checkpoint_to_model_dir
from ki_vla_ros.train.trainer import train

ALOHA_ARM_JOINTS = [f"{side}_{j}" for side in ("left", "right") for j in
                    ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")]
VARIANTS: dict[str, dict] = {
    "base": {},
    "lr1e-3": {"optim": {"lr": 1e-3}},
    "lr2e-4": {"optim": {"lr": 2e-4}},
    "warmup20": {"optim": {"warmup_steps": 20}},
    "constant_lr": {"optim": {"min_lr_ratio": 1.0}},
    "no_ema": {"ema_decay": 0.0},
    "no_min_range": {"dataset": {"min_quantile_range": 0.0}},  # plain q01/q99: an idle arm's state swings to ±10
    "time_uniform": {"time": "uniform"},  # flow time t ~ U(0.001, 1)
    "time_low": {"time": "low"},  # t ~ Beta(1, 1.5): more weight near the data end (t -> 0)
    "time_high": {"time": "high"},  # t ~ Beta(3, 1): more weight near the noise end (t -> 1)
    "seed1": {"seed": 1},  # base with another seed: the run-to-run noise of these numbers
    "one_episode": {"dataset": {"max_episodes": 1}},  # the first episode only: no scene to tell apart
    # arm joints as offsets from the observed state (openpi's ALOHA rule), grippers absolute
    "delta": {"dataset": {"delta_actions": ALOHA_ARM_JOINTS}},
    "delta_one_episode": {"dataset": {"delta_actions": ALOHA_ARM_JOINTS, "max_episodes": 1}},
    # delta with 4 / 8 (noise, flow time) draws per example sharing one backbone pass (TrainConfig.flow_samples)
    "delta_k4": {"dataset": {"delta_actions": ALOHA_ARM_JOINTS}, "flow_samples": 4},
    "delta_k8": {"dataset": {"delta_actions": ALOHA_ARM_JOINTS}, "flow_samples": 8},
    "delta_seed1": {"dataset": {"delta_actions": ALOHA_ARM_JOINTS}, "seed": 1},
    "delta_k4_seed1": {"dataset": {"delta_actions": ALOHA_ARM_JOINTS}, "flow_samples": 4, "seed": 1},
    # the `ki` recipe: the backbone also learns FAST tokens (cross-entropy), the expert reads it through
    # the stop-gradient; both heads are measured (the expert, and FAST decoding as a policy)
    "ki_delta_k4": {"recipe": "ki", "dataset": {"delta_actions": ALOHA_ARM_JOINTS}, "flow_samples": 4},
    # delta_k4 with openpi's geometric image augmentation on the scene camera (data/augment.py; the sim's
    # lighting never changes, so no colour jitter): random 95 % crops and ±5° rotations of cam_high
    "delta_k4_aug": {"dataset": {"delta_actions": ALOHA_ARM_JOINTS}, "flow_samples": 4,
                     "augment": {"crop_scale": 0.95, "rotate_deg": 5.0}},
    # delta_k4 with the expert's head predicting the clean chunk instead of the velocity (ModelConfig.flow_output)
    "delta_k4_sample": {"dataset": {"delta_actions": ALOHA_ARM_JOINTS}, "flow_samples": 4,
                        "model": {"overrides": {"flow_output": "sample"}}},
}
TIME_SAMPLERS = {
    "uniform": lambda b, device: torch.rand(b, device=device) * 0.999 + 0.001,
    "low": lambda b, device: _beta(1.0, 1.5, b, device),
    "high": lambda b, device: _beta(3.0, 1.0, b, device),
}


def _beta(a: float, b_: float, n: int, device) -> torch.Tensor:
    return torch.distributions.Beta(torch.tensor(a), torch.tensor(b_)).sample((n,)).to(device) * 0.999 + 0.001


def run_config(args, name: str) -> tuple[dict, str]:
    v = copy.deepcopy(VARIANTS[name])
    dataset = {"name": "sim", "type": "rosbag", "path": str(Path(args.data) / "bags"), "embodiment": "aloha_bimanual",
               "action_source": "commanded", "val_episodes": 0, **v.pop("dataset", {})}
    cfg = {"run_dir": str(Path(args.out) / name), "datasets": [dataset],
           "model": {"preset": args.preset, **({"init": args.init} if args.init else {}),
                     **({"init_vision": args.init_vision} if args.init_vision else {}), **v.pop("model", {})},
           "recipe": v.pop("recipe", args.recipe), "seed": 0, "steps": args.steps, "batch_size": args.batch_size,
           "optim": {"lr": 5e-4, "warmup_steps": 100, "min_lr_ratio": 0.1, **v.pop("optim", {})},
           "ema_decay": 0.999, "precision": args.precision, "threads": args.threads, "log_every": 10,
           "eval_every": 0, "checkpoint_every": min(args.steps, 250), "keep_checkpoints": 1, "progress": False,
           "cache_dir": str(Path(args.out) / "cache")}
    time = v.pop("time", "")
    cfg.update(v)
    return cfg, time


def measure(model_dir: Path, data: Path, stride: float, episodes: int = 0, policy_cls=Policy,
            num_steps: int | None = None) -> dict:
    """Errors on the first ``episodes`` episodes of episodes.jsonl (0: all), the ones trained on;
    ``num_steps``: the flow policy's Euler steps (None: the model folder's)."""
    emb = load_embodiment("aloha_bimanual")
    policy = policy_cls.load(model_dir, num_steps=num_steps) if num_steps else policy_cls.load(model_dir)
    rows = [json.loads(line) for line in (data / "episodes.jsonl").read_text().splitlines()]
    rows = rows[:episodes] if episodes else rows
    h = policy.action_horizon
    out = {"all": [], "first": []}
    for r in rows:
        arm = TASKS[r["task"]].arm
        bag, said = data / r["bag"], r["instruction"]
        out["all"].append(arm_errors(evaluate_bag(bag, policy, emb, said, stride_s=stride, execute_steps=h), arm))
        out["first"].append(arm_errors(evaluate_bag(bag, policy, emb, said, max_samples=1, execute_steps=h), arm))
    res = {k: round(float(np.mean([e[k] for e in out["all"]])), 4) for k in out["all"][0]}
    res["first_chunk_arm_mae_rad"] = round(float(np.mean([e["arm_mae_rad"] for e in out["first"]])), 4)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="sim dataset folder (episodes.jsonl, bags/)")
    ap.add_argument("--out", default="outputs/overfit")
    ap.add_argument("--variants", nargs="+", default=["base"], choices=list(VARIANTS))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--recipe", default="pi0")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--stride", type=float, default=0.2, help="seconds between compared chunks [0.2]")
    ap.add_argument("--measure-episodes", type=int, default=0,
                    help="measure on the first N training episodes only (0: all the run trained on)")
    ap.add_argument("--init", default="", help="start every variant from this model folder (model.init)")
    ap.add_argument("--heldout-data", default="",
                    help="also measure on every episode of this sim dataset folder (scenes not trained on)")
    ap.add_argument("--init-vision", default="",
                    help="then the vision tower from a vision pre-training run (model.init_vision)")
    ap.add_argument("--flow-steps", type=int, nargs="*", default=[],
                    help="also measure the flow policy with these numbers of Euler steps (by_flow_steps)")
    args = ap.parse_args()
    out = Path(args.out)
    previous = out / "overfit.json"  # variants measured by earlier invocations stay in the table
    results = json.loads(previous.read_text())["results"] if previous.is_file() else {}
    original = KIVLA.sample_time
    for name in args.variants:
        cfg_dict, time = run_config(args, name)
        cfg = from_dict(TrainConfig, cfg_dict)
        run_dir = Path(cfg.run_dir)
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
        trained = summary.get("steps", 0) < cfg.steps  # new, killed, or --steps above the finished run's
        if trained:  # resumes from the last checkpoint; beyond a finished run the cosine restarts
            KIVLA.sample_time = (lambda self, b, device, f=TIME_SAMPLERS[time]: f(b, device)) if time else original
            try:
                summary = train(cfg, resume=bool(list_checkpoints(run_dir)))
            finally:
                KIVLA.sample_time = original
        model_dir = run_dir / "model"
        if trained or not (model_dir / "model.yaml").is_file():
            checkpoint_to_model_dir(run_dir, model_dir)
        log = read_csv(run_dir / "train_log.csv")
        n_measured = args.measure_episodes or cfg.datasets[0].max_episodes
        results[name] = {"steps": summary["steps"], "seconds": summary["seconds"],
                         "flow_loss_last50_steps": round(float(np.mean(log["flow_loss"][-5:])), 4),
                         **measure(model_dir, Path(args.data), args.stride, n_measured)}
        if args.flow_steps:  # the sampler's share of the error: the same weights, other step counts
            results[name]["by_flow_steps"] = {
                str(n): measure(model_dir, Path(args.data), args.stride, n_measured, num_steps=n)
                for n in args.flow_steps}
        if args.heldout_data:  # scenes never trained on: what transfers (first --flow-steps count, else the folder's)
            results[name]["heldout"] = measure(model_dir, Path(args.heldout_data), args.stride, 0,
                                               num_steps=args.flow_steps[0] if args.flow_steps else None)
        if RECIPES[cfg.recipe].use_fast:  # the backbone's own head: FAST tokens decoded greedily
            try:
                results[name]["fast_decoding"] = measure(model_dir, Path(args.data), args.stride,
                                                         n_measured, FastTokenPolicy)
            except FastDecodeError as exc:  # an undertrained backbone may emit tokens that are no chunk
                results[name]["fast_decoding"] = {"error": str(exc)}
        print(name, json.dumps(results[name]), flush=True)
    previous.write_text(json.dumps({"settings": vars(args), "results": results}, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
