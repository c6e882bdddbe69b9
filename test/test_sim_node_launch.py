"""launch/sim_demo.launch.py against a colcon install: the sim node and the policy node (on sim
time) come up, the policy node receives the sim's cameras and joint states, and with
max_sim_time_s the episode starts at the first command, however long the operator takes."""

import json

import pytest

pytest.importorskip("rclpy")
from ros_helpers import (  # noqa: E402
    Observer,
    Proc,
    installed_env,
    launch_cmd,
    problem_lines,
    require_launch,
    wait_until,
)

require_launch()

pytestmark = [pytest.mark.dds, pytest.mark.slow]


def test_sim_demo_launch(colcon_install, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    env = installed_env(tmp_path, colcon_install)
    path = colcon_install / "share" / "ki_vla_ros" / "launch" / "sim_demo.launch.py"
    proc = Proc(launch_cmd(path, image_size="64", task="pick_blue_left", max_sim_time_s="1.0",
                           policy_class="ros_helpers:ScriptedPolicy"), env, tmp_path / "launch.log", terminal=True)
    obs = Observer("launch_observer")
    status_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
    obs.subscribe(String, "/sim_node/episode_status", status_qos)
    obs.subscribe(DiagnosticArray, "/diagnostics")

    def status():
        msgs = obs.received("/sim_node/episode_status")
        return json.loads(msgs[-1].data) if msgs else {}

    try:
        def nodes():
            return {n for n, _ in obs.node.get_node_names_and_namespaces()}

        assert wait_until(lambda: {"sim_node", "policy_node"} <= nodes(), 40.0), proc.tail()
        assert obs.get_parameter("/policy_node", "use_sim_time") is True
        assert obs.get_parameter("/sim_node", "task") == "pick_blue_left"
        assert obs.get_parameter("/sim_node", "image_size") == 64

        def sees_robot():
            d = obs.latest_diagnostics() or {}
            ages = [v for k, v in d.items() if k.startswith("age_ms")]
            return bool(ages) and "never" not in ages and d.get("state") == "idle"  # configured and active

        assert wait_until(sees_robot, 60.0), (obs.latest_diagnostics(), proc.tail())
        # the operator takes longer than max_sim_time_s to send the instruction: the sim still waits
        assert wait_until(lambda: status().get("sim_time", 0.0) > 2.0, 30.0), status()
        assert status()["waiting_for_command"] and not status()["done"], status()
        assert obs.set_parameter("/policy_node", "instruction", "pick up the blue cube with the left arm").successful
        assert obs.call(Trigger, "/policy_node/start").success
        assert wait_until(lambda: status().get("done"), 60.0), (status(), proc.tail())
        assert not status()["waiting_for_command"] and status()["episode_time"] == pytest.approx(1.0, abs=0.021)
    finally:
        obs.close()
        proc.stop(timeout=30.0)
    out = proc.output()
    assert "EXIT sim_node-1 0" in out and "EXIT policy_node-2 0" in out, out[-3000:]
    assert problem_lines(out) == [], out[-3000:]
