"""ROS message <-> numpy conversions (no cv_bridge: it is not available as a wheel)."""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Duration, Time
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC3": 3, "8UC1": 1}


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> uint8 [H, W, 3] RGB."""
    enc = msg.encoding.lower() if msg.encoding not in _CHANNELS else msg.encoding
    if enc not in _CHANNELS:
        raise ValueError(f"unsupported image encoding '{msg.encoding}' (rgb8, bgr8, rgba8, bgra8, mono8)")
    ch = _CHANNELS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = np.frombuffer(bytes(msg.data), np.uint8)
    if step < w * ch or len(buf) < step * h:
        raise ValueError(f"image data too short: {len(buf)} bytes for {h}x{w} {msg.encoding} step {step}")
    img = buf[: step * h].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if enc in ("rgb8", "8UC3"):
        return np.ascontiguousarray(img)
    if enc == "bgr8":
        return np.ascontiguousarray(img[..., ::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(img[..., :3])
    if enc == "bgra8":
        return np.ascontiguousarray(img[..., 2::-1])
    return np.ascontiguousarray(np.repeat(img, 3, axis=2))


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> uint8 [H, W, 3] RGB."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode compressed image (format '{msg.format}')")
    return np.ascontiguousarray(bgr[..., ::-1])


def rgb_to_image(rgb: np.ndarray, stamp=None, frame_id: str = ""):
    from sensor_msgs.msg import Image

    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, int(rgb.shape[1]) * 3
    msg.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return msg


def joint_positions(msg, joints: list[str]) -> np.ndarray:
    """Positions of `joints` (by name) from a sensor_msgs/JointState; raises ValueError for a
    missing joint or a non-finite value (such a state is never acted on)."""
    index = {name: i for i, name in enumerate(msg.name)}
    out = np.empty(len(joints), np.float64)
    for k, j in enumerate(joints):
        i = index.get(j)
        if i is None or i >= len(msg.position):
            raise ValueError(f"joint '{j}' missing from JointState (has {list(msg.name)[:8]})")
        value = float(msg.position[i])
        if not math.isfinite(value):
            raise ValueError(f"joint '{j}' position is {value}")
        out[k] = value
    return out


def stamp_seconds(msg) -> float:
    """A message's ``header.stamp`` in seconds (0.0 for an unstamped message)."""
    st = msg.header.stamp
    return st.sec + st.nanosec * 1e-9


def seconds_to_time(t: float) -> Time:
    """Seconds on a ROS clock -> builtin_interfaces/Time."""
    ns = max(0, int(round(t * 1e9)))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def seconds_to_duration(t: float) -> Duration:
    ns = max(0, int(round(t * 1e9)))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_to_seconds(d) -> float:
    return d.sec + d.nanosec * 1e-9


def make_trajectory(
    joints: list[str],
    positions: np.ndarray,
    velocities: np.ndarray | None,
    times: np.ndarray,
    stamp=None,
    frame_id: str = "",
) -> JointTrajectory:
    """trajectory_msgs/JointTrajectory; `stamp` None or zero means "start now" for JTC."""
    msg = JointTrajectory()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.joint_names = list(joints)
    for k in range(len(times)):
        pt = JointTrajectoryPoint()
        pt.positions = [float(v) for v in positions[k]]
        if velocities is not None:
            pt.velocities = [float(v) for v in velocities[k]]
        pt.time_from_start = seconds_to_duration(float(times[k]))
        msg.points.append(pt)
    return msg


def chunk_to_multiarray(
    actions: np.ndarray, labels: tuple[str, str] = ("horizon", "action")
) -> Float64MultiArray:
    """[H, D] -> std_msgs/Float64MultiArray, row-major, with a 2-D layout (H, D)."""
    actions = np.asarray(actions, np.float64)
    h, d = actions.shape
    msg = Float64MultiArray()
    msg.layout.dim = [
        MultiArrayDimension(label=labels[0], size=h, stride=h * d),
        MultiArrayDimension(label=labels[1], size=d, stride=d),
    ]
    msg.layout.data_offset = 0
    msg.data = actions.ravel().tolist()
    return msg


def multiarray_to_chunk(msg) -> np.ndarray:
    dims = msg.layout.dim
    data = np.asarray(msg.data, np.float64)[msg.layout.data_offset :]
    if len(dims) == 2:
        return data[: dims[0].size * dims[1].size].reshape(dims[0].size, dims[1].size)
    return data[None]
