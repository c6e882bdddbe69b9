"""LeRobot v2.1 and v3.0 folders written here (pyarrow parquet + PyAV mp4), read back."""

import json

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ki_vla_ros.data.lerobot import read_lerobot

FPS = 10


def _mp4(path, levels):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=FPS)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for lv in levels:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), lv, np.uint8), format="rgb24")
            out.mux(s.encode(frame))
        out.mux(s.encode())


def _frames(ep, n, task):
    rng = np.random.default_rng(ep)
    return {"observation.state": rng.normal(size=(n, 3)).tolist(), "action": rng.normal(size=(n, 2)).tolist(),
            "timestamp": (np.arange(n) / FPS).tolist(), "frame_index": list(range(n)),
            "episode_index": [ep] * n, "index": list(range(n)), "task_index": [task] * n}


def _info(version, data_path, video_path):
    return {"codebase_version": version, "fps": FPS, "chunks_size": 1000, "data_path": data_path,
            "video_path": video_path, "features": {
                "observation.state": {"dtype": "float32", "shape": [3], "names": ["a", "b", "c"]},
                "action": {"dtype": "float32", "shape": [2], "names": {"motors": ["m0", "m1"]}},
                "observation.images.top": {"dtype": "video", "shape": [32, 32, 3]}}}


LENS, TASKS = [6, 9], ["pick the cube", "place the cube"]


def write_v21(root):
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info(
        "v2.1", "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(TASKS)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": [TASKS[e]], "length": n}) + "\n" for e, n in enumerate(LENS)))
    for e, n in enumerate(LENS):
        p = root / f"data/chunk-000/episode_{e:06d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(_frames(e, n, e)), p)
        _mp4(root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4", [20 * k for k in range(n)])


def write_v30(root):
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info(
        "v3.0", "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")))
    pq.write_table(pa.table({"task": TASKS, "task_index": [0, 1]}), root / "meta" / "tasks.parquet")
    frames = [_frames(e, n, e) for e, n in enumerate(LENS)]
    table = {k: frames[0][k] + frames[1][k] for k in frames[0]}
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(table), root / "data/chunk-000/file-000.parquet")
    # both episodes in one video file: episode 1 starts after episode 0's frames
    _mp4(root / "videos/observation.images.top/chunk-000/file-000.mp4",
         [20 * k for k in range(LENS[0])] + [20 * k for k in range(LENS[1])])
    pq.write_table(pa.table({
        "episode_index": [0, 1], "tasks": [[TASKS[0]], [TASKS[1]]], "length": LENS,
        "data/chunk_index": [0, 0], "data/file_index": [0, 0],
        "videos/observation.images.top/chunk_index": [0, 0], "videos/observation.images.top/file_index": [0, 0],
        "videos/observation.images.top/from_timestamp": [0.0, LENS[0] / FPS],
        "videos/observation.images.top/to_timestamp": [LENS[0] / FPS, sum(LENS) / FPS]}),
        root / "meta/episodes/chunk-000/file-000.parquet")


@pytest.mark.parametrize("writer", [write_v21, write_v30])
def test_lerobot_reader(tmp_path, writer):
    writer(tmp_path / "ds")
    eps, rep = read_lerobot(tmp_path / "ds", image_size=16)
    assert [len(e) for e in eps] == LENS and not rep.problems
    for e, ep in zip(eps, range(2)):
        ref = _frames(ep, LENS[ep], ep)
        np.testing.assert_allclose(e.state, ref["observation.state"])
        np.testing.assert_allclose(e.actions, ref["action"])
        assert e.instruction == TASKS[ep]
        assert e.camera_names == ["top"] and e.state_names == ["a", "b", "c"] and e.action_names == ["m0", "m1"]
        assert e.valid.all() and e.images.shape == (LENS[ep], 1, 16, 16, 3)
        # frame k of the episode is the video frame with grey level 20 k (lossy codec: +-8)
        levels = e.images[:, 0].reshape(LENS[ep], -1).mean(1)
        np.testing.assert_allclose(levels, 20 * np.arange(LENS[ep]), atol=8)


def test_lerobot_bad_version(tmp_path):
    write_v21(tmp_path / "ds")
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (tmp_path / "ds/meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="v1.6"):
        read_lerobot(tmp_path / "ds", 16)


def test_video_decoded_per_episode_with_bounded_memory(tmp_path):
    """A v3.0-style mp4 holding 40 episodes of 10 frames (128x128): reading episode 20 seeks to it
    and decodes about its own frames; the traced peak stays near a few native frames, while the file
    holds 400 (the old reader kept every frame of the file)."""
    import tracemalloc

    from ki_vla_ros.data.lerobot import decode_window

    path, per, n_eps, side = tmp_path / "file-000.mp4", 10, 40, 128
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=FPS)
        s.width = s.height = side
        s.pix_fmt = "yuv420p"
        s.codec_context.gop_size = 10
        for k in range(per * n_eps):
            out.mux(s.encode(av.VideoFrame.from_ndarray(np.full((side, side, 3), (7 * k) % 256, np.uint8),
                                                        format="rgb24")))
        out.mux(s.encode())
    first = 20 * per
    tracemalloc.start()
    frames, decoded = decode_window(path, first / FPS, (first + per - 1) / FPS, FPS, 16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sorted(frames) == list(range(first, first + per))
    assert decoded <= per + 10 + 1  # at most one GOP before the episode and one frame after
    np.testing.assert_allclose([frames[k].mean() for k in sorted(frames)], [(7 * k) % 256 for k in sorted(frames)],
                               atol=8)
    frame_bytes = side * side * 3
    assert peak < 20 * frame_bytes, f"peak {peak} B for one episode; the file holds {per * n_eps} frames"


def test_norm_stats_from_the_dataset(tmp_path):
    from ki_vla_ros.configio import from_dict
    from ki_vla_ros.data.errors import DatasetError
    from ki_vla_ros.normalize import NormStats
    from ki_vla_ros.train.config import TrainConfig
    from ki_vla_ros.train.data_setup import prepare_data

    root = tmp_path / "ds"
    write_v30(root)
    stats = {"observation.state": {"q01": [-1.0, -2.0, -3.0], "q99": [1.0, 2.0, 3.0], "mean": [0, 0, 0]},
             "action": {"q01": [-3.0, -2.5], "q99": [3.0, 3.5]}}
    (root / "meta" / "stats.json").write_text(json.dumps(stats))
    ds = {"name": "lr", "type": "lerobot", "path": str(root), "val_episodes": 0, "norm_stats": "dataset"}
    cfg = {"run_dir": str(tmp_path / "run"), "datasets": [ds], "recipe": "pi0", "model": {"preset": "tiny"},
           "progress": False, "tokenizers": {"fast_vocab_size": 64, "fit_chunks": 10}}
    prepare_data(from_dict(TrainConfig, cfg), log=lambda *a: None)
    norm = NormStats.load(tmp_path / "run/assets/norm_stats/lr.json")
    np.testing.assert_array_equal(norm.state.q99, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(norm.actions.q01, [-3.0, -2.5])
    del stats["action"]["q01"]
    (root / "meta" / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=r"meta/stats.json: no q01/q99 for 'action'"):
        prepare_data(from_dict(TrainConfig, cfg | {"run_dir": str(tmp_path / "run2")}), log=lambda *a: None)
    with pytest.raises(ValueError, match=r"datasets\[0\]\.norm_stats': 'dataset' reads a LeRobot"):
        from_dict(TrainConfig, cfg | {"datasets": [{"name": "b", "type": "rosbag", "path": "x", "embodiment": "e",
                                                     "norm_stats": "dataset"}]})
