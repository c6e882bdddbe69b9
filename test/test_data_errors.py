"""Broken datasets, as a user would meet them: one line naming the file and the problem, from Python
(typed errors) and from the CLI (exit code 1, no traceback); `on_error: skip`; zero usable samples."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_data_lerobot import LENS, write_v21

from ki_vla_ros.cli import main
from ki_vla_ros.configio import from_dict
from ki_vla_ros.data.bags import read_bag_episodes
from ki_vla_ros.data.errors import DatasetError, EpisodeError
from ki_vla_ros.data.lerobot import read_lerobot
from ki_vla_ros.data.synthetic import write_aloha_bag
from ki_vla_ros.embodiment import load_embodiment
from ki_vla_ros.normalize import NormStats
from ki_vla_ros.sim import record as R
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.data_setup import prepare_data

PARQUET1 = "data/chunk-000/episode_000001.parquet"
VIDEO1 = "videos/chunk-000/observation.images.top/episode_000001.mp4"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot") / "ds"
    write_v21(root)
    return root


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _drop_last_rows(path, n):
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - n), path)


BREAKS = {  # what is done to episode 1 -> (file named, problem)
    "truncated parquet": (lambda r: _truncate(r / PARQUET1), PARQUET1, "cannot read parquet"),
    "missing mp4": (lambda r: (r / VIDEO1).unlink(), VIDEO1, "video file missing"),
    "truncated mp4": (lambda r: _truncate(r / VIDEO1, 0.3), VIDEO1, "no video stream|cannot decode video"),
    "rows missing": (lambda r: _drop_last_rows(r / PARQUET1, 4), PARQUET1,
                     f"episode 1 has {LENS[1] - 4} frames, meta/episodes says {LENS[1]}"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_broken_lerobot_episode_names_file_and_problem(clean, tmp_path, name):
    breaker, file, problem = BREAKS[name]
    root = tmp_path / "ds"
    shutil.copytree(clean, root)
    breaker(root)
    with pytest.raises(EpisodeError, match=rf"^{root / file}: ({problem})") as info:
        read_lerobot(root, 16)
    assert "\n" not in str(info.value)
    eps, rep = read_lerobot(root, 16, on_error="skip")
    assert [len(e) for e in eps] == LENS[:1] and len(rep.skipped) == 1 and str(root / file) in rep.skipped[0]
    assert rep.to_dict()["skipped_episodes"] == 1


def test_unreadable_bag_names_the_bag(tmp_path):
    bag = tmp_path / "bag"
    write_aloha_bag(bag, steps=10)
    _truncate(next(bag.glob("*.mcap")))
    with pytest.raises(EpisodeError, match=rf"^{bag}: cannot read the bag \(AnyReaderError"):
        read_bag_episodes(bag, load_embodiment("aloha_bimanual"), 32)


def _train_cfg(tmp_path, datasets, **fields):
    cfg = {"run_dir": str(tmp_path / "run"), "datasets": datasets, "recipe": "pi0", "steps": 1, "batch_size": 2,
           "model": {"preset": "tiny"}, "progress": False, "tokenizers": {"fast_vocab_size": 64, "fit_chunks": 20}}
    cfg.update(fields)
    return cfg


def test_skipped_episode_counted_and_narrow_stats_widened(clean, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(clean, root)
    _truncate(root / PARQUET1)
    table = pq.read_table(root / "data/chunk-000/episode_000000.parquet").to_pydict()
    table["observation.state"] = [[s[0], s[1], 0.25] for s in table["observation.state"]]  # an idle joint
    pq.write_table(pa.table(table), root / "data/chunk-000/episode_000000.parquet")
    ds = {"name": "lr", "type": "lerobot", "path": str(root), "val_episodes": 0}
    with pytest.raises(EpisodeError, match="episode_000001.parquet: cannot read parquet"):
        prepare_data(from_dict(TrainConfig, _train_cfg(tmp_path, [ds])), log=lambda *a: None)
    cfg = from_dict(TrainConfig, _train_cfg(tmp_path, [ds | {"on_error": "skip", "min_quantile_range": 0.1}]))
    prepare_data(cfg, log=lambda *a: None)
    report = json.loads((tmp_path / "run/assets/data_report.json").read_text())["lr"]
    assert report["skipped_episodes"] == 1 and "episode_000001.parquet" in report["skipped"][0]
    stats = NormStats.load(tmp_path / "run/assets/norm_stats/lr.json")
    assert stats.state.q01[2] == pytest.approx(0.2) and stats.state.q99[2] == pytest.approx(0.3)
    assert stats.state.q99[0] - stats.state.q01[0] > 0.1  # wide ranges are left alone


def test_zero_samples_names_the_cause_and_max_age_s(tmp_path, capsys):
    """Cameras at a quarter of the control rate: every step without a fresh frame is stale, so no
    step has the 9 valid steps after it that a sample needs."""
    slow = {topic: [k for k in range(30) if k % 4] for topic in R.IMAGE_TOPICS.values()}
    for i in range(2):
        write_aloha_bag(tmp_path / "bags" / f"ep{i}", steps=30, seed=i, drop=slow)
    ds = {"name": "sim", "type": "rosbag", "path": str(tmp_path / "bags"), "embodiment": "aloha_bimanual",
          "val_episodes": 1}
    with pytest.raises(DatasetError, match=r"dataset 'sim': no usable training samples.*stale: /cam_.*"
                                           r"raise max_age_s in the dataset config"):
        prepare_data(from_dict(TrainConfig, _train_cfg(tmp_path, [ds])), log=lambda *a: None)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_train_cfg(tmp_path, [ds], run_dir=str(tmp_path / "run2"))))
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ki-vla train: ") and "max_age_s" in err and "\n" not in err


def test_eval_bag_on_an_unreadable_bag_is_one_line(tmp_path, capsys):
    bag = tmp_path / "bag"
    write_aloha_bag(bag, steps=10)
    _truncate(next(bag.glob("*.mcap")))
    assert main(["eval-bag", str(bag)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"ki-vla eval-bag: {bag}: cannot read the bag (AnyReaderError: File end magic is invalid.)"
