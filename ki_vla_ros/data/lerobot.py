"""Training episodes from LeRobot datasets on local disk, format v2.1 and v3.0.

Both versions: ``meta/info.json`` (``codebase_version``, ``fps``, ``features``, ``data_path``,
``video_path``), frames in parquet (read with pyarrow), camera streams as mp4 (decoded with PyAV)
or as images inside the parquet (``dtype: image``: PNG/JPEG bytes), tasks as instructions.

* v2.1: ``meta/episodes.jsonl`` ({episode_index, tasks, length}), ``meta/tasks.jsonl``
  ({task_index, task}); one parquet and one mp4 per camera per episode, paths from the
  ``data_path`` / ``video_path`` templates with ``episode_chunk = episode_index // chunks_size``.
* v3.0: ``meta/tasks.parquet`` (task strings, ``task_index``), ``meta/episodes/*/*.parquet``
  (per episode: ``length``, ``data/chunk_index``, ``data/file_index``, ``videos/<key>/chunk_index``,
  ``videos/<key>/file_index``, ``videos/<key>/from_timestamp``); several episodes share a parquet
  file and an mp4 file. A frame of an episode is the video frame at
  ``from_timestamp + timestamp`` (nearest frame at the dataset's fps).

Video is decoded per episode: a seek to the keyframe before the episode's first frame, then
decoding until its last, each frame resized at once — memory holds one episode's frames at the
model's size, however many episodes share the mp4 (`decode_window`).

Cameras: every feature with dtype ``video`` or ``image``; the camera name is the key without the
``observation.images.`` prefix (override with `cameras`: feature key -> camera name). State and
action come from `state_key` / `action_key`. The instruction of a frame is its task
(``task_index``); an episode whose frames change task is split at each change. A single frame
whose video frame is missing, whose image does not decode or whose values are not finite is
invalid (counted, not filled). A broken episode — its parquet or mp4 missing or unreadable, or
fewer / more frames than ``meta/episodes`` says — raises `EpisodeError` naming the file, or with
``on_error="skip"`` is left out and listed in the report's ``skipped``. Broken metadata raises
`DatasetError`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ki_vla_ros.data.episode import Episode, LoadReport
from ki_vla_ros.data.errors import DatasetError, EpisodeError
from ki_vla_ros.runtime.preprocess import resize_with_pad_uint8

IMAGE_PREFIX = "observation.images."


def _read_parquet(path: Path, error=EpisodeError) -> dict[str, list]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise error(path, "file missing")
    try:
        return pq.read_table(path).to_pydict()
    except (pa.ArrowException, OSError) as exc:
        raise error(path, f"cannot read parquet ({exc})") from None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(path, f"cannot read JSON ({exc})") from None


def _jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(path, f"cannot read ({exc})") from None
    out = []
    for i, line in enumerate(lines):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(path, f"line {i + 1} is not JSON ({exc})") from None
    return out


def decode_window(path: Path, t0: float, t1: float, fps: float, size: int) -> tuple[dict[int, np.ndarray], int]:
    """The frames of an mp4 with presentation time in [t0, t1] (± half a frame), resized to the
    model's size: ({round(t * fps): uint8 [size, size, 3]}, frames decoded). Seeks to the keyframe
    at or before t0 and stops after t1, so the cost and memory follow the window, not the file."""
    import av

    if not path.is_file():
        raise EpisodeError(path, "video file missing")
    half = 0.5 / fps
    frames, decoded = {}, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise EpisodeError(path, "no video stream (truncated, or not a video file)")
            stream = container.streams.video[0]
            container.seek(max(0, int((t0 - half) / stream.time_base)), stream=stream, backward=True,
                           any_frame=False)
            for frame in container.decode(stream):
                decoded += 1
                t = float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time)
                if t > t1 + half:
                    break
                if t >= t0 - half:
                    frames[int(round(t * fps))] = resize_with_pad_uint8(frame.to_ndarray(format="rgb24"), size)
    except (av.error.FFmpegError, OSError) as exc:
        raise EpisodeError(path, f"cannot decode video ({exc})") from None
    return frames, decoded


def _decode_image(value) -> np.ndarray:
    import cv2

    data = value.get("bytes") if isinstance(value, dict) else value
    if data is None and isinstance(value, dict) and value.get("path"):
        data = Path(value["path"]).read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("cannot decode image")
    return np.ascontiguousarray(bgr[..., ::-1])


class _Source:
    """A LeRobot dataset's metadata: features, cameras, names and the episode list."""

    def __init__(self, root: Path, cameras: dict[str, str] | None, state_key: str, action_key: str):
        self.root = root
        info_path = root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(root, "not a LeRobot dataset (no meta/info.json)")
        info = _json(info_path)
        version = str(info.get("codebase_version", ""))
        features = info.get("features", {})
        for key in (state_key, action_key):
            if key not in features:
                raise DatasetError(info_path, f"no feature '{key}' (features: {sorted(features)})")
        cam_keys = [k for k, f in features.items() if f.get("dtype") in ("video", "image")]
        if cameras:
            unknown = sorted(set(cameras) - set(cam_keys))
            if unknown:
                raise DatasetError(info_path, f"cameras {unknown} are not image/video features ({cam_keys})")
            cam_keys = [k for k in cam_keys if k in cameras]
        self.cam_keys, self.features, self.state_key, self.action_key = cam_keys, features, state_key, action_key
        self.cam_names = [(cameras or {}).get(k, k.removeprefix(IMAGE_PREFIX)) for k in cam_keys]
        try:
            self.fps = float(info["fps"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(info_path, "no numeric 'fps'") from None
        self.state_names, self.action_names = self._names(state_key), self._names(action_key)
        if not version.startswith(("v2", "v3")):
            raise DatasetError(info_path, f"codebase_version {version!r} is not supported (v2.1 or v3.0)")
        try:
            self.episodes = (_episodes_v2 if version.startswith("v2") else _episodes_v3)(root, info, cam_keys)
        except KeyError as exc:
            raise DatasetError(root / "meta", f"episode metadata lacks {exc} (meta/info.json templates, "
                                              f"meta/episodes columns)") from None

    def _names(self, key: str) -> list[str]:
        f = self.features[key]
        n = f.get("names")
        if isinstance(n, dict):  # {"motors": [...]}
            n = next(iter(n.values()))
        dim = int(np.prod(f["shape"]))
        return [str(x) for x in n] if isinstance(n, list) and len(n) == dim else [f"{key}_{i}" for i in range(dim)]


def iter_lerobot(root: str | Path, image_size: int, cameras: dict[str, str] | None = None,
                 state_key: str = "observation.state", action_key: str = "action", max_episodes: int = 0,
                 on_error: str = "raise", report: LoadReport | None = None) -> Iterator[Episode]:
    """The dataset's episodes one at a time (see the module doc); counts go into `report`."""
    root = Path(root)
    src = _Source(root, cameras, state_key, action_key)
    report = report if report is not None else LoadReport(str(root))
    eps = src.episodes[:max_episodes] if max_episodes else src.episodes
    tables: dict[Path, dict | EpisodeError] = {}
    for ep in eps:
        try:
            episodes = _read_episode(src, ep, image_size, tables, report)
        except EpisodeError as exc:
            if on_error != "skip":
                raise
            report.skipped.append(str(exc))
            continue
        for e in episodes:
            report.episodes += 1
            report.steps += len(e)
            yield e


def read_lerobot(root: str | Path, image_size: int, cameras: dict[str, str] | None = None,
                 state_key: str = "observation.state", action_key: str = "action",
                 max_episodes: int = 0, on_error: str = "raise") -> tuple[list[Episode], LoadReport]:
    report = LoadReport(str(root))
    eps = list(iter_lerobot(root, image_size, cameras, state_key, action_key, max_episodes, on_error, report))
    return eps, report


def dataset_norm_stats(root: str | Path, state_key: str = "observation.state", action_key: str = "action"):
    """The q01/q99 of `state_key` and `action_key` in the dataset's ``meta/stats.json`` as NormStats."""
    from ki_vla_ros.normalize import NormStats, QuantileStats

    path = Path(root) / "meta" / "stats.json"
    if not path.is_file():
        raise DatasetError(path, "missing (norm_stats: dataset reads it; use norm_stats: compute)")
    stats = _json(path)
    out = []
    for key in (state_key, action_key):
        entry = stats.get(key)
        if not isinstance(entry, dict) or "q01" not in entry or "q99" not in entry:
            raise DatasetError(path, f"no q01/q99 for '{key}' (LeRobot writes quantiles from dataset v3.0 on; "
                                     f"use norm_stats: compute)")
        try:
            out.append(QuantileStats.from_dict({"q01": np.ravel(entry["q01"]), "q99": np.ravel(entry["q99"])},
                                               key))
        except ValueError as exc:
            raise DatasetError(path, str(exc)) from None
    return NormStats(*out)


def _table(path: Path, tables: dict) -> dict:
    """The parquet file of an episode (v3.0 files hold many: the last one read is kept)."""
    if path not in tables:
        tables.clear()
        try:
            tables[path] = _read_parquet(path)
        except EpisodeError as exc:
            tables[path] = exc
    if isinstance(tables[path], EpisodeError):
        raise tables[path]
    return tables[path]


def _read_episode(src: _Source, ep: dict, image_size: int, tables: dict, report: LoadReport) -> list[Episode]:
    table = _table(ep["data"], tables)
    for key in ("episode_index", "frame_index", "timestamp", src.state_key, src.action_key):
        if key not in table:
            raise EpisodeError(ep["data"], f"no column '{key}'")
    rows = [i for i, e in enumerate(table["episode_index"]) if int(e) == ep["index"]]
    rows.sort(key=lambda i: int(table["frame_index"][i]))
    n = len(rows)
    if ep.get("length") is not None and n != int(ep["length"]):
        raise EpisodeError(ep["data"], f"episode {ep['index']} has {n} frames, meta/episodes says {int(ep['length'])}")
    if n == 0:
        raise EpisodeError(ep["data"], f"episode {ep['index']} has no frames")
    report.messages["frames"] += n
    bad = Counter()
    try:
        state = np.asarray([table[src.state_key][i] for i in rows], np.float64).reshape(n, -1)
        actions = np.asarray([table[src.action_key][i] for i in rows], np.float64).reshape(n, -1)
    except (TypeError, ValueError) as exc:
        raise EpisodeError(ep["data"], f"episode {ep['index']}: state/action are not numeric vectors ({exc})") from None
    if state.shape[1] != len(src.state_names) or actions.shape[1] != len(src.action_names):
        raise EpisodeError(ep["data"], f"episode {ep['index']}: state/action have {state.shape[1]}/{actions.shape[1]}"
                                       f" values, meta/info.json says {len(src.state_names)}/{len(src.action_names)}")
    valid = np.isfinite(state).all(1) & np.isfinite(actions).all(1)
    bad["non-finite: state/action"] += int((~valid).sum())
    images = np.zeros((n, len(src.cam_keys), image_size, image_size, 3), np.uint8)
    mask = np.zeros((n, len(src.cam_keys)), bool)
    times = np.asarray([float(table["timestamp"][i]) for i in rows])
    for ci, key in enumerate(src.cam_keys):
        if src.features[key]["dtype"] == "image":
            if key not in table:
                raise EpisodeError(ep["data"], f"no column '{key}'")
            for j, i in enumerate(rows):
                try:
                    images[j, ci] = resize_with_pad_uint8(_decode_image(table[key][i]), image_size)
                    mask[j, ci] = True
                except (ValueError, TypeError, OSError):
                    bad[f"corrupt: {key}"] += 1
            continue
        if key not in ep["videos"]:
            raise EpisodeError(src.root / "meta", f"episode {ep['index']}: no video file for '{key}'")
        offset = ep["video_from"].get(key, 0.0)
        frames, _ = decode_window(ep["videos"][key], offset + times.min(), offset + times.max(), src.fps, image_size)
        for j, t in enumerate(times):
            f = int(round((offset + t) * src.fps))
            if f in frames:
                images[j, ci] = frames[f]
                mask[j, ci] = True
            else:
                bad[f"missing: {key} frame"] += 1
    valid &= mask.all(1)
    report.problems.update({k: v for k, v in bad.items() if v})
    tasks = [int(table["task_index"][i]) for i in rows] if "task_index" in table else [0] * n
    starts = [0] + [j for j in range(1, n) if tasks[j] != tasks[j - 1]] + [n]
    out = []
    for a, b in zip(starts[:-1], starts[1:]):
        text = ep["tasks"].get(tasks[a], "")
        if not text:
            raise DatasetError(src.root / "meta", f"episode {ep['index']} has no task text for task_index {tasks[a]}")
        out.append(Episode(f"{src.root}#episode{ep['index']}" + (f".{a}" if len(starts) > 2 else ""), text,
                           images[a:b], mask[a:b], state[a:b], actions[a:b], valid[a:b], src.cam_names,
                           src.state_names, src.action_names, src.fps))
    return out


def _episodes_v2(root: Path, info: dict, cam_keys: list[str]) -> list[dict]:
    tasks = {int(t["task_index"]): t["task"] for t in _jsonl(root / "meta" / "tasks.jsonl")}
    chunks = int(info.get("chunks_size", 1000))
    out = []
    for e in sorted(_jsonl(root / "meta" / "episodes.jsonl"), key=lambda e: e["episode_index"]):
        idx = int(e["episode_index"])
        fmt = {"episode_chunk": idx // chunks, "episode_index": idx}
        out.append({
            "index": idx, "tasks": tasks, "length": e.get("length"),
            "data": root / info["data_path"].format(**fmt),
            "videos": {k: root / info["video_path"].format(video_key=k, **fmt) for k in cam_keys
                       if info.get("video_path")},
            "video_from": {},
        })
    return out


def _episodes_v3(root: Path, info: dict, cam_keys: list[str]) -> list[dict]:
    tt = _read_parquet(root / "meta" / "tasks.parquet", DatasetError)
    text_col = "task" if "task" in tt else next((k for k in tt if k.startswith("__index_level")), None)
    if text_col is None:
        raise DatasetError(root / "meta" / "tasks.parquet", "no task strings (column 'task' or the index)")
    tasks = {int(i): str(t) for i, t in zip(tt["task_index"], tt[text_col])}
    files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    if not files:
        raise DatasetError(root / "meta" / "episodes", "no episode metadata parquet files")
    out = []
    for f in files:
        t = _read_parquet(f, DatasetError)
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
                        "length": t["length"][r] if "length" in t else None,
                        "data": root / info["data_path"].format(**fmt), "videos": videos, "video_from": starts})
    return sorted(out, key=lambda e: e["index"])
