"""A bag written with rosbags replays into the node (`ki-vla replay`), the node runs as `ki-vla run`
with a real (tiny, random-weight) model folder, and is commanded with `ki-vla command`: three
processes plus this observer, over real DDS."""

import math
import signal
import sys
import time

import pytest

pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from ros_helpers import (  # noqa: E402
    Observer,
    Proc,
    problem_lines,
    ros_environment,
    tiny_model_dir,
    wait_until,
    write_aloha_bag,
)
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

pytestmark = [pytest.mark.dds, pytest.mark.slow]

LEFT = "/left_arm_controller/joint_trajectory"


def _cli(func: str, *args: str) -> list[str]:
    code = f"import sys; from ki_vla_ros.ros.cli_commands import {func}; sys.exit({func}(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def test_bag_replays_into_node_run_by_cli(tmp_path):
    env = ros_environment(tmp_path)
    bag = write_aloha_bag(tmp_path / "rec", duration_s=6.0, cam_hz=10.0, state_hz=50.0)
    model = tiny_model_dir(tmp_path / "tiny")
    # the tiny model needs ~0.3 s per chunk on this CPU: run the control at 10 Hz so a 10-step
    # chunk (1 s) outlives the inference; latency compensation drops what passed meanwhile
    node = Proc(
        _cli(
            "run_main",
            "--embodiment",
            "aloha_bimanual",
            "--model",
            str(model),
            "--node-name",
            "policy_node",
            "-p",
            "control_rate_hz:=10.0",
            "-p",
            "execute_steps:=5",
            "-p",
            "num_steps:=2",
            "-p",
            "max_inference_s:=3.0",
            "-p",
            "stale_timeout_s:=0.5",
        ),
        env,
        tmp_path / "node.log",
    )
    obs = Observer()
    obs.subscribe(JointTrajectory, LEFT)
    obs.subscribe(DiagnosticArray, "/diagnostics")
    replay = None
    try:
        assert wait_until(lambda: obs.node.count_publishers(LEFT) > 0 and obs.latest_diagnostics(), 40.0), node.tail()
        cmd = Proc(_cli("command_main", "pick up the red cube", "--start"), env, tmp_path / "cmd.log")
        assert cmd.popen.wait(30) == 0, cmd.tail()
        assert "instruction set" in cmd.output()
        bad = Proc(_cli("command_main", ""), env, tmp_path / "cmd_bad.log")
        assert bad.popen.wait(30) == 1 and "refused" in bad.output()
        t0 = time.monotonic()
        assert obs.received(LEFT) == []  # running, but no data yet: nothing commanded
        replay = Proc(
            _cli("replay_main", str(bag), "--wait-subscribers", "10", "--rate", "1.0"), env, tmp_path / "replay.log"
        )
        assert wait_until(lambda: len([m for m in obs.received(LEFT, t0) if len(m.points) > 1]) >= 2, 25.0), (
            node.tail() + replay.tail()
        )
        chunks = [m for m in obs.received(LEFT, t0) if len(m.points) > 1]
        for msg in chunks:
            assert msg.joint_names[0] == "left_waist"
            assert all(math.isfinite(v) for p in msg.points for v in p.positions)
        # diagnostics come every 0.5 s: wait for one published after the chunks
        assert wait_until(
            lambda: (obs.latest_diagnostics() or {}).get("last_chunk_instruction") == "pick up the red cube", 5.0
        ), obs.latest_diagnostics()
        assert replay.popen.wait(30) == 0, replay.tail()
        assert "replayed" in replay.output()
        # the bag has ended: the data goes stale and the node holds, saying why
        assert wait_until(lambda: obs.latest_diagnostics().get("state") == "holding", 5.0), node.tail()
        assert "stale" in obs.latest_diagnostics()["hold_reason"]
    finally:
        obs.close()
        if replay is not None:
            replay.stop()
        code = node.stop(timeout=15.0, sig=signal.SIGTERM)  # as a service manager stops it
    assert code == 0, node.tail()
    assert problem_lines(node.output()) == [], node.tail()  # SIGTERM while running: a clean exit
    assert "stopped" in node.output()  # it held the robot on the way out
