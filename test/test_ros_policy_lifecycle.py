"""The policy node's lifecycle in this process (no other DDS peer): what configure builds and what
cleanup and shutdown give back, and the one-line hint when an embodiment has no model. The same
transitions over the lifecycle_msgs services from another process: test_ros_policy_node.py."""

import gc
import weakref

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

from ki_vla_ros.ros.policy_node import SUCCESS, PolicyNode  # noqa: E402


@pytest.fixture
def make_node(ros_env):
    made = []

    def make(**params):
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        node = PolicyNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        made.append((ctx, node))
        return node

    yield make
    for ctx, node in made:
        node.shutdown()
        node.destroy_node()
        ctx.try_shutdown()


def test_configure_warms_up_once_and_cleanup_and_shutdown_free_the_model(make_node):
    node = make_node(policy_class="ros_helpers:ScriptedPolicy", embodiment="franka_single_arm")
    assert node.lifecycle_state() == "unconfigured" and node.policy is None
    assert node.trigger_configure() == SUCCESS, node.configure_error
    assert node.lifecycle_state() == "inactive" and node.status == "inactive"
    assert node.policy.calls == 1 and node._warmup_ms >= 25.0  # one warm-up (the policy sleeps 30 ms)
    assert node.count_publishers("/forward_position_controller/commands") == 1
    model = weakref.ref(node.policy)
    assert node.trigger_cleanup() == SUCCESS
    gc.collect()
    assert model() is None, gc.get_referrers(model())  # nothing holds the model any more
    assert node.count_publishers("/forward_position_controller/commands") == 0
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    assert node.status == "idle"
    model = weakref.ref(node.policy)
    node.shutdown()
    gc.collect()
    assert node.lifecycle_state() == "finalized" and node.finished and model() is None


def test_missing_model_says_how_to_make_one_and_leaves_the_node_unconfigured(make_node):
    node = make_node(embodiment="mobile_aloha")
    assert node.trigger_configure() != SUCCESS
    assert node.lifecycle_state() == "unconfigured"
    assert "`ki-vla init-model models/mobile_aloha_ki --embodiment mobile_aloha`" in node.configure_error
    assert "model:=" in node.configure_error and "\n" not in node.configure_error
    # a configuration parameter can be set now (not once configured), and fixes it
    assert node.set_parameters([Parameter("policy_class", value="ros_helpers:ScriptedMobilePolicy")])[0].successful
    assert node.trigger_configure() == SUCCESS and node.configure_error == ""
    refused = node.set_parameters([Parameter("model", value="elsewhere")])[0]
    assert not refused.successful and "unconfigured" in refused.reason


def test_a_policy_whose_actions_do_not_fit_fails_at_configure(make_node):
    node = make_node(policy_class="ros_helpers:ScriptedPolicy", embodiment="mobile_aloha")  # 14 of 16 actions
    assert node.trigger_configure() != SUCCESS
    assert "16" in node.configure_error and node.lifecycle_state() == "unconfigured"


def test_ki_vla_run_without_a_model_exits_1_with_the_hint(ros_env):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "run", "--embodiment", "franka_single_arm"],
                          env=ros_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ki-vla run: cannot start: configure failed: model folder models/franka_ki not found"), last
    assert "`ki-vla init-model models/franka_ki --embodiment franka_single_arm`" in last
    assert "Traceback" not in proc.stderr


def test_ki_vla_run_passes_precision_to_the_node(ros_env):
    """--precision reaches the node: bf16 on a model folder that has not checked it is refused at
    configure with the reason (exit 1), where the default runs."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "run", "--model", "models/aloha_sim_ki",
                           "--precision", "bf16"], env=ros_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ki-vla run: cannot start: configure failed:") and "bf16" in last, last
    assert "Traceback" not in proc.stderr
