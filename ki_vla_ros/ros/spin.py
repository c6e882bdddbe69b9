"""One way to run a node process: init, build the node, spin it, shut it down cleanly."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node


def spin_node(node: Node, num_threads: int = 4) -> None:
    """Spin until shutdown: ``num_threads`` 1 is a single-threaded executor (the least Python work
    per callback: for nodes whose callbacks are all short), more a multi-threaded one."""
    executor = SingleThreadedExecutor() if num_threads == 1 else MultiThreadedExecutor(num_threads=num_threads)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT / SIGTERM shut the context down; the executor may notice it as an invalid
        # context rather than ExternalShutdownException. Anything else is a real error.
        if rclpy.ok():
            raise
    finally:
        executor.shutdown(timeout_sec=2.0)


def run_node(make_node: Callable[[], Node], label: str, args: list[str] | None = None,
             startup_errors: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError),
             num_threads: int = 4) -> int:
    """rclpy.init(args), node = make_node(), spin until shutdown; exit code 1 if the node could not
    start (the error is printed after `label`) or reports `failed`, else 0."""
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
        except startup_errors as exc:
            print(f"{label}: cannot start: {exc}", file=sys.stderr)
            return 1
        spin_node(node, num_threads)
        return 1 if getattr(node, "failed", None) is not None else 0
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
