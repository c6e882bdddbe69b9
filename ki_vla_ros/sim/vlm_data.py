"""Vision-language co-training records about the two-cube scenes, computed from sim state.

Each record is a JSONL line ``{"image": <png path relative to the JSONL's folder>, "prompt": ...,
"answer": ...}`` (plus ``"camera"``, ``"seed"`` and ``"kind"`` for bookkeeping). "Left" / "right"
are the robot's sides (the left arm is at negative x), which is also image left / right in
``cam_high``. Coarse positions: cube centre x < -0.04 m "left", x > 0.04 m "right", else
"centre"; a cube whose centre is more than 3 cm above its resting height counts as lifted.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio

from ki_vla_ros.sim.aloha import CUBE_HALF, AlohaSim
from ki_vla_ros.sim.tasks import COLORS

X_CENTRE = 0.04  # |x| below this -> "centre"
HELD_Z = CUBE_HALF + 0.03  # cube centre above this -> lifted


def coarse_x(x: float) -> str:
    return "left" if x < -X_CENTRE else "right" if x > X_CENTRE else "centre"


def scene_facts(sim: AlohaSim) -> dict:
    """Ground-truth facts about the current scene from sim state."""
    cubes = {c: sim.cube_position(c) for c in COLORS}
    on_table = [c for c in COLORS if cubes[c][2] < HELD_Z]
    lifted = [c for c in COLORS if cubes[c][2] >= HELD_Z]
    by_x = sorted(COLORS, key=lambda c: cubes[c][0])
    return {
        "cubes": {c: cubes[c].round(4).tolist() for c in COLORS},
        "leftmost": by_x[0],
        "rightmost": by_x[-1],
        "on_table": on_table,
        "lifted": lifted,
        "coarse_x": {c: coarse_x(float(cubes[c][0])) for c in COLORS},
    }


def qa_pairs(facts: dict) -> list[tuple[str, str, str]]:
    """(kind, prompt, answer) triples that are true for ``facts``."""
    n = len(facts["on_table"])
    words = {0: "zero", 1: "one", 2: "two"}
    out = [
        ("count", "How many cubes are on the table?", words[n]),
        ("colour_left", "Which colour is the cube on the left?", facts["leftmost"]),
        ("colour_right", "Which colour is the cube on the right?", facts["rightmost"]),
    ]
    for c in COLORS:
        out.append(("position", f"Where is the {c} cube?", _where(facts, c)))
        out.append(("closer_arm", f"Which arm is closer to the {c} cube?",
                    "left" if facts["cubes"][c][0] < 0 else "right"))
    out.append(("caption", "Describe the scene.", caption(facts)))
    return out


def _where(facts: dict, c: str) -> str:
    if c in facts["lifted"]:
        return "in the air, held by a gripper"
    side = facts["coarse_x"][c]
    return "in the centre of the table" if side == "centre" else f"on the {side} side of the table"


def caption(facts: dict) -> str:
    if len(facts["on_table"]) == 2:
        left, right = facts["leftmost"], facts["rightmost"]
        return f"a {left} cube and a {right} cube on a table, between two robot arms"
    parts = [f"a {c} cube on the table" for c in facts["on_table"]]
    parts += [f"a robot arm holding a {c} cube in the air" for c in facts["lifted"]]
    return " and ".join(parts)


def generate_vlm_records(out_dir, seeds, image_size: int = 224, cameras=("cam_high",),
                         jsonl_name: str = "vlm.jsonl", with_lifted: bool = True) -> Path:
    """Render scenes for ``seeds`` and write PNGs + a JSONL of question/answer/caption records.

    With ``with_lifted`` every other seed is rendered after the expert lifted a cube (so counts
    and captions are not always "two on the table"). Returns the JSONL path.
    """
    from ki_vla_ros.sim.expert import expert_actions
    from ki_vla_ros.sim.tasks import TASK_NAMES

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / jsonl_name
    with open(jsonl, "w") as f:
        for i, seed in enumerate(seeds):
            sim = AlohaSim(TASK_NAMES[i % 4], seed=int(seed), image_size=image_size, cameras=())
            try:
                if with_lifted and i % 2 == 1:
                    for act in expert_actions(sim, sim.task):
                        sim.step(act, render=False)
                facts = scene_facts(sim)
                for cam in cameras:
                    rel = f"images/scene_{int(seed):05d}_{i % 2}_{cam}.png"
                    iio.imwrite(out_dir / rel, sim.render(cam))
                    for kind, prompt, answer in qa_pairs(facts):
                        rec = {"image": rel, "prompt": prompt, "answer": answer, "camera": cam,
                               "seed": int(seed), "kind": kind}
                        f.write(json.dumps(rec) + "\n")
            finally:
                sim.close()
    return jsonl


def load_records(jsonl) -> list[dict]:
    with open(jsonl) as f:
        return [json.loads(line) for line in f if line.strip()]
