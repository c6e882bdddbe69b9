"""Generate the language-conditioned demonstration dataset: rosbags + VLM co-training JSONL.

``python -m ki_vla_ros.sim.generate --out DIR --episodes-per-task 10 --seed 0 --image-size 224``

Layout of ``DIR``::

    bags/<task>_<seed>/            rosbag2 (mcap) per episode, real-robot topics (see record.py)
    episodes.jsonl                 one line per episode: bag, task, instruction (the one in the bag),
                                   canonical_instruction, seed, success, ...
    vlm/vlm.jsonl, vlm/images/     vision-language records (see vlm_data.py)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ki_vla_ros.sim.expert import rollout
from ki_vla_ros.sim.record import write_bag
from ki_vla_ros.sim.tasks import CANONICAL_SHARE, TASK_NAMES, TASKS, episode_instruction
from ki_vla_ros.sim.vlm_data import generate_vlm_records


def generate_dataset(out_dir, episodes_per_task: int = 10, seed: int = 0, image_size: int = 224,
                     tasks=TASK_NAMES, vlm_scenes: int | None = None, keep_failures: bool = False,
                     storage: str = "mcap", phrasings: str = "train", canonical_share: float = CANONICAL_SHARE,
                     action_noise: float = 0.0, log=print) -> dict:
    """Roll out the expert ``episodes_per_task`` times per task and record each episode as a bag.

    Episode seeds are ``seed + i`` (i = 0..episodes_per_task-1), identical across tasks, so the
    same initial scene appears with every instruction. Failed expert episodes are skipped (and
    replaced by the next seed) unless ``keep_failures``. ``vlm_scenes`` (default
    ``2 * episodes_per_task * len(tasks)``) scenes with seeds from ``seed + 100000`` go into the
    VLM JSONL. ``phrasings``: ``"train"``: each episode's instruction (the one in its bag) is
    ``tasks.episode_instruction(task, seed, canonical_share)``, the canonical instruction or a
    training phrasing drawn from the episode seed (held-out phrasings never appear);
    ``"canonical"``: always the canonical one. ``action_noise`` (rad): demonstrations of recovery,
    the executed arm commands perturbed and the expert's own recorded (``expert.rollout``).
    Returns a summary dict (also in ``summary.json``).
    """
    if phrasings not in ("train", "canonical"):
        raise ValueError(f"phrasings: expected 'train' or 'canonical', got {phrasings!r}")
    out = Path(out_dir)
    (out / "bags").mkdir(parents=True, exist_ok=True)
    summary = {"episodes": 0, "failures": 0, "per_task": {}, "image_size": image_size, "phrasings": phrasings,
               "canonical_share": canonical_share if phrasings == "train" else 1.0, "action_noise": action_noise}
    t_start = time.time()
    with open(out / "episodes.jsonl", "w") as index:
        for name in tasks:
            done, s, fails = 0, seed, 0
            while done < episodes_per_task:
                ep = rollout(name, s, image_size=image_size, action_noise=action_noise)
                s += 1
                if not ep.success and not keep_failures:
                    fails += 1
                    if fails > 3 * episodes_per_task + 10:
                        raise RuntimeError(f"expert keeps failing on {name}")
                    continue
                if phrasings == "train":
                    ep.instruction = episode_instruction(name, ep.seed, canonical_share)
                rel = f"bags/{name}_{ep.seed:05d}"
                write_bag(ep, out / rel, storage=storage)
                index.write(json.dumps({
                    "bag": rel, "task": name, "instruction": ep.instruction,
                    "canonical_instruction": TASKS[name].instruction, "seed": ep.seed,
                    "steps": len(ep), "success": ep.success, "action_noise": action_noise,
                    "instruction_followed": ep.instruction_followed,
                    "cube_positions": ep.cube_positions}) + "\n")
                done += 1
                log(f"{rel}: {len(ep)} steps, success={ep.success} ({time.time() - t_start:.0f} s)")
            summary["per_task"][name] = {"episodes": done, "expert_failures": fails}
            summary["episodes"] += done
            summary["failures"] += fails
    n_vlm = 2 * episodes_per_task * len(tasks) if vlm_scenes is None else vlm_scenes
    if n_vlm:
        jsonl = generate_vlm_records(out / "vlm", range(seed + 100000, seed + 100000 + n_vlm), image_size)
        summary["vlm_jsonl"] = str(jsonl.relative_to(out))
    summary["seconds"] = round(time.time() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--tasks", nargs="*", default=list(TASK_NAMES), choices=list(TASK_NAMES))
    p.add_argument("--vlm-scenes", type=int, default=None)
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--phrasings", choices=("train", "canonical"), default="train",
                   help="episode instructions: training phrasings (seeded per episode) or the canonical ones")
    p.add_argument("--canonical-share", type=float, default=CANONICAL_SHARE,
                   help=f"--phrasings train: share of episodes with the canonical instruction [{CANONICAL_SHARE}]")
    p.add_argument("--action-noise", type=float, default=0.0,
                   help="rad: perturb the executed arm commands, record the expert's (recovery demonstrations) [0]")
    a = p.parse_args(argv)
    if a.action_noise < 0:
        p.error(f"--action-noise: expected >= 0, got {a.action_noise}")
    if not 0 <= a.canonical_share <= 1:
        p.error(f"--canonical-share: expected 0 <= x <= 1, got {a.canonical_share}")
    s = generate_dataset(a.out, a.episodes_per_task, a.seed, a.image_size, tasks=a.tasks,
                         vlm_scenes=a.vlm_scenes, storage=a.storage, phrasings=a.phrasings,
                         canonical_share=a.canonical_share, action_noise=a.action_noise)
    print(json.dumps(s, indent=2))


if __name__ == "__main__":
    main()
