"""The launch files, run with launch.LaunchService against a `colcon build` install; another
process (this one) sees the node, its namespace and its parameters (YAML + overrides)."""

import os
import sys
import time

import pytest

pytest.importorskip("rclpy")
try:
    import launch  # noqa: F401
    import launch_ros  # noqa: F401
except ImportError as exc:  # launch is not on PyPI: only where ROS 2 (or the shared wheels) is installed
    pytest.skip(
        f"launch / launch_ros not importable ({exc}); install ROS 2 or the launch wheels", allow_module_level=True
    )

from ros_helpers import HERE, Observer, Proc, ros_environment, wait_until  # noqa: E402

pytestmark = [pytest.mark.dds, pytest.mark.slow]


@pytest.mark.parametrize(
    ("launch_file", "embodiment", "output_topic"),
    [
        ("bimanual.launch.py", "aloha_bimanual", "/left_arm_controller/joint_trajectory"),
        ("mobile_bimanual.launch.py", "mobile_aloha", "/cmd_vel"),
    ],
)
def test_launch_file_starts_node_visible_from_another_process(
    colcon_install, tmp_path, launch_file, embodiment, output_topic
):
    env = ros_environment(tmp_path)
    site = next((colcon_install / "lib").glob("python3*/site-packages"))
    env["AMENT_PREFIX_PATH"] = str(colcon_install)
    # the installed package first (not this checkout), the test policy from test/
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(HERE)])
    path = colcon_install / "share" / "ki_vla_ros" / "launch" / launch_file
    code = (
        "import sys, ros_helpers; sys.exit(ros_helpers.run_launch_file(sys.argv[1], namespace='robot1', "
        "policy_class='ros_helpers:ScriptedPolicy', instruction='open the grippers'))"
    )
    proc = Proc([sys.executable, "-c", code, str(path)], env, tmp_path / "launch.log")
    obs = Observer()
    try:

        def node_seen():
            return ("policy_node", "/robot1") in obs.node.get_node_names_and_namespaces()

        assert wait_until(node_seen, 30.0), "node not discovered\n" + proc.tail()
        params = {
            name: obs.get_parameter("/robot1/policy_node", name)
            for name in ("embodiment", "backend", "instruction", "num_steps", "use_sim_time", "max_instruction_chars")
        }
        assert params == {
            "embodiment": embodiment,
            "backend": "torch",
            "instruction": "open the grippers",
            "num_steps": 10,
            "use_sim_time": False,
            "max_instruction_chars": 500,
        }, params
        topics = dict(obs.node.get_topic_names_and_types())
        assert wait_until(
            lambda: "/robot1/policy_node/action_chunk" in dict(obs.node.get_topic_names_and_types()), 5.0
        ), topics
        assert wait_until(lambda: obs.node.count_publishers(output_topic) > 0, 5.0)
    finally:
        obs.close()
        proc.stop(timeout=15.0)
    out = proc.output()
    assert "EXIT policy_node-1 0" in out, out[-3000:]
    assert proc.popen.returncode == 0, out[-3000:]
    time.sleep(0.1)
