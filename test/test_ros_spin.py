"""ros/spin.py: SIGINT ends a node process cleanly, and a shutdown that hangs says where and ends.

The node processes of this package end through `run_node`: the first SIGINT / SIGTERM asks the
spin loop to stop, the node shuts down while the context is valid, then rclpy. If that takes
longer than SHUTDOWN_DEADLINE_S (before `ros2 launch` would SIGKILL it), every thread's stack is
written to stderr and the process exits with code 1, so a hang in a CI log or on a robot names the
call it is stuck in.
"""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("rclpy")
from ki_vla_ros.ros.spin import SHUTDOWN_DEADLINE_S  # noqa: E402

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
    assert took < SHUTDOWN_DEADLINE_S, took


def test_a_stuck_shutdown_writes_every_threads_stack_and_ends_at_the_deadline(ros_env):
    code, output, took = _run(ros_env, SHUTDOWN_DEADLINE_S + 5.0)
    assert code == 1, output
    assert "shutdown done" not in output
    assert "Timeout (0:00:" in output
    dump = output[output.index("most recent call first"):]
    assert "line" in dump and "in shutdown" in dump, output  # names the call it is stuck in
    assert SHUTDOWN_DEADLINE_S <= took < SHUTDOWN_DEADLINE_S + 3.0, took
