"""One way to run a node process: init, build the node, spin it, shut it down cleanly.

SIGINT / SIGTERM only ask the spin loop to end. rclpy's own handlers would shut the context down
inside the signal handler, while the node's threads and timers still publish (errors such as
"publisher's context is invalid", log messages lost on /rosout, exceptions of destroyed entities
never retrieved). Here the context stays valid until the node has stopped its threads and timers
(``node.shutdown()``) and has been destroyed; only then is rclpy shut down. All of that has
SHUTDOWN_DEADLINE_S from the signal: a teardown that hangs (in the middleware, say) ends the
process with every thread's stack on stderr and exit code 1, not a silent wait for SIGKILL.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.1  # how soon the spin loop notices a signal (Python runs handlers between callbacks)
FINISH_GRACE_S = 0.5
# from the stop signal to the process's end: past a slow teardown on a busy machine, before the
# SIGKILL of `ros2 launch` (SIGTERM 5 s after SIGINT, SIGKILL 10 s later)
SHUTDOWN_DEADLINE_S = 10.0


def spin_node(node: Node, num_threads: int = 4, stop: threading.Event | None = None) -> None:
    """Spin until ``stop`` is set (by SIGINT / SIGTERM in run_node), the context is shut down, or
    the node says it is ``finished`` (a managed node that reached `finalized`). ``num_threads`` 1
    is a single-threaded executor (the least Python work per callback: for nodes whose callbacks
    are all short), more a multi-threaded one."""
    stop = stop or threading.Event()
    executor = SingleThreadedExecutor() if num_threads == 1 else MultiThreadedExecutor(num_threads=num_threads)
    executor.add_node(node)
    finished_at = None
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=POLL_S)
            if getattr(node, "finished", False):
                # a little longer, so the answer to the request that finished it gets out
                finished_at = finished_at or time.monotonic()
                if time.monotonic() - finished_at > FINISH_GRACE_S:
                    break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # the node shut the context down itself (e.g. the sim failed): the executor may notice it
        # as an invalid context. Anything else is a real error.
        if rclpy.ok():
            raise
    finally:
        pool = getattr(executor, "_executor", None)  # a MultiThreadedExecutor's thread pool
        if pool is not None:
            # rclpy 9's MultiThreadedExecutor.shutdown destroys its guard condition before it joins
            # its threads: a callback still running then fails on it ("The following exception
            # was never retrieved: cannot use Destroyable"). Let running callbacks finish first.
            pool.shutdown(wait=True)
        executor.shutdown(timeout_sec=2.0)


class _StopOnSignals:
    """SIGINT / SIGTERM set `stop`; the shutdown that follows has SHUTDOWN_DEADLINE_S.

    Python runs signal handlers in the main thread between bytecodes, so a main thread stuck in a C
    call would never see the signal. The interpreter's C-level handler also writes the signal
    number to a wake-up socket; a watcher thread reads it, sets `stop` and arms the deadline.
    `arm` (also called by run_node before the node's teardown, from the main thread) starts
    faulthandler's watchdog: a C thread that needs no GIL, so it fires even when a middleware call
    hangs holding it. If the process is still there at the deadline, every thread's stack goes to
    stderr ("Timeout (0:00:10)!" and one "most recent call first" block per thread) and the process
    exits with code 1: before `ros2 launch` sends SIGKILL, and saying where it hung. `close`
    cancels it. Main thread only; elsewhere the caller's handlers stay."""

    def __init__(self, stop: threading.Event):
        self.active = threading.current_thread() is threading.main_thread()
        if not self.active:
            return
        self._stop = stop
        self._armed = threading.Lock()  # held from the first arm() on
        self._previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in STOP_SIGNALS}
        self._rx, self._tx = socket.socketpair()
        self._tx.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._tx.fileno(), warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="stop_signals", daemon=True)
        self._watcher.start()

    def arm(self) -> None:
        """Start the shutdown deadline, once: a later call does not extend it."""
        if self.active and self._armed.acquire(blocking=False):
            faulthandler.dump_traceback_later(SHUTDOWN_DEADLINE_S, exit=True)

    def _watch(self) -> None:
        while data := self._rx.recv(64):
            if any(sig in data for sig in STOP_SIGNALS):
                self._stop.set()
                self.arm()
            if 0 in data:  # close(): no signal has number 0
                return

    def close(self) -> None:
        if not self.active:
            return
        self._tx.send(b"\0")  # the watcher ends first, so it cannot arm the deadline after the cancel
        self._watcher.join(timeout=1.0)
        faulthandler.cancel_dump_traceback_later()
        signal.set_wakeup_fd(self._previous_fd)
        self._rx.close()
        self._tx.close()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def exit_process(code: int) -> NoReturn:
    """End the process now, without the interpreter's own teardown; for process entry points after
    run_node, when the node, its threads and rclpy are shut down already. What is left is freeing
    the interpreter's objects (300,000 with torch imported), which took 4-28 s on a busy 2-core
    machine, past the 5 s `ros2 launch` waits between SIGINT and SIGTERM; the OS does it at once."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def run_node(make_node: Callable[[], Node], label: str, args: list[str] | None = None,
             startup_errors: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError),
             num_threads: int = 4, start: Callable[[Node], None] | None = None) -> int:
    """rclpy.init(args), node = make_node(), ``start(node)`` if given (e.g. lifecycle transitions),
    spin until SIGINT / SIGTERM, then ``node.shutdown()`` and destroy it while the context is still
    valid, within SHUTDOWN_DEADLINE_S of the signal (else stacks on stderr and exit code 1, see
    _StopOnSignals). Exit code 1 if the node could not start (the error is printed after `label`)
    or reports `failed`, else 0."""
    stop = threading.Event()
    signals = _StopOnSignals(stop)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        try:
            node = make_node()
            if start is not None:
                start(node)
        except startup_errors as exc:
            print(f"{label}: cannot start: {exc}", file=sys.stderr)
            return 1
        spin_node(node, num_threads, stop)
        return 1 if getattr(node, "failed", None) is not None else 0
    finally:
        signals.arm()
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
        signals.close()
