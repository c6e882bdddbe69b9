"""Rosbag episodes: values against what was written, alignment problems counted, chunks, mixture."""

import numpy as np
import pytest

from ki_vla_ros.data.bags import read_bag_episodes
from ki_vla_ros.data.mixture import MixtureSampler
from ki_vla_ros.data.synthetic import write_aloha_bag, write_vlm_jsonl
from ki_vla_ros.data.vlm import load_vlm_jsonl, split_by_image
from ki_vla_ros.embodiment import load_embodiment

EMB = load_embodiment("aloha_bimanual")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_clean_bag_matches_written_values(tmp_path, storage):
    a = write_aloha_bag(tmp_path / "bag", steps=30, seed=1, image_size=40, storage=storage)
    eps, rep = read_bag_episodes(tmp_path / "bag", EMB, image_size=32)
    assert len(eps) == 1 and not rep.problems
    e = eps[0]
    assert e.instruction == "pick up the blue cube" and len(e) == 30 and e.valid.all()
    np.testing.assert_array_equal(e.state, a["q"])
    np.testing.assert_array_equal(e.actions, a["actions"])
    assert e.images.shape == (30, 3, 32, 32, 3) and e.image_mask.all()
    # resized with padding (40 -> 32, square: no bars); colour encodes step and camera
    assert e.images[7, 1, 16, 16, 0] == (5 * 7 + 40) % 256
    assert e.state_names == EMB.state_names and e.action_names == EMB.action_names
    # chunks: H actions from k, the last one held past the end
    np.testing.assert_array_equal(e.chunk(3, 5), a["actions"][3:8])
    np.testing.assert_array_equal(e.chunk(28, 5), a["actions"][[28, 29, 29, 29, 29]])
    assert len(e.sample_steps(5)) == 30


def test_problems_are_counted_and_steps_dropped(tmp_path):
    write_aloha_bag(tmp_path / "bag", steps=30, drop={"/cam_high/image_raw": [5]},
                    delay={"/follower_left/joint_states": [10]}, corrupt={"/follower_right/joint_states": [20]})
    eps, rep = read_bag_episodes(tmp_path / "bag", EMB, image_size=32)
    e = eps[0]
    assert np.flatnonzero(~e.valid).tolist() == [5, 10, 20]
    assert rep.problems["stale: /cam_high/image_raw"] == 1
    assert rep.problems["stale: /follower_left/joint_states"] == 1
    assert rep.problems["corrupt: /follower_right/joint_states"] == 1
    assert rep.problems["stale: /follower_right/joint_states"] == 1
    # no sample whose observation or chunk touches an invalid step
    steps = e.sample_steps(4)
    for bad in (5, 10, 20):
        assert not any(k <= bad < k + 4 for k in steps)
    assert 0 in steps and 29 in steps


def test_measured_actions_are_next_positions(tmp_path):
    a = write_aloha_bag(tmp_path / "bag", steps=20)
    eps, _ = read_bag_episodes(tmp_path / "bag", EMB, 32, action_source="measured")
    e = eps[0]
    np.testing.assert_array_equal(e.actions[:-1], a["q"][1:])
    assert not e.valid[-1] and e.valid[:-1].all()


def test_missing_instruction_is_an_error(tmp_path):
    write_aloha_bag(tmp_path / "bag", steps=10, instruction=" ")
    with pytest.raises(ValueError, match="no instruction"):
        read_bag_episodes(tmp_path / "bag", EMB, 32)
    eps, _ = read_bag_episodes(tmp_path / "bag", EMB, 32, instruction="fallback task")
    assert eps[0].instruction == "fallback task"


def test_mixture_weights_epochs_and_exact_resume():
    s = MixtureSampler([10, 40], [3.0, 1.0], seed=7)
    draws = s.draw(4000)
    share = np.mean([d == 0 for d, _ in draws])
    assert abs(share - 0.75) < 0.03
    firsts = [i for d, i in draws if d == 0][:10]
    assert sorted(firsts) == list(range(10))  # each item once per epoch
    a = MixtureSampler([10, 40], [3.0, 1.0], seed=7)
    a.draw(123)
    state = a.state_dict()
    import json

    b = MixtureSampler([10, 40], [3.0, 1.0], seed=7)
    b.load_state_dict(json.loads(json.dumps(state)))
    assert a.draw(500) == b.draw(500)
    assert MixtureSampler([10, 40], [3.0, 1.0], seed=8).draw(50) != MixtureSampler([10, 40], [3.0, 1.0], 7).draw(50)
    with pytest.raises(ValueError, match="sizes"):
        MixtureSampler([11, 40], [1, 1], 7).load_state_dict(state)


def test_vlm_jsonl_and_split_by_image(tmp_path):
    path = write_vlm_jsonl(tmp_path / "vlm", n_images=20)
    recs = load_vlm_jsonl(path)
    assert len(recs) == 40 and recs[0].images[0].is_file()
    tr, va = split_by_image(recs, 0.2, seed=0)
    assert va and tr and not ({recs[i].images[0] for i in tr} & {recs[i].images[0] for i in va})
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png", "prompt": "p"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_vlm_jsonl(tmp_path / "bad.jsonl")


