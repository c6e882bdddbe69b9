"""Does a policy read its instruction? The first chunk of recorded episodes (the arm at home: the
only moment the words alone decide where it goes), predicted with the episode's own instruction and
with the canonical instruction of the task that swaps the cube's colour or the arm; errors of the
instructed arm's joints against the demonstration (rad, mean absolute over the chunk).

A policy that ignores a word scores the same with it swapped; one that reads it is far off the
demonstration with the swapped word (it goes for the other cube or moves the other arm). Every
variant of an episode is predicted from the same observation with the same noise, so the
difference is the words' alone. Offline and cheap (three first chunks per episode), it reads
language on many more scenes than a closed-loop evaluation can afford.
(`benchmarks/instruction_swap.py`; the recipe study's `language` measure.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ki_vla_ros.control.eval_bag import evaluate_bag
from ki_vla_ros.embodiment import load_embodiment
from ki_vla_ros.sim.tasks import TASKS

VARIANTS = ("own", "colour_swapped", "arm_swapped")


def swapped(task: str, what: str) -> str:
    """The canonical instruction of the task like `task` with the other cube ("colour") or arm ("arm")."""
    t = TASKS[task]
    cube, arm = (t.other_cube, t.arm) if what == "colour" else (t.cube, t.other_arm)
    return next(o.instruction for o in TASKS.values() if (o.kind, o.cube, o.arm) == (t.kind, cube, arm))


def arm_errors(report: dict, arm: str) -> dict:
    """An `evaluate_bag` report -> mean absolute error (rad) of `arm`'s joints, of its gripper, and of
    the other arm's joints."""
    per = report["mae_per_action"]
    other = "right" if arm == "left" else "left"
    joints = [k for k in per if k.startswith(f"{arm}_") and not k.endswith("gripper")]
    idle = [k for k in per if k.startswith(f"{other}_") and not k.endswith("gripper")]
    return {"arm_mae_rad": float(np.mean([per[k] for k in joints])), "gripper_mae": per[f"{arm}_gripper"],
            "idle_arm_mae_rad": float(np.mean([per[k] for k in idle]))}


def instruction_swap(policy, folders: list[str | Path], every: int = 1, embodiment: str = "aloha_bimanual") -> dict:
    """Every `every`-th episode of each sim dataset folder (episodes.jsonl, bags/) -> {"episodes",
    "<variant>_first_chunk_arm_mae_rad" (mean), "own_closer_than_<variant>" (episodes whose own
    instruction put the arm nearer the demonstration than the swapped one did)}."""
    emb = load_embodiment(embodiment)
    errs: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for folder in map(Path, folders):
        rows = [json.loads(line) for line in (folder / "episodes.jsonl").read_text().splitlines()]
        for r in rows[::every]:
            arm, bag = TASKS[r["task"]].arm, folder / r["bag"]
            said = (r["instruction"], swapped(r["task"], "colour"), swapped(r["task"], "arm"))
            for key, words in zip(VARIANTS, said, strict=True):
                rep = evaluate_bag(bag, policy, emb, words, max_samples=1, execute_steps=policy.action_horizon)
                errs[key].append(arm_errors(rep, arm)["arm_mae_rad"])
    if not errs["own"]:
        raise ValueError(f"no episodes in {[str(f) for f in folders]} (every {every})")
    own = np.array(errs["own"])
    return {"episodes": len(own),
            **{f"{k}_first_chunk_arm_mae_rad": float(np.mean(v)) for k, v in errs.items()},
            **{f"own_closer_than_{k}": int(np.sum(own < np.array(v))) for k, v in errs.items() if k != "own"}}
