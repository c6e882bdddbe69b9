"""Write an :class:`~ki_vla_ros.sim.expert.Episode` as a rosbag2 through the real robot's topics.

Pure Python (``rosbags``); messages are serialised as real ROS 2 types (CDR) from the rosbags
typestore, so ``ros2 bag play`` / ``ros2 bag info`` and any rosbags reader see ordinary bags.

Topics (one message per control step at 50 Hz unless noted):

=====================================  ===================================  =========================
topic                                  type                                 content
=====================================  ===================================  =========================
``/cam_high/image_raw``                ``sensor_msgs/msg/Image``            rgb8, S x S
``/cam_left_wrist/image_raw``          ``sensor_msgs/msg/Image``            rgb8
``/cam_right_wrist/image_raw``         ``sensor_msgs/msg/Image``            rgb8
``/follower_left/joint_states``        ``sensor_msgs/msg/JointState``       7 joints, pos + vel
``/follower_right/joint_states``       ``sensor_msgs/msg/JointState``       7 joints, pos + vel
``/left_arm_controller/joint_trajectory``  ``trajectory_msgs/msg/JointTrajectory``  one point
``/right_arm_controller/joint_trajectory`` ``trajectory_msgs/msg/JointTrajectory``  one point
``/instruction``                       ``std_msgs/msg/String``              once, at t = 0
=====================================  ===================================  =========================

Header stamps and bag timestamps are sim time (seconds since reset -> ns). The trajectory point's
``time_from_start`` is one control period (20 ms): the command is the joint target for the next
control tick. Gripper values are normalised (0 closed .. 1 open), as everywhere in the sim.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ki_vla_ros.bagio import iter_decoded, typestore
from ki_vla_ros.bagio import write_bag as write_records
from ki_vla_ros.sim.aloha import ARM_SIDES, CONTROL_DT, JOINT_NAMES

TYPESTORE = typestore()

IMAGE_TOPICS = {c: f"/{c}/image_raw" for c in ("cam_high", "cam_left_wrist", "cam_right_wrist")}
JOINT_STATE_TOPICS = {s: f"/follower_{s}/joint_states" for s in ARM_SIDES}
TRAJECTORY_TOPICS = {s: f"/{s}_arm_controller/joint_trajectory" for s in ARM_SIDES}
INSTRUCTION_TOPIC = "/instruction"

IMAGE_TYPE = "sensor_msgs/msg/Image"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"
STRING_TYPE = "std_msgs/msg/String"

#: topic -> type of everything an episode bag holds
TOPIC_TYPES = {
    **{t: IMAGE_TYPE for t in IMAGE_TOPICS.values()},
    **{t: JOINT_STATE_TYPE for t in JOINT_STATE_TOPICS.values()},
    **{t: TRAJECTORY_TYPE for t in TRAJECTORY_TOPICS.values()},
    INSTRUCTION_TOPIC: STRING_TYPE,
}

_T = TYPESTORE.types
Time = _T["builtin_interfaces/msg/Time"]
Duration = _T["builtin_interfaces/msg/Duration"]
Header = _T["std_msgs/msg/Header"]
Image = _T[IMAGE_TYPE]
JointState = _T[JOINT_STATE_TYPE]
JointTrajectory = _T[TRAJECTORY_TYPE]
JointTrajectoryPoint = _T["trajectory_msgs/msg/JointTrajectoryPoint"]
String = _T[STRING_TYPE]


def _ns(t: float) -> int:
    return int(round(t * 1e9))


def _header(t: float, frame_id: str = "") -> Header:
    ns = _ns(t)
    return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=frame_id)


def arm_joint_names(side: str) -> list[str]:
    return [n for n in JOINT_NAMES if n.startswith(side + "_")]


def write_bag(episode, path, storage: str = "mcap", compress: bool = True) -> Path:
    """Write ``episode`` to the rosbag2 directory ``path`` (must not exist). Returns ``path``.

    ``compress``: per-message zstd (standard rosbag2 message compression; rendered images shrink
    ~20x). ``storage``: ``"mcap"`` or ``"sqlite3"``.
    """
    path = Path(path)
    empty = np.zeros(0, dtype=np.float64)
    step = Duration(sec=0, nanosec=_ns(CONTROL_DT))

    def records():
        t0 = float(episode.timestamps[0]) if len(episode) else 0.0
        yield INSTRUCTION_TOPIC, STRING_TYPE, _ns(t0), String(data=episode.instruction)
        for k, t in enumerate(np.asarray(episode.timestamps, dtype=float)):
            for cam, topic in IMAGE_TOPICS.items():
                if cam not in episode.images:
                    continue
                img = np.ascontiguousarray(episode.images[cam][k], dtype=np.uint8)
                h, wd = img.shape[:2]
                yield topic, IMAGE_TYPE, _ns(t), Image(header=_header(t, cam), height=h, width=wd, encoding="rgb8",
                                                       is_bigendian=0, step=3 * wd, data=img.reshape(-1))
            for a, side in enumerate(ARM_SIDES):
                sl = slice(7 * a, 7 * a + 7)
                names = arm_joint_names(side)
                yield JOINT_STATE_TOPICS[side], JOINT_STATE_TYPE, _ns(t), JointState(
                    header=_header(t), name=names,
                    position=np.asarray(episode.joint_positions[k, sl], dtype=np.float64),
                    velocity=np.asarray(episode.joint_velocities[k, sl], dtype=np.float64),
                    effort=empty)
                point = JointTrajectoryPoint(
                    positions=np.asarray(episode.actions[k, sl], dtype=np.float64),
                    velocities=empty, accelerations=empty, effort=empty, time_from_start=step)
                yield (TRAJECTORY_TOPICS[side], TRAJECTORY_TYPE, _ns(t),
                       JointTrajectory(header=_header(t), joint_names=names, points=[point]))

    return write_records(path, records(), storage=storage, compress=compress)


def read_bag(path) -> dict:
    """Read an episode bag back (for checks and the training path).

    Returns ``{"instruction": str, "topics": {topic: msgtype}, "counts": {topic: n},
    "timestamps": [T] (s, from the joint states), "joint_positions": [T, 14],
    "actions": [T, 14], "images": {camera: [T, H, W, 3] uint8}}``.
    """
    out = {"instruction": None, "topics": {}, "counts": {}}
    per = {t: [] for t in TOPIC_TYPES}
    for topic, msgtype, _t_ns, msg in iter_decoded(path):
        out["topics"][topic] = msgtype
        per.setdefault(topic, []).append(msg)
    out["counts"] = {t: len(v) for t, v in per.items() if v}
    if per[INSTRUCTION_TOPIC]:
        out["instruction"] = per[INSTRUCTION_TOPIC][0].data

    def stamp(m):
        return m.header.stamp.sec + m.header.stamp.nanosec * 1e-9

    js = [per[JOINT_STATE_TOPICS[s]] for s in ARM_SIDES]
    tr = [per[TRAJECTORY_TOPICS[s]] for s in ARM_SIDES]
    out["timestamps"] = np.array([stamp(m) for m in js[0]])
    out["joint_positions"] = np.array(
        [np.concatenate([a.position, b.position]) for a, b in zip(*js, strict=True)]
    )
    out["actions"] = np.array(
        [np.concatenate([a.points[0].positions, b.points[0].positions]) for a, b in zip(*tr, strict=True)]
    )
    out["joint_names"] = list(js[0][0].name) + list(js[1][0].name) if js[0] else []
    out["images"] = {
        cam: np.stack([m.data.reshape(m.height, m.width, 3) for m in per[topic]])
        for cam, topic in IMAGE_TOPICS.items()
        if per[topic]
    }
    return out
