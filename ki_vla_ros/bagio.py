"""rosbag2 recordings (sqlite3 or mcap), read and written with the pure-Python `rosbags` library
(no rclpy): the one place the project touches bag files.

``iter_raw(bag)`` yields ``(topic, msgtype, t_ns, raw_cdr)`` in time order: the CDR bytes as
recorded, which ``rclpy.serialization.deserialize_message`` turns into rclpy messages (used by
``ki-vla replay``). ``iter_decoded(bag)`` yields rosbags' own message objects (used offline by
``ki-vla eval-bag``, the sim's episode reader). ``write_bag`` writes one (the sim's recorder,
tests, tools).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ki_vla_ros.data.errors import DatasetError

DEFAULT_STORE = "ros2_humble"


def typestore(name: str = DEFAULT_STORE):
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores(name))


@dataclass
class TopicInfo:
    topic: str
    msgtype: str
    count: int


@contextmanager
def open_bag(bag: str | Path):
    """An open rosbags AnyReader. A bag that cannot be read (truncated, not a bag) raises
    `DatasetError` naming it, a missing one FileNotFoundError."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.rosbag2 import ReaderError

    path = Path(bag)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    try:
        with AnyReader([path], default_typestore=typestore()) as reader:
            yield reader
    except (AnyReaderError, ReaderError, EOFError, struct.error) as exc:
        raise DatasetError(path, f"cannot read the bag ({type(exc).__name__}: {exc})") from None


def bag_topics(bag: str | Path) -> list[TopicInfo]:
    with open_bag(bag) as reader:
        return [TopicInfo(c.topic, c.msgtype, c.msgcount) for c in reader.connections]


def _iter(bag: str | Path, topics: Iterable[str] | None, decode: bool) -> Iterator[tuple[str, str, int, Any]]:
    wanted = set(topics) if topics else None
    with open_bag(bag) as reader:
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:  # rosbags reads every connection when given none
            return
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, int(t_ns), reader.deserialize(raw, conn.msgtype) if decode else bytes(raw)


def iter_raw(bag: str | Path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    return _iter(bag, topics, decode=False)


def iter_decoded(bag: str | Path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, Any]]:
    return _iter(bag, topics, decode=True)


def first_string(bag: str | Path, topic: str = "/instruction") -> str | None:
    """The first std_msgs/String on `topic` (e.g. the instruction a recording was made with), or None."""
    for _topic, _msgtype, _t, msg in iter_decoded(bag, [topic]):
        return str(msg.data)
    return None


def write_bag(
    path: str | Path, records: Iterable[tuple[str, str, int, Any]], storage: str = "sqlite3",
    compress: bool = False,
) -> Path:
    """Write ``(topic, msgtype, t_ns, rosbags message)`` records to a new rosbag2 at ``path``.
    ``compress``: per-message zstd (standard rosbag2 message compression)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    store = typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    conns = {}
    writer = Writer(Path(path), version=8, storage_plugin=plugin)
    if compress:
        writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
    with writer:
        for topic, msgtype, t_ns, msg in records:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conns[topic], int(t_ns), bytes(store.serialize_cdr(msg, msgtype)))
    return Path(path)


# ------------------------------------------------------------------- rosbags message -> numpy


def image_msg_to_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """A rosbags Image / CompressedImage -> uint8 [H, W, 3] RGB (same rules as the node)."""
    data = np.asarray(msg.data, np.uint8)
    if msgtype.endswith("CompressedImage"):
        import cv2

        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("cannot decode compressed image")
        return np.ascontiguousarray(bgr[..., ::-1])
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
    enc = msg.encoding
    if enc not in channels:
        raise ValueError(f"unsupported image encoding '{enc}'")
    ch = channels[enc]
    img = data[: msg.step * msg.height].reshape(msg.height, msg.step)[:, : msg.width * ch]
    img = img.reshape(msg.height, msg.width, ch)
    if enc == "bgr8":
        img = img[..., ::-1]
    elif enc == "rgba8":
        img = img[..., :3]
    elif enc == "bgra8":
        img = img[..., 2::-1]
    elif enc == "mono8":
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


__all__ = [
    "TopicInfo",
    "bag_topics",
    "iter_raw",
    "iter_decoded",
    "write_bag",
    "image_msg_to_rgb",
    "typestore",
]
