"""Training episodes from LeRobot datasets on local disk, format v2.1 and v3.0.

Both versions: ``meta/info.json`` (``codebase_version``, ``fps``, ``features``, ``data_path``,
``video_path``), frames in parquet (read with pyarrow), camera streams as mp4 (decoded with PyAV)
or as images inside the parquet (``dtype: image``: PNG/JPEG bytes), tasks as instructions.

* v2.1: ``meta/episodes.jsonl`` ({episode_index, tasks, length}), ``meta/tasks.jsonl``
  ({task_index, task}); one parquet and one mp4 per camera per episode, paths from the
  ``data_path`` / ``video_path`` templates with ``episode_chunk = episode_index // chunks_size``.
* v3.0: ``meta/tasks.parquet`` (task strings, ``task_index``), ``meta/episodes/*/*.parquet``
  (per episode: ``data/chunk_index``, ``data/file_index``, ``videos/<key>/chunk_index``,
  ``videos/<key>/file_index``, ``videos/<key>/from_timestamp``); several episodes share a parquet
  file and an mp4 file. A frame of an episode is the video frame at
  ``from_timestamp + timestamp`` (nearest frame at the dataset's fps).

Cameras: every feature with dtype ``video`` or ``image``; the camera name is the key without the
``observation.images.`` prefix (override with `cameras`: feature key -> camera name). State and
action come from `state_key` / `action_key`. The instruction of a frame is its task
(``task_index``); an episode whose frames change task is split at each change. A frame whose
video frame is missing or whose values are not finite is invalid (counted, not filled).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ki_vla_ros.data.episode import Episode, LoadReport
from ki_vla_ros.runtime.preprocess import resize_with_pad_uint8

IMAGE_PREFIX = "observation.images."


def _read_parquet(path: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def decode_video(path: Path) -> dict[float, np.ndarray]:
    """All frames of an mp4: {presentation time in s: uint8 RGB [H, W, 3]}."""
    import av

    frames = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time)
            frames[t] = frame.to_ndarray(format="rgb24")
    return frames


def _decode_image(value) -> np.ndarray:
    import cv2

    data = value.get("bytes") if isinstance(value, dict) else value
    if data is None and isinstance(value, dict) and value.get("path"):
        data = Path(value["path"]).read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("cannot decode image")
    return np.ascontiguousarray(bgr[..., ::-1])


class _VideoCache:
    """Decoded, resized video files, indexed by frame number at the dataset's fps."""

    def __init__(self, fps: float, image_size: int):
        self.fps, self.size, self.files = fps, image_size, {}

    def frames(self, path: Path) -> dict[int, np.ndarray]:
        if path not in self.files:
            self.files.clear()  # keep one file decoded at a time (episodes are read in file order)
            self.files[path] = {int(round(t * self.fps)): resize_with_pad_uint8(img, self.size)
                                for t, img in decode_video(path).items()}
        return self.files[path]


