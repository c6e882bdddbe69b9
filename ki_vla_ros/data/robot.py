"""Robot datasets: episodes read once into a cache, split by episode, indexed by sample.

`load_robot_episodes(cfg, image_size, cache_dir)` reads a rosbag or LeRobot dataset into
`Episode`s and keeps them in ``cache_dir/<source folder>-<key>/`` (images as .npy, memory-mapped on later loads;
the key hashes the source files' sizes and times and every reading option), so a second run — or
another rank — does not decode video or bags again. The cache is written episode by episode as the
reader yields them, so reading holds about one decoded episode in memory.

`RobotDataset(episodes, horizon, delta, start_steps, start_repeat)` lists every usable (episode, step)
pair — those of the first `start_steps` steps `start_repeat` times (oversampled); `raw(i)` gives the
sample in robot units: images, state, the action chunk [H, Da] (delta dims relative to the state,
`DeltaActions`) and the instruction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ki_vla_ros.data.config import DatasetConfig
from ki_vla_ros.data.episode import Episode, LoadReport
from ki_vla_ros.data.errors import EpisodeError
from ki_vla_ros.delta_actions import DeltaActions

CACHE_VERSION = 2  # 2: images resized in float (LeRobot rule), int() sizes


def _roots(cfg: DatasetConfig) -> list[Path]:
    """The folders a dataset reads: `path`, or its `folders` below it in their order."""
    return [Path(cfg.path) / f for f in cfg.folders] or [Path(cfg.path)]


def _fingerprint(cfg: DatasetConfig, image_size: int, cache_dir: Path | None = None) -> str:
    """A key of the source files (paths, sizes, times) and every reading option; files under
    `cache_dir` are not sources (a cache kept inside the dataset folder must not change the key)."""
    root = Path(cfg.path).resolve()
    cache = cache_dir.resolve() if cache_dir else None
    files = [root] if root.is_file() else [
        p for r in _roots(cfg) for p in sorted(r.resolve().rglob("*"))
        if p.is_file() and not (cache and p.is_relative_to(cache))]
    h = hashlib.sha1()
    ignored = {"name": "", "weight": 0, "val_episodes": 0, "min_quantile_range": 0,
               "delta_actions": [], "start_steps": 0, "start_repeat": 1,
               "norm_stats": "", "val_fraction": 0.0}  # not used in reading
    reading = dataclasses.asdict(cfg) | ignored
    if not cfg.folders:
        del reading["folders"]  # a config without folders keeps the key it had before they existed
    h.update(json.dumps({"v": CACHE_VERSION, "cfg": reading,
                         "size": image_size, "root": str(root)}, sort_keys=True).encode())
    if cfg.type == "rosbag":
        from ki_vla_ros.configio import to_dict
        from ki_vla_ros.embodiment import load_embodiment

        h.update(json.dumps(to_dict(load_embodiment(cfg.embodiment)), sort_keys=True).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _episodes(cfg: DatasetConfig, image_size: int, report: LoadReport) -> Iterator[Episode]:
    """The dataset's episodes one at a time (so the cache is written as they come and memory holds
    about one episode); counts and skipped episodes go into `report`."""
    if cfg.type == "rosbag":
        from ki_vla_ros.data.bags import find_bags, read_bag_episodes
        from ki_vla_ros.embodiment import load_embodiment

        emb = load_embodiment(cfg.embodiment)
        bags = [b for r in _roots(cfg) for b in find_bags(r)]
        if cfg.max_episodes:
            bags = bags[: cfg.max_episodes]
        for bag in bags:
            try:
                eps, rep = read_bag_episodes(bag, emb, image_size, cfg.action_source, cfg.instruction,
                                             cfg.instruction_topic, cfg.segment_by, cfg.max_age_s)
            except EpisodeError as exc:
                if cfg.on_error != "skip":
                    raise
                report.skipped.append(str(exc))
                continue
            report.add(rep)
            yield from eps
    elif cfg.type == "lerobot":
        from ki_vla_ros.data.lerobot import iter_lerobot

        yield from iter_lerobot(cfg.path, image_size, cfg.cameras or None, cfg.state_key, cfg.action_key,
                                cfg.max_episodes, cfg.on_error, report)
    else:
        raise ValueError(f"{cfg.name}: type {cfg.type!r} is not a robot dataset")


def load_robot_episodes(cfg: DatasetConfig, image_size: int, cache_dir: str | Path | None,
                        log=print) -> tuple[list[Episode], LoadReport]:
    report = LoadReport(cfg.path)
    if not cache_dir:
        return list(_episodes(cfg, image_size, report)), report
    key = _fingerprint(cfg, image_size, Path(cache_dir))
    # named by the source and the key, not the dataset's name: every config that reads the same files
    # the same way (a VLM base that only takes the robot layout from them, each robot stage) shares it
    folder = Path(cache_dir) / f"{Path(cfg.path).name}-{key}"
    if (folder / "index.json").is_file():
        return _load_cache(folder)
    log(f"[data] reading {cfg.type} dataset '{cfg.name}' from {cfg.path} (cache: {folder})")
    _save_cache(folder, _episodes(cfg, image_size, report), report)
    return _load_cache(folder)


def _save_cache(folder: Path, episodes: Iterable[Episode], report: LoadReport) -> None:
    """Write the episodes as they come, then the index (with `report`, complete by then)."""
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = {"episodes": []}
    try:
        for i, e in enumerate(episodes):
            np.save(tmp / f"ep{i:05d}_images.npy", e.images)
            np.savez(tmp / f"ep{i:05d}.npz", image_mask=e.image_mask, state=e.state, actions=e.actions, valid=e.valid)
            index["episodes"].append({"source": e.source, "instruction": e.instruction, "camera_names": e.camera_names,
                                      "state_names": e.state_names, "action_names": e.action_names,
                                      "control_rate_hz": e.control_rate_hz})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a broken dataset leaves no half-written cache
        raise
    index["report"] = report.to_dict()
    (tmp / "index.json").write_text(json.dumps(index))
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cache(folder: Path) -> tuple[list[Episode], LoadReport]:
    index = json.loads((folder / "index.json").read_text())
    episodes = []
    for i, meta in enumerate(index["episodes"]):
        arrays = np.load(folder / f"ep{i:05d}.npz")
        episodes.append(Episode(meta["source"], meta["instruction"],
                                np.load(folder / f"ep{i:05d}_images.npy", mmap_mode="r"),
                                arrays["image_mask"], arrays["state"], arrays["actions"], arrays["valid"],
                                meta["camera_names"], meta["state_names"], meta["action_names"],
                                meta["control_rate_hz"]))
    return episodes, LoadReport.from_dict(index["report"])


def split_episodes(episodes: list[Episode], val_episodes: int, seed: int) -> tuple[list[Episode], list[Episode]]:
    """(train, held-out): `val_episodes` episodes chosen with the seed (-1: 10%, >= 1 if >= 2 episodes)."""
    n = len(episodes)
    if val_episodes < 0:
        val_episodes = max(1, round(0.1 * n)) if n >= 2 else 0
    if val_episodes >= n and n:
        raise ValueError(f"val_episodes = {val_episodes} leaves no training episodes (the dataset has {n})")
    order = np.random.default_rng(seed).permutation(n)
    val = set(order[:val_episodes].tolist())
    return [e for i, e in enumerate(episodes) if i not in val], [e for i, e in enumerate(episodes) if i in val]


class RobotDataset:
    def __init__(self, episodes: list[Episode], horizon: int, delta: DeltaActions | None = None,
                 start_steps: int = 0, start_repeat: int = 1):
        self.episodes, self.horizon, self.delta = episodes, horizon, delta or DeltaActions.none()
        steps = [e.sample_steps(horizon) for e in episodes]
        self.distinct = sum(map(len, steps))  # usable (episode, step) pairs, each counted once
        pairs = [(ei, int(k)) for ei, ks in enumerate(steps) for k in ks
                 for _ in range(start_repeat if k < start_steps else 1)]
        self.index = np.asarray(pairs, np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    def raw(self, i: int) -> dict:
        ei, k = self.index[i]
        e = self.episodes[ei]
        return {"images": np.asarray(e.images[k]), "image_mask": e.image_mask[k], "state": e.state[k],
                "chunk": self.delta.to_model(e.chunk(int(k), self.horizon), e.state[k]), "instruction": e.instruction,
                "camera_names": e.camera_names}

    def state_action_rows(self, delta_stride: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Rows for normalisation statistics: every valid step's state, and every valid step's action
        — with delta actions, every action of the chunks of every `delta_stride`-th sample step (the
        offsets grow along the chunk, so statistics need all of its steps)."""
        s = [e.state[e.valid] for e in self.episodes]
        if not self.delta.active:
            return np.concatenate(s), np.concatenate([e.actions[e.valid] for e in self.episodes])
        a = []
        for e in self.episodes:
            k = e.sample_steps(self.horizon)[::delta_stride]
            idx = np.minimum(k[:, None] + np.arange(self.horizon), len(e) - 1)  # [K, H]
            a.append(self.delta.to_model(e.actions[idx], e.state[k]).reshape(-1, e.actions.shape[1]))
        return np.concatenate(s), np.concatenate(a)
