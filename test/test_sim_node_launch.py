"""launch/sim_demo.launch.py against a colcon install: the sim node and the policy node (on sim
time) come up and the policy node receives the sim's cameras and joint states."""

import os
import sys

import pytest

pytest.importorskip("launch_ros", reason="launch / launch_ros are not installed (ros2 launch unavailable)")
from ros_helpers import HERE, Observer, Proc, ros_environment, wait_until  # noqa: E402

pytestmark = [pytest.mark.dds, pytest.mark.slow]


def test_sim_demo_launch(colcon_install, tmp_path):
    env = ros_environment(tmp_path)
    site = next((colcon_install / "lib").glob("python3*/site-packages"))
    env["AMENT_PREFIX_PATH"] = str(colcon_install)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(HERE)])
    path = colcon_install / "share" / "ki_vla_ros" / "launch" / "sim_demo.launch.py"
    code = ("import sys, ros_helpers; sys.exit(ros_helpers.run_launch_file(sys.argv[1], image_size='64', "
            "task='pick_blue_left', policy_class='ros_helpers:ScriptedPolicy'))")
    proc = Proc([sys.executable, "-c", code, str(path)], env, tmp_path / "launch.log")
    obs = Observer("launch_observer")
    try:
        def nodes():
            return {n for n, _ in obs.node.get_node_names_and_namespaces()}

        assert wait_until(lambda: {"sim_node", "policy_node"} <= nodes(), 40.0), proc.tail()
        assert obs.get_parameter("/policy_node", "use_sim_time") is True
        assert obs.get_parameter("/sim_node", "task") == "pick_blue_left"
        assert obs.get_parameter("/sim_node", "image_size") == 64
        from diagnostic_msgs.msg import DiagnosticArray

        obs.subscribe(DiagnosticArray, "/diagnostics")

        def sees_robot():
            d = obs.latest_diagnostics() or {}
            ages = [v for k, v in d.items() if k.startswith("age_ms")]
            return bool(ages) and "never" not in ages

        assert wait_until(sees_robot, 40.0), (obs.latest_diagnostics(), proc.tail())
    finally:
        obs.close()
        proc.stop(timeout=15.0)
    out = proc.output()
    assert "EXIT sim_node-1 0" in out and "EXIT policy_node-2 0" in out, out[-3000:]
