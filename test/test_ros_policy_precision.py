"""The policy node's `precision` parameter reaches the runtime: an unchecked precision fails configure
with the command that checks it (the node stays unconfigured); once checked, the node runs it, on
torch or on another backend (`backend`: openvino)."""

from contextlib import contextmanager

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

from ki_vla_ros.embodiment import load_embodiment  # noqa: E402
from ki_vla_ros.export.cli import check_precisions, export_model_dir  # noqa: E402
from ki_vla_ros.ros.policy_node import SUCCESS, PolicyNode  # noqa: E402
from ki_vla_ros.runtime import Layout  # noqa: E402
from ki_vla_ros.runtime.init_model import init_model_dir  # noqa: E402


@contextmanager
def policy_node(**params):
    """A PolicyNode in a context of its own with these parameters, shut down afterwards."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = PolicyNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    try:
        yield node
    finally:
        node.shutdown()
        node.destroy_node()
        ctx.try_shutdown()


def test_precision_parameter_is_checked_and_passed_to_the_runtime(ros_env, tmp_path):
    emb = load_embodiment("franka_single_arm")
    model = init_model_dir(tmp_path / "m", Layout(emb.camera_names, emb.state_names, emb.action_names),
                           preset="tiny")
    with policy_node(embodiment="franka_single_arm", model=str(model), precision="bf16", num_steps=3) as node:
        assert node.trigger_configure() != SUCCESS and node.lifecycle_state() == "unconfigured"
        assert f"`ki-vla export --model {model} --precision bf16`" in node.configure_error
        assert check_precisions(model, ("bf16",), 3)["torch/bf16"]["ok"]
        assert node.trigger_configure() == SUCCESS, node.configure_error
        assert node.policy.precision == "bf16"
        refused = node.set_parameters([Parameter("precision", value="fp32")])[0]
        assert not refused.successful  # a configuration parameter

    export_model_dir(model, num_steps=3)
    with policy_node(embodiment="franka_single_arm", model=str(model), backend="openvino", num_steps=3) as node:
        assert node.trigger_configure() == SUCCESS, node.configure_error
        assert (node.policy.backend.name, node.policy.precision) == ("openvino", "fp32")
