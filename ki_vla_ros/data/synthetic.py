"""Tiny synthetic datasets in the real formats, for tests and smoke runs (seconds, no simulator).

`write_aloha_bag` writes a rosbag2 through the ALOHA topics (`sim/record.py`) with smooth joint
trajectories and images whose colour encodes the step; `drop` / `delay` / `corrupt` inject
missing, late and malformed messages. `write_vlm_jsonl` writes PNGs + a JSONL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

INSTRUCTIONS = ("pick up the red cube", "pick up the blue cube", "hand the red cube over")


def episode_arrays(steps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    t = np.arange(steps) / 50.0
    phase = rng.uniform(0, 6.28, 14)
    amp = rng.uniform(0.2, 0.8, 14)
    q = amp * np.sin(2.0 * t[:, None] + phase)  # [T, 14]
    act = amp * np.sin(2.0 * (t[:, None] + 0.02) + phase)  # the next target
    return {"t": t, "q": q, "dq": np.gradient(q, axis=0) * 50, "actions": act}


def write_aloha_bag(path, steps: int = 40, seed: int = 0, image_size: int = 32, instruction: str | None = None,
                    drop: dict[str, list[int]] | None = None, delay: dict[str, list[int]] | None = None,
                    corrupt: dict[str, list[int]] | None = None, storage: str = "mcap") -> dict:
    """Write one episode bag; returns its arrays (``q`` [T, 14], ``actions`` [T, 14], ``t``).
    `drop` {topic: steps} omits messages, `delay` {topic: steps} stamps them 60 ms late, `corrupt`
    {topic: steps} writes a JointState without its joint names."""
    from ki_vla_ros.bagio import write_bag
    from ki_vla_ros.sim import record as R

    a = episode_arrays(steps, seed)
    instruction = instruction or INSTRUCTIONS[seed % len(INSTRUCTIONS)]
    drop, delay, corrupt = drop or {}, delay or {}, corrupt or {}
    empty = np.zeros(0)
    recs = [(R.INSTRUCTION_TOPIC, R.STRING_TYPE, 0, R.String(data=instruction))]
    for k, t in enumerate(a["t"]):
        def stamp(topic, t=t, k=k):
            return t + (0.06 if k in delay.get(topic, ()) else 0.0)

        for ci, (cam, topic) in enumerate(R.IMAGE_TOPICS.items()):
            if k in drop.get(topic, ()):
                continue
            img = np.full((image_size, image_size, 3), (5 * k + 40 * ci) % 256, np.uint8)
            ts = stamp(topic)
            recs.append((topic, R.IMAGE_TYPE, R._ns(ts), R.Image(
                header=R._header(ts, cam), height=image_size, width=image_size, encoding="rgb8", is_bigendian=0,
                step=3 * image_size, data=img.reshape(-1))))
        for j, side in enumerate(R.ARM_SIDES):
            sl = slice(7 * j, 7 * j + 7)
            names = R.arm_joint_names(side)
            topic = R.JOINT_STATE_TOPICS[side]
            if k not in drop.get(topic, ()):
                ts = stamp(topic)
                recs.append((topic, R.JOINT_STATE_TYPE, R._ns(ts), R.JointState(
                    header=R._header(ts), name=[] if k in corrupt.get(topic, ()) else names,
                    position=a["q"][k, sl].copy(), velocity=a["dq"][k, sl].copy(), effort=empty)))
            topic = R.TRAJECTORY_TOPICS[side]
            if k not in drop.get(topic, ()):
                ts = stamp(topic)
                point = R.JointTrajectoryPoint(positions=a["actions"][k, sl].copy(), velocities=empty,
                                               accelerations=empty, effort=empty,
                                               time_from_start=R.Duration(sec=0, nanosec=20_000_000))
                recs.append((topic, R.TRAJECTORY_TYPE, R._ns(ts),
                             R.JointTrajectory(header=R._header(ts), joint_names=names, points=[point])))
    recs.sort(key=lambda r: r[2])
    write_bag(path, recs, storage=storage)
    return a


def write_vlm_jsonl(folder, n_images: int = 6, image_size: int = 32, seed: int = 0) -> Path:
    import cv2

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    lines = []
    for i in range(n_images):
        name = list(colours)[i % 2]
        img = np.zeros((image_size, image_size, 3), np.uint8)
        x = int(rng.integers(0, image_size // 2))
        img[8:16, x:x + 8] = colours[name]
        cv2.imwrite(str(folder / "images" / f"img{i}.png"), img[..., ::-1])
        side = "left" if x < image_size // 4 else "right"
        lines += [{"image": f"images/img{i}.png", "prompt": "Which colour is the cube?", "answer": name},
                  {"image": f"images/img{i}.png", "prompt": f"Where is the {name} cube?", "answer": f"on the {side}"}]
    path = folder / "vlm.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def write_tiny_dataset(folder, episodes: int = 4, steps: int = 30, image_size: int = 32) -> dict:
    """Bags + VLM JSONL for tests: {"bags": folder, "vlm": jsonl path}."""
    folder = Path(folder)
    for i in range(episodes):
        write_aloha_bag(folder / "bags" / f"ep{i:02d}", steps=steps, seed=i, image_size=image_size)
    return {"bags": folder / "bags", "vlm": write_vlm_jsonl(folder / "vlm", image_size=image_size)}


def tiny_train_config(data: dict, run_dir, **fields) -> dict:
    """A `TrainConfig` mapping for the tiny preset on `write_tiny_dataset` data (fields override)."""
    cfg = {
        "run_dir": str(run_dir),
        "datasets": [
            {"name": "sim", "type": "rosbag", "path": str(data["bags"]), "embodiment": "aloha_bimanual",
             "weight": 1.0, "val_episodes": 1},
            {"name": "vlm", "type": "vlm", "path": str(data["vlm"]), "weight": 0.5, "val_fraction": 0.3},
        ],
        "model": {"preset": "tiny", "overrides": {"max_target_tokens": 96}},
        "recipe": "ki", "seed": 0, "steps": 6, "batch_size": 4, "log_every": 2, "eval_every": 3,
        "eval_samples": 6, "checkpoint_every": 3, "progress": False, "threads": 1,
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "tokenizers": {"fast_vocab_size": 200, "fit_chunks": 200},
    }
    cfg.update(fields)
    return cfg
