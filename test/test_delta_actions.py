"""Delta actions (delta_actions.py): arm joints learned as offsets from the observed state, added back
at run time — in the training data, the normalisation statistics, the model folder and the policy."""

import shutil

import numpy as np
import pytest
import yaml

from ki_vla_ros.configio import ConfigError, from_dict, load_config
from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset
from ki_vla_ros.delta_actions import DeltaActions
from ki_vla_ros.embodiment import load_embodiment
from ki_vla_ros.normalize import NormStats, QuantileStats
from ki_vla_ros.runtime import Policy
from ki_vla_ros.runtime.init_model import init_model_dir
from ki_vla_ros.runtime.model_dir import Layout
from ki_vla_ros.runtime.types import Observation
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.data_setup import prepare_data

JOINTS = [f"{s}_{j}" for s in ("left", "right")
          for j in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")]


def test_round_trip_and_names():
    d = DeltaActions.from_names(["b", "c"], ["a", "b", "c"], ["c", "b", "x"])
    state = np.array([10.0, 20.0, 30.0])
    chunk = np.arange(12, dtype=np.float64).reshape(4, 3)
    rel = d.to_model(chunk, state)
    np.testing.assert_array_equal(rel[:, 0], chunk[:, 0])  # "a": absolute
    np.testing.assert_array_equal(rel[:, 1], chunk[:, 1] - 20.0)  # "b" relative to state[1]
    np.testing.assert_array_equal(rel[:, 2], chunk[:, 2] - 10.0)  # "c" relative to state[0]
    np.testing.assert_array_equal(d.to_robot(rel, state), chunk)
    batch = d.to_model(np.stack([chunk, chunk]), np.stack([state, 2 * state]))  # [B, H, D] with [B, Ds]
    np.testing.assert_array_equal(batch[1, :, 1], chunk[:, 1] - 40.0)
    with pytest.raises(ValueError, match=r"where: \['x'\] must be both action and state names"):
        DeltaActions.from_names(["x"], ["a", "b", "c"], ["c", "b", "x"], where="where")
    with pytest.raises(ValueError, match="delta_actions: `?names must be unique"):
        DeltaActions.from_names(["b", "b"], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="delta_actions"):
        Layout(["cam"], ["q"], ["a"], 50.0, ["a"]).validate()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("delta_data"), episodes=3, steps=30)


def _prepare(data, run_dir, **dataset):
    cfg = tiny_train_config(data, run_dir)
    cfg["datasets"][0].update(val_episodes=0, **dataset)
    return prepare_data(from_dict(TrainConfig, cfg), log=lambda *a: None)


