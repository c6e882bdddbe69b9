"""Sensor intake without per-message Python work: the newest message per topic, taken on demand
(or every queued one, `drain`, for a recorder).

A policy node needs only the newest image per camera and the newest joint state per topic, and
only when it runs inference. Subscribing with callbacks makes the executor wake, build its wait
set and run Python for every message (three cameras at 30 Hz and two joint-state topics at 100 Hz
are 290 wake-ups a second), and that interpreter time is taken from the inference thread of the
same process (GIL). So the sensor subscriptions live on a node of their own that no executor
spins: DDS keeps each topic's last few messages in the subscription's queue (keep-last QoS) and
:meth:`SensorIntake.take` drains them when the node asks, keeping the newest serialised bytes and
the time DDS received them. Nothing is deserialised here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from rclpy.node import Node
from rclpy.qos import QoSProfile


@dataclass
class Taken:
    raw: bytes  # the message as it came (CDR)
    age_s: float  # wall-clock seconds since DDS received it (0 when the middleware gives no time)


class SensorIntake:
    def __init__(self, context, node_name: str, namespace: str = ""):
        # a leading underscore hides the node from `ros2 node list`; it serves no parameters
        self.node = Node(node_name, namespace=namespace, context=context, start_parameter_services=False,
                         enable_rosout=False)
        self._subs: dict[str, object] = {}
        self._lock = threading.Lock()  # take() may be called from several threads

    def add(self, key: str, msg_type, topic: str, qos: QoSProfile) -> None:
        # no executor spins this node, so the callback never runs: messages wait in the queue
        self._subs[key] = self.node.create_subscription(msg_type, topic, _never_called, qos, raw=True)

    def take(self) -> dict[str, Taken]:
        """The newest message that arrived since the last call, per key (keys without one are
        absent). Older queued messages are dropped."""
        return {key: got[-1] for key, got in self.drain().items() if got}

    def drain(self) -> dict[str, list[Taken]]:
        """Every message queued since the last call, per key, oldest first (a subscription's queue
        keeps its QoS depth: a recorder drains often enough that none is overwritten)."""
        out: dict[str, list[Taken]] = {}
        with self._lock:
            now = time.time_ns()
            for key, sub in self._subs.items():
                got = out[key] = []
                with sub.handle:
                    while (msg := sub.handle.take_message(sub.msg_type, True)) is not None:
                        raw, info = msg
                        received = int(info.get("received_timestamp", 0) or 0)
                        got.append(Taken(raw=raw, age_s=max(0.0, (now - received) * 1e-9) if received > 0 else 0.0))
        return out

    def close(self) -> None:
        with self._lock:
            self._subs.clear()
            self.node.destroy_node()


def _never_called(_msg) -> None:  # pragma: no cover - the intake node is never spun
    raise AssertionError("the sensor intake node must not be spun by an executor")


__all__ = ["SensorIntake", "Taken"]
