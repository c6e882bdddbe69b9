"""Does the policy read the instruction? The first chunk of recorded episodes (the arm at home: the
only moment the words alone decide where it goes), predicted with the episode's own instruction and
with the canonical instruction of the task that swaps the cube's colour or the arm; errors of the
instructed arm's joints against the demonstration (rad, mean absolute over the chunk).

    python benchmarks/instruction_swap.py --model DIR --data data/pick4/pick4_left [--every 16]

A policy that ignores a word scores the same with it swapped; one that reads it is far off the
demonstration with the swapped word (it goes for the other cube or moves the other arm)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from overfit import arm_errors  # benchmarks/overfit.py

from ki_vla_ros.control.eval_bag import evaluate_bag
from ki_vla_ros.embodiment import load_embodiment
from ki_vla_ros.runtime import Policy
from ki_vla_ros.sim.tasks import TASKS


def swapped(task: str, what: str) -> str:
    t = TASKS[task]
    cube, arm = (t.other_cube, t.arm) if what == "colour" else (t.cube, t.other_arm)
    return next(o.instruction for o in TASKS.values() if (o.kind, o.cube, o.arm) == (t.kind, cube, arm))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="sim dataset folders (episodes.jsonl, bags/)")
    ap.add_argument("--every", type=int, default=1, help="every k-th episode of each folder [1: all]")
    ap.add_argument("--num-steps", type=int, default=0, help="Euler steps [0: the model folder's]")
    args = ap.parse_args()
    emb = load_embodiment("aloha_bimanual")
    policy = Policy.load(args.model, num_steps=args.num_steps) if args.num_steps else Policy.load(args.model)
    errs = {"own": [], "colour_swapped": [], "arm_swapped": []}
    for folder in map(Path, args.data):
        rows = [json.loads(line) for line in (folder / "episodes.jsonl").read_text().splitlines()]
        for r in rows[:: args.every]:
            arm, bag = TASKS[r["task"]].arm, folder / r["bag"]
            for key, said in (("own", r["instruction"]), ("colour_swapped", swapped(r["task"], "colour")),
                              ("arm_swapped", swapped(r["task"], "arm"))):
                rep = evaluate_bag(bag, policy, emb, said, max_samples=1, execute_steps=policy.action_horizon)
                errs[key].append(arm_errors(rep, arm)["arm_mae_rad"])
    own = np.array(errs["own"])
    out = {"model": args.model, "episodes": len(own),
           **{f"{k}_first_chunk_arm_mae_rad": round(float(np.mean(v)), 4) for k, v in errs.items()},
           **{f"own_closer_than_{k}": int(np.sum(own < np.array(v))) for k, v in errs.items() if k != "own"}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
