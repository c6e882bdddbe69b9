"""ros/spin.py: SIGINT ends a node process cleanly, and a shutdown that hangs says where.

The node processes of this package end through `run_node`: the first SIGINT / SIGTERM asks the
spin loop to stop, the node shuts down while the context is valid, then rclpy. If that takes
longer than STUCK_DUMP_S (below the 5 s `ros2 launch` waits before SIGTERM), every thread's stack
is written to stderr, so a hang in a CI log or on a robot names the call it is stuck in.
"""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("rclpy")
from ki_vla_ros.ros.spin import STUCK_DUMP_S  # noqa: E402

pytestmark = pytest.mark.dds

NODE = textwrap.dedent(
    """
    import sys, time
    from rclpy.node import Node
    from ki_vla_ros.ros.spin import exit_process, run_node

    class Slow(Node):
        def __init__(self):
            super().__init__("slow_shutdown")
            print("ready", flush=True)

        def shutdown(self):
            time.sleep(float(sys.argv[1]))
            print("shutdown done", flush=True)

    exit_process(run_node(Slow, "slow", []))
    """
)


def _run(ros_env, shutdown_s: float) -> tuple[int, str, float]:
    proc = subprocess.Popen([sys.executable, "-c", NODE, str(shutdown_s)], env=ros_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=shutdown_s + 20)
    finally:
        proc.kill()
    return proc.returncode, out + err, time.monotonic() - t0


def test_sigint_ends_the_process_without_a_stack_dump(ros_env):
    code, output, took = _run(ros_env, 0.0)
    assert code == 0, output
    assert "shutdown done" in output
    assert "most recent call first" not in output, output
    assert took < STUCK_DUMP_S, took


def test_a_stuck_shutdown_writes_every_threads_stack_then_ends_normally(ros_env):
    code, output, took = _run(ros_env, STUCK_DUMP_S + 1.5)
    assert code == 0, output  # the dump is a diagnosis, not an exit: the shutdown finishes its work
    assert "shutdown done" in output
    dump = output[output.index("most recent call first"):]
    assert 'line' in dump and "in shutdown" in dump, output  # names the call it is stuck in
    assert took >= STUCK_DUMP_S + 1.5, took