def test_training_data_statistics_and_layout(data, tmp_path):
    absolute = _prepare(data, tmp_path / "abs")
    delta = _prepare(data, tmp_path / "delta", delta_actions=JOINTS)
    ds_a, ds_d = absolute.train[0], delta.train[0]
    assert len(ds_a) == len(ds_d) > 0
    names = ds_a.episodes[0].action_names
    joint = [names.index(n) for n in JOINTS]
    grip = [names.index(n) for n in ("left_gripper", "right_gripper")]
    for i in (0, len(ds_a) // 2, len(ds_a) - 1):
        a, d = ds_a.raw(i), ds_d.raw(i)
        np.testing.assert_allclose(d["chunk"][:, joint], a["chunk"][:, joint] - a["state"][joint])
        np.testing.assert_array_equal(d["chunk"][:, grip], a["chunk"][:, grip])
    # statistics of the relative chunks (every action of every 2nd sample's chunk), not of the steps
    rows = np.concatenate([ds_d.raw(i)["chunk"] for i in range(len(ds_d))])
    got = NormStats.load(tmp_path / "delta/assets/norm_stats/sim.json").actions
    spread = rows[:, joint].max(0) - rows[:, joint].min(0)
    assert np.all(np.abs(got.q01[joint] - np.quantile(rows[:, joint], 0.01, axis=0)) < 0.05 * spread + 0.02)
    assert np.all(np.abs(got.q99[joint] - np.quantile(rows[:, joint], 0.99, axis=0)) < 0.05 * spread + 0.02)
    absolute_stats = NormStats.load(tmp_path / "abs/assets/norm_stats/sim.json").actions
    assert not np.allclose(got.q99[joint], absolute_stats.q99[joint])
    # the example the model sees: the normalised relative chunk
    ex = delta.example(0, 3)
    np.testing.assert_allclose(ex["actions"][:, : len(names)], got.normalize(ds_d.raw(3)["chunk"]), atol=1e-6)
    layout = load_config(Layout, tmp_path / "delta/assets/layout.yaml")
    assert layout.delta_actions == JOINTS
    assert load_config(Layout, tmp_path / "abs/assets/layout.yaml").delta_actions == []


def test_bad_delta_names_name_the_key(data, tmp_path):
    with pytest.raises(ValueError, match=r"datasets 'sim': delta_actions: \['left_wrist'\] must be both"):
        _prepare(data, tmp_path / "bad", delta_actions=["left_wrist"])
    cfg = tiny_train_config(data, tmp_path / "r")
    cfg["datasets"][1]["delta_actions"] = JOINTS
    with pytest.raises(ConfigError, match=r"'datasets\[1\].delta_actions': only robot datasets"):
        from_dict(TrainConfig, cfg)


def test_policy_adds_the_observed_state_back(tmp_path):
    """The same weights and noise with and without delta dims in the layout: the normalised model
    output is identical, so the robot-unit chunks differ by exactly the observed state on the delta
    dims and not at all elsewhere."""
    emb = load_embodiment("aloha_bimanual")
    plain = init_model_dir(tmp_path / "plain", Layout(emb.camera_names, emb.state_names, emb.action_names), "tiny")
    delta_dir = tmp_path / "delta"
    shutil.copytree(plain, delta_dir)
    manifest = yaml.safe_load((delta_dir / "model.yaml").read_text())
    manifest["layout"]["delta_actions"] = JOINTS
    manifest["rtc"] = {"max_delay_steps": 8, "probability": 0.5}  # so the policy takes action prefixes
    (delta_dir / "model.yaml").write_text(yaml.safe_dump(manifest))
    rng = np.random.default_rng(0)
    state = rng.uniform(-0.8, 0.8, 14)
    obs = Observation({c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in emb.camera_names}, state,
                      "pick up the red cube")
    a = Policy.load(plain).infer(obs, seed=3).actions
    p = Policy.load(delta_dir)
    b = p.infer(obs, seed=3).actions
    joint = [emb.action_names.index(n) for n in JOINTS]
    grip = [i for i in range(14) if i not in joint]
    np.testing.assert_allclose(b[:, joint] - a[:, joint], np.broadcast_to(state[joint], (len(a), 12)), atol=1e-9)
    np.testing.assert_array_equal(b[:, grip], a[:, grip])
    # an action prefix goes the other way: relative to the state, then normalised
    prefix = a[:5]
    norm, d = p.prefix_for_model(prefix, state)
    assert d == 5
    rel = prefix.copy()
    rel[:, joint] -= state[joint]
    np.testing.assert_allclose(norm[0, :5, :14], p.bundle.norm_stats.actions.normalize(rel), atol=1e-5)
    np.testing.assert_allclose(p.actions_to_robot(norm[0, :5], state), prefix, atol=1e-5)


def test_datasets_of_one_robot_share_normalisation(data, tmp_path):
    """Two computed datasets of the same robot layout get the statistics of their union (the exported
    model keeps one dataset's), a third with other relative joints keeps its own."""
    cfg = tiny_train_config(data, tmp_path / "run")
    sim = dict(cfg["datasets"][0], val_episodes=0)
    cfg["datasets"] = [dict(sim, name="a", path=str(data["bags"] / "ep00")),
                       dict(sim, name="b", path=str(data["bags"] / "ep01")),
                       dict(sim, name="c", path=str(data["bags"] / "ep02"), delta_actions=JOINTS),
                       cfg["datasets"][1]]
    td = prepare_data(from_dict(TrainConfig, cfg), log=lambda *a: None)
    stats = {n: NormStats.load(tmp_path / f"run/assets/norm_stats/{n}.json") for n in "abc"}
    for part in ("state", "actions"):
        a, b = (getattr(stats[n], part) for n in "ab")
        np.testing.assert_array_equal(a.q01, b.q01)
        np.testing.assert_array_equal(a.q99, b.q99)
    rows_a, rows_b, rows_c = (ds.state_action_rows() for ds in td.train[:3])
    pooled = QuantileStats.compute(np.concatenate([rows_a[1], rows_b[1]]), 0.02)
    np.testing.assert_allclose(stats["a"].actions.q99, pooled.q99)
    assert not np.allclose(stats["a"].actions.q99, QuantileStats.compute(rows_a[1], 0.02).q99)
    np.testing.assert_allclose(stats["c"].actions.q99, QuantileStats.compute(rows_c[1], 0.02).q99)
