"""Episodes as rosbag2 through the real robot topics, read back with rosbags."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from ki_vla_ros.sim.expert import rollout
from ki_vla_ros.sim.record import TOPIC_TYPES, TYPESTORE, read_bag, write_bag

EXPECTED = {
    "/cam_high/image_raw": "sensor_msgs/msg/Image",
    "/cam_left_wrist/image_raw": "sensor_msgs/msg/Image",
    "/cam_right_wrist/image_raw": "sensor_msgs/msg/Image",
    "/follower_left/joint_states": "sensor_msgs/msg/JointState",
    "/follower_right/joint_states": "sensor_msgs/msg/JointState",
    "/left_arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/right_arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/instruction": "std_msgs/msg/String",
}


@pytest.fixture(scope="module")
def episode():
    return rollout("pick_blue_right", 2, image_size=64)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_round_trip(episode, tmp_path, storage):
    assert TOPIC_TYPES == EXPECTED
    path = write_bag(episode, tmp_path / "ep", storage=storage)
    back = read_bag(path)
    T = len(episode)
    assert back["topics"] == EXPECTED
    assert back["counts"] == {t: (1 if t == "/instruction" else T) for t in EXPECTED}
    assert back["instruction"] == "pick up the blue cube with the right arm"
    assert np.allclose(back["timestamps"], episode.timestamps)
    assert np.allclose(back["joint_positions"], episode.joint_positions)
    assert np.allclose(back["actions"], episode.actions)
    assert back["joint_names"] == list(episode.joint_names)
    for cam, imgs in episode.images.items():
        assert np.array_equal(back["images"][cam], imgs)


def test_bag_messages_look_like_the_robot(episode, tmp_path):
    path = write_bag(episode, tmp_path / "ep")
    with Reader(path) as r:
        seen = set()
        for c, ts, raw in r.messages():
            msg = TYPESTORE.deserialize_cdr(raw, c.msgtype)
            if c.topic in seen:
                continue
            seen.add(c.topic)
            if c.msgtype == "sensor_msgs/msg/Image":
                assert msg.encoding == "rgb8" and msg.height == msg.width == 64 and msg.step == 192
            elif c.msgtype == "sensor_msgs/msg/JointState":
                side = c.topic.split("_")[1].split("/")[0]
                assert list(msg.name) == [f"{side}_{j}" for j in ("waist", "shoulder", "elbow",
                                          "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")]
                assert len(msg.position) == 7
            elif c.msgtype == "trajectory_msgs/msg/JointTrajectory":
                assert len(msg.points) == 1 and len(msg.points[0].positions) == 7
                tfs = msg.points[0].time_from_start
                assert tfs.sec == 0 and tfs.nanosec == 20_000_000
            if hasattr(msg, "header"):
                assert ts == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    assert seen == set(EXPECTED)