def read_lerobot(root: str | Path, image_size: int, cameras: dict[str, str] | None = None,
                 state_key: str = "observation.state", action_key: str = "action",
                 max_episodes: int = 0) -> tuple[list[Episode], LoadReport]:
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{root}: not a LeRobot dataset (no meta/info.json)")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", ""))
    features = info.get("features", {})
    for key in (state_key, action_key):
        if key not in features:
            raise ValueError(f"{info_path}: no feature '{key}' (features: {sorted(features)})")
    cam_keys = [k for k, f in features.items() if f.get("dtype") in ("video", "image")]
    if cameras:
        unknown = sorted(set(cameras) - set(cam_keys))
        if unknown:
            raise ValueError(f"{info_path}: cameras {unknown} are not image/video features ({cam_keys})")
        cam_keys = [k for k in cam_keys if k in cameras]
    cam_names = [(cameras or {}).get(k, k[len(IMAGE_PREFIX):] if k.startswith(IMAGE_PREFIX) else k)
                 for k in cam_keys]
    fps = float(info["fps"])

    def names(key):
        n = features[key].get("names")
        if isinstance(n, dict):  # {"motors": [...]}
            n = next(iter(n.values()))
        dim = int(np.prod(features[key]["shape"]))
        return [str(x) for x in n] if isinstance(n, list) and len(n) == dim else [f"{key}_{i}" for i in range(dim)]

    state_names, action_names = names(state_key), names(action_key)
    if version.startswith("v2"):
        eps = _episodes_v2(root, info, cam_keys)
    elif version.startswith("v3"):
        eps = _episodes_v3(root, info, cam_keys)
    else:
        raise ValueError(f"{info_path}: codebase_version {version!r} is not supported (v2.1 or v3.0)")
    if max_episodes:
        eps = eps[:max_episodes]

    report = LoadReport(str(root))
    videos = _VideoCache(fps, image_size)
    out: list[Episode] = []
    table_cache: dict[Path, dict] = {}
    for ep in eps:
        if ep["data"] not in table_cache:
            table_cache.clear()
            table_cache[ep["data"]] = _read_parquet(ep["data"])
        table = table_cache[ep["data"]]
        rows = [i for i, e in enumerate(table["episode_index"]) if int(e) == ep["index"]]
        rows.sort(key=lambda i: int(table["frame_index"][i]))
        n = len(rows)
        report.messages["frames"] += n
        bad = Counter()
        state = np.asarray([table[state_key][i] for i in rows], np.float64).reshape(n, -1)
        actions = np.asarray([table[action_key][i] for i in rows], np.float64).reshape(n, -1)
        valid = np.isfinite(state).all(1) & np.isfinite(actions).all(1)
        bad["non-finite: state/action"] += int((~valid).sum())
        images = np.zeros((n, len(cam_keys), image_size, image_size, 3), np.uint8)
        mask = np.zeros((n, len(cam_keys)), bool)
        for ci, key in enumerate(cam_keys):
            if features[key]["dtype"] == "image":
                for j, i in enumerate(rows):
                    try:
                        images[j, ci] = resize_with_pad_uint8(_decode_image(table[key][i]), image_size)
                        mask[j, ci] = True
                    except (ValueError, TypeError, OSError):
                        bad[f"corrupt: {key}"] += 1
                continue
            frames = videos.frames(ep["videos"][key])
            offset = ep["video_from"].get(key, 0.0)
            for j, i in enumerate(rows):
                f = int(round((offset + float(table["timestamp"][i])) * fps))
                if f in frames:
                    images[j, ci] = frames[f]
                    mask[j, ci] = True
                else:
                    bad[f"missing: {key} frame"] += 1
        valid &= mask.all(1)
        report.problems.update({k: v for k, v in bad.items() if v})
        tasks = [int(table["task_index"][i]) for i in rows] if "task_index" in table else [0] * n
        starts = [0] + [j for j in range(1, n) if tasks[j] != tasks[j - 1]] + [n]
        for a, b in zip(starts[:-1], starts[1:]):
            text = ep["tasks"].get(tasks[a], "")
            if not text:
                raise ValueError(f"{root}: episode {ep['index']} has no task text for task_index {tasks[a]}")
            out.append(Episode(f"{root}#episode{ep['index']}" + (f".{a}" if len(starts) > 2 else ""), text,
                               images[a:b], mask[a:b], state[a:b], actions[a:b], valid[a:b], cam_names,
                               state_names, action_names, fps))
    report.episodes = len(out)
    report.steps = sum(len(e) for e in out)
    return out, report


def _episodes_v2(root: Path, info: dict, cam_keys: list[str]) -> list[dict]:
    tasks = {int(t["task_index"]): t["task"] for t in _jsonl(root / "meta" / "tasks.jsonl")}
    chunks = int(info.get("chunks_size", 1000))
    out = []
    for e in sorted(_jsonl(root / "meta" / "episodes.jsonl"), key=lambda e: e["episode_index"]):
        idx = int(e["episode_index"])
        fmt = {"episode_chunk": idx // chunks, "episode_index": idx}
        out.append({
            "index": idx, "tasks": tasks,
            "data": root / info["data_path"].format(**fmt),
            "videos": {k: root / info["video_path"].format(video_key=k, **fmt) for k in cam_keys
                       if info.get("video_path")},
            "video_from": {},
        })
    return out


def _episodes_v3(root: Path, info: dict, cam_keys: list[str]) -> list[dict]:
    tt = _read_parquet(root / "meta" / "tasks.parquet")
    text_col = "task" if "task" in tt else next((k for k in tt if k.startswith("__index_level")), None)
    if text_col is None:
        raise ValueError(f"{root}/meta/tasks.parquet: no task strings (column 'task' or the index)")
    tasks = {int(i): str(t) for i, t in zip(tt["task_index"], tt[text_col])}
    files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}/meta/episodes: no episode metadata parquet files")
    out = []
    for f in files:
        t = _read_parquet(f)
        for r in range(len(t["episode_index"])):
            fmt = {"chunk_index": int(t["data/chunk_index"][r]), "file_index": int(t["data/file_index"][r])}
            videos, starts = {}, {}
            for k in cam_keys:
                if f"videos/{k}/chunk_index" in t:
                    vf = {"chunk_index": int(t[f"videos/{k}/chunk_index"][r]),
                          "file_index": int(t[f"videos/{k}/file_index"][r])}
                    videos[k] = root / info["video_path"].format(video_key=k, **vf)
                    starts[k] = float(t[f"videos/{k}/from_timestamp"][r])
            out.append({"index": int(t["episode_index"][r]), "tasks": tasks,
                        "data": root / info["data_path"].format(**fmt), "videos": videos, "video_from": starts})
    return sorted(out, key=lambda e: e["index"])

