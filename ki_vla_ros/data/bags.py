"""Training episodes from rosbag2 recordings (sqlite3 or mcap, any compression) with `rosbags`.

Which topics matter comes from the embodiment config (`ki_vla_ros.embodiment`): its cameras
(sensor_msgs/Image or CompressedImage), its state sources (sensor_msgs/JointState, joints picked by
name) and its outputs (the commanded actions: trajectory_msgs/JointTrajectory — first point —,
std_msgs/Float64MultiArray for joint_group_position, geometry_msgs/Twist[Stamped] for base_twist).

Time alignment: a regular grid at the embodiment's control rate from the first time every
required topic has spoken to the last message time. Times are header stamps (bag receive time
when a header stamp is zero), in integer nanoseconds. At grid time t_k every topic contributes
its latest message with stamp <= t_k; if that message is older than `max_age_s` (default half a
control period; raise it for cameras slower than the control rate) the step is *stale* (a
dropped or late message), no message at all is *missing*, one that does not deserialise / decode
or lacks a joint is *corrupt*. Any of them makes step k invalid (counted per reason and topic in
the `LoadReport`); nothing is interpolated or filled.

Actions: with ``action_source="commanded"`` the action at step k is the command in force at t_k;
with ``"measured"`` it is the measured position of the output joints at step k + 1 (the last step
has none and is invalid). A sample at step k uses the actions k .. k+H-1 (past the episode end the
last action is held, as the robot does).

Episodes: one per bag, or with ``segment_by="instruction"`` one per message on the instruction
topic (a message with an empty string ends a segment without starting one). The instruction comes
from the instruction topic (std_msgs/String), else from the bag's ``metadata.yaml``
(``custom_data.instruction``), else from the dataset config's fallback; none at all is an error.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from ki_vla_ros.data.episode import Episode, LoadReport
from ki_vla_ros.data.errors import DatasetError, EpisodeError
from ki_vla_ros.embodiment import Embodiment
from ki_vla_ros.runtime.preprocess import resize_with_pad_uint8

NS = 1_000_000_000


def find_bags(path: str | Path) -> list[Path]:
    """A bag folder itself, or every bag folder (one holding metadata.yaml) below `path`, sorted."""
    path = Path(path)
    if (path / "metadata.yaml").is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(path, "no rosbag2 folder (metadata.yaml) found")
    bags = sorted(p.parent for p in path.rglob("metadata.yaml"))
    if not bags:
        raise DatasetError(path, "no rosbag2 folders (metadata.yaml) below it")
    return bags


def _metadata_instruction(bag: Path) -> str:
    try:
        meta = yaml.safe_load((bag / "metadata.yaml").read_text()) or {}
        custom = meta.get("rosbag2_bagfile_information", {}).get("custom_data") or {}
        return str(custom.get("instruction", "") or "")
    except (OSError, yaml.YAMLError, AttributeError):
        return ""


def _stamp_ns(msg, t_bag: int) -> int:
    header = getattr(msg, "header", None)
    if header is not None:
        ns = int(header.stamp.sec) * NS + int(header.stamp.nanosec)
        if ns > 0:
            return ns
    return t_bag


class _Track:
    """Decoded values of one topic, sorted by time."""

    def __init__(self):
        self.times: list[int] = []
        self.values: list = []

    def finish(self):
        order = np.argsort(np.asarray(self.times, np.int64), kind="stable")
        self.t = np.asarray(self.times, np.int64)[order]
        self.v = [self.values[i] for i in order]

    def at(self, grid: np.ndarray, max_age: int) -> tuple[np.ndarray, np.ndarray]:
        """Index of the latest message at or before each grid time (-1: none), and whether it is fresh."""
        idx = np.searchsorted(self.t, grid, side="right") - 1
        fresh = (idx >= 0) & (grid - self.t[np.maximum(idx, 0)] <= max_age)
        return idx, fresh


def _image_to_rgb(msg, msgtype: str) -> np.ndarray:
    from ki_vla_ros.bagio import image_msg_to_rgb

    return image_msg_to_rgb(msg, msgtype)


def read_bag_episodes(bag: str | Path, emb: Embodiment, image_size: int, action_source: str = "commanded",
                      instruction: str = "", instruction_topic: str = "/instruction",
                      segment_by: str = "bag", max_age_s: float = 0.0) -> tuple[list[Episode], LoadReport]:
    """Read one bag into episodes on the control grid (see the module doc). Returns (episodes, report)."""
    from ki_vla_ros.bagio import open_bag

    bag = Path(bag)
    report = LoadReport(str(bag))
    cams = {c.topic: i for i, c in enumerate(emb.cameras)}
    states = {s.topic: s for s in emb.state}
    outputs = {o.topic: o for o in emb.outputs} if action_source == "commanded" else {}
    if action_source not in ("commanded", "measured"):
        raise ValueError(f"action_source: expected 'commanded' or 'measured', got {action_source!r}")
    if action_source == "measured" and any(o.type == "base_twist" for o in emb.outputs):
        raise ValueError(f"{emb.name}: a base_twist output has no measured joints; use action_source commanded")
    tracks: dict[str, _Track] = {t: _Track() for t in [*cams, *states, *outputs]}
    instr_msgs: list[tuple[int, str]] = []
    joint_pos = {name: i for i, name in enumerate(emb.state_names)}

    try:
        _read_messages(open_bag(bag), tracks, instr_msgs, report, instruction_topic, cams, states, outputs,
                       image_size)
    except DatasetError as exc:
        raise EpisodeError(exc.path, exc.problem) from None

    if any(not tr.times for tr in tracks.values()):
        empty = [t for t, tr in tracks.items() if not tr.times]
        report.problems.update({f"no usable messages: {t}": 1 for t in empty})
        return [], report
    for tr in tracks.values():
        tr.finish()

    rate = emb.control_rate_hz
    max_age = int(round((max_age_s or 0.5 / rate) * NS))
    start = max(int(tr.t[0]) for tr in tracks.values())
    stop = max(int(tr.t[-1]) for tr in tracks.values())
    n = int((stop - start) * rate // NS) + 1
    grid = start + np.round(np.arange(n) * (NS / rate)).astype(np.int64)

    v = len(emb.cameras)
    images = np.zeros((n, v, image_size, image_size, 3), np.uint8)
    image_mask = np.zeros((n, v), bool)
    state = np.zeros((n, len(emb.state_names)))
    actions = np.zeros((n, emb.action_dim))
    valid = np.ones(n, bool)
    bad = Counter()

    def gather(topic, write):
        tr = tracks[topic]
        idx, fresh = tr.at(grid, max_age)
        for k in range(n):
            if idx[k] < 0:
                bad[f"missing: {topic}"] += 1
                valid[k] = False
            elif not fresh[k]:
                bad[f"stale: {topic}"] += 1
                valid[k] = False
            else:
                write(k, tr.v[idx[k]])

    for topic, ci in cams.items():
        def put_image(k, img, ci=ci):
            images[k, ci] = img
            image_mask[k, ci] = True
        gather(topic, put_image)
    for topic, src in states.items():
        cols = [joint_pos[j] for j in src.joints]

        def put_state(k, q, cols=cols):
            state[k, cols] = q
        gather(topic, put_state)
    if action_source == "commanded":
        for topic, out in outputs.items():
            sl = slice(*out.action_slice)

            def put_action(k, a, sl=sl):
                actions[k, sl] = a
            gather(topic, put_action)
    else:
        for out in emb.outputs:
            cols = [joint_pos[j] for j in out.joints]
            actions[:-1, slice(*out.action_slice)] = state[1:, cols]
        nxt = np.append(valid[1:], False)
        bad["no next measurement: measured actions"] += int((valid & ~nxt).sum())
        valid &= nxt
    report.problems.update(bad)

    # segments and instructions
    instr_msgs.sort()
    fallback = instr_msgs[0][1] if instr_msgs and instr_msgs[0][1].strip() else ""
    fallback = fallback or _metadata_instruction(bag) or instruction
    if segment_by == "instruction" and instr_msgs:
        bounds = []
        for i, (t, text) in enumerate(instr_msgs):
            end = instr_msgs[i + 1][0] if i + 1 < len(instr_msgs) else grid[-1] + 1
            if text.strip():
                k0, k1 = np.searchsorted(grid, t), np.searchsorted(grid, end)
                if k1 > k0:
                    bounds.append((k0, k1, text))
    elif segment_by in ("bag", "instruction"):
        if not fallback:
            raise ValueError(f"{bag}: no instruction (no message on {instruction_topic}, no custom_data.instruction "
                             f"in metadata.yaml, no fallback 'instruction' in the dataset config)")
        bounds = [(0, n, fallback)]
    else:
        raise ValueError(f"segment_by: expected 'bag' or 'instruction', got {segment_by!r}")

    episodes = []
    for i, (k0, k1, text) in enumerate(bounds):
        name = str(bag) if len(bounds) == 1 else f"{bag}#{i}"
        episodes.append(Episode(name, text, images[k0:k1], image_mask[k0:k1], state[k0:k1], actions[k0:k1],
                                valid[k0:k1].copy(), emb.camera_names, emb.state_names, emb.action_names, rate))
    report.episodes = len(episodes)
    report.steps = sum(len(e) for e in episodes)
    return episodes, report


def _read_messages(bag_ctx, tracks, instr_msgs, report, instruction_topic, cams, states, outputs, image_size) -> None:
    """Every wanted message of the bag into its track (and the instruction messages), counting
    corrupt ones."""
    with bag_ctx as reader:
        wanted = set(tracks) | {instruction_topic}
        conns = [c for c in reader.connections if c.topic in wanted]
        present = {c.topic for c in conns}
        for topic in tracks:
            if topic not in present:
                report.problems[f"missing topic: {topic}"] += 1
        for conn, t_bag, raw in reader.messages(connections=conns):
            topic = conn.topic
            report.messages[topic] += 1
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception:  # noqa: BLE001 - any decoding failure is a corrupt message
                report.problems[f"corrupt: {topic}"] += 1
                continue
            if topic == instruction_topic:
                instr_msgs.append((_stamp_ns(msg, int(t_bag)), str(getattr(msg, "data", ""))))
                continue
            try:
                value = _decode(topic, msg, conn.msgtype, cams, states, outputs, image_size)
            except (ValueError, KeyError, IndexError, AttributeError):
                report.problems[f"corrupt: {topic}"] += 1
                continue
            tr = tracks[topic]
            tr.times.append(_stamp_ns(msg, int(t_bag)))
            tr.values.append(value)


def _decode(topic, msg, msgtype, cams, states, outputs, image_size):
    if topic in cams:
        return resize_with_pad_uint8(_image_to_rgb(msg, msgtype), image_size)
    if topic in states:
        names = list(msg.name)
        pos = np.asarray(msg.position, np.float64)
        q = np.array([pos[names.index(j)] for j in states[topic].joints])  # ValueError: joint missing
        if not np.isfinite(q).all():
            raise ValueError("non-finite joint position")
        return q
    out = outputs[topic]
    if out.type == "joint_trajectory":
        names = list(msg.joint_names)
        pos = np.asarray(msg.points[0].positions, np.float64)
        a = np.array([pos[names.index(j)] for j in out.joints])
    elif out.type == "joint_group_position":
        a = np.asarray(msg.data, np.float64)
        if a.shape != (out.size,):
            raise ValueError("wrong command size")
    else:  # base_twist
        twist = getattr(msg, "twist", msg)
        a = np.array([twist.linear.x, twist.angular.z], np.float64)
    if not np.isfinite(a).all():
        raise ValueError("non-finite command")
    return a