def test_cache_inside_the_dataset_folder_is_reused(tmp_path):
    from ki_vla_ros.data.config import DatasetConfig
    from ki_vla_ros.data.robot import load_robot_episodes

    write_aloha_bag(tmp_path / "data" / "ep0", steps=12)
    cfg = DatasetConfig(name="sim", type="rosbag", path=str(tmp_path / "data"), embodiment="aloha_bimanual")
    logs = []
    first, _ = load_robot_episodes(cfg, 32, tmp_path / "data" / "cache", log=logs.append)
    second, _ = load_robot_episodes(cfg, 32, tmp_path / "data" / "cache", log=logs.append)
    assert len(logs) == 1  # read once: the cache's own files are not sources of the key
    assert len(list((tmp_path / "data" / "cache").iterdir())) == 1
    np.testing.assert_array_equal(first[0].state, second[0].state)
    write_aloha_bag(tmp_path / "data" / "ep1", steps=12)  # a new source file does change it
    third, _ = load_robot_episodes(cfg, 32, tmp_path / "data" / "cache", log=logs.append)
    assert len(logs) == 2 and len(third) == 2


def test_cache_shared_by_configs_that_read_alike(tmp_path):
    """A VLM base that takes only the layout from the bags (weight 0) and a robot stage with delta
    actions and oversampled starts read the same files the same way: one cache, read once; a reading
    option (image size, max_episodes) gives another."""
    import dataclasses

    from ki_vla_ros.data.config import DatasetConfig
    from ki_vla_ros.data.robot import load_robot_episodes

    write_aloha_bag(tmp_path / "data" / "ep0", steps=12)
    base = DatasetConfig(name="aloha_sim", type="rosbag", path=str(tmp_path / "data"), embodiment="aloha_bimanual",
                         weight=0.0, val_episodes=0)
    stage = dataclasses.replace(base, name="sim", weight=1.0, val_fraction=0.0, start_steps=4, start_repeat=2,
                                delta_actions=["left_waist"])
    cache, logs = tmp_path / "cache", []
    first, _ = load_robot_episodes(base, 32, cache, log=logs.append)
    second, _ = load_robot_episodes(stage, 32, cache, log=logs.append)
    assert len(logs) == 1 and [p.name.split("-")[0] for p in cache.iterdir()] == ["data"]
    np.testing.assert_array_equal(first[0].images, second[0].images)
    load_robot_episodes(stage, 48, cache, log=logs.append)
    load_robot_episodes(dataclasses.replace(stage, max_episodes=1), 32, cache, log=logs.append)
    assert len(logs) == 3 and len(list(cache.iterdir())) == 3


def test_folders_read_part_of_a_data_folder_in_their_order(tmp_path):
    """`folders` reads only the named folders below `path`, in the listed order, and keys the cache by
    them (a stage that reads two of four generators' folders); a bad entry names the key."""
    import dataclasses

    from ki_vla_ros.data.config import DatasetConfig
    from ki_vla_ros.data.robot import load_robot_episodes

    for name, steps in (("a", 10), ("b", 12), ("c", 14)):
        write_aloha_bag(tmp_path / "data" / name / "ep0", steps=steps)
    cfg = DatasetConfig(name="sim", type="rosbag", path=str(tmp_path / "data"), embodiment="aloha_bimanual")
    cache, logs = tmp_path / "cache", []
    every, _ = load_robot_episodes(cfg, 32, cache, log=logs.append)
    part, _ = load_robot_episodes(dataclasses.replace(cfg, folders=["c", "a"]), 32, cache,
                                  log=logs.append)
    assert [len(e.state) for e in every] == [10, 12, 14]
    assert [len(e.state) for e in part] == [14, 10]  # c then a, b left out
    assert len(logs) == 2 and len(list(cache.iterdir())) == 2
    for bad in (["../other"], ["/abs"], [""]):
        with pytest.raises(ValueError, match="folders"):
            dataclasses.replace(cfg, folders=bad).validate()
    with pytest.raises(ValueError, match="folders"):
        DatasetConfig(name="v", type="vlm", path="x.jsonl", folders=["a"]).validate()


def test_episode_starts_oversampled(tmp_path):
    from ki_vla_ros.data.config import DatasetConfig
    from ki_vla_ros.data.robot import RobotDataset

    write_aloha_bag(tmp_path / "bag", steps=20)
    eps, _ = read_bag_episodes(tmp_path / "bag", EMB, image_size=32)
    plain, starts = RobotDataset(eps, 5), RobotDataset(eps, 5, start_steps=4, start_repeat=3)
    assert len(plain) == 20 and len(starts) == 20 + 4 * 2 and starts.distinct == plain.distinct == 20
    steps = starts.index[:, 1]
    assert [int((steps == k).sum()) for k in range(6)] == [3, 3, 3, 3, 1, 1]
    np.testing.assert_array_equal(starts.raw(1)["chunk"], plain.raw(0)["chunk"])  # a repeat is the same sample
    for bad, msg in [({"start_repeat": 0}, "start_repeat"), ({"start_steps": -1}, "start_steps"),
                     ({"start_repeat": 2}, "set start_steps > 0")]:
        with pytest.raises(ValueError, match=msg):
            DatasetConfig(name="d", type="rosbag", path="p", embodiment="aloha_bimanual", **bad).validate()
