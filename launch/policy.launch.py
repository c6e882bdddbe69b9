"""The policy node for any embodiment; the robot launch files include this one.

    ros2 launch ki_vla_ros policy.launch.py embodiment:=NAME [model:=DIR] [instruction:=TEXT] ...
    ros2 launch ki_vla_ros policy.launch.py -s        # every argument, described

The node is a managed (lifecycle) node. This file configures it (loads the model, runs one
warm-up inference) and activates it; activate:=false leaves both to a lifecycle manager. Then
set an instruction and call ~/start (or autostart:=true with instruction:=TEXT).
Parameters: params_file (config/ros/policy_node.yaml), then the arguments as overrides.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, GroupAction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, PushRosNamespace
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

BOOL = ["true", "false"]


def generate_launch_description():
    args = [
        DeclareLaunchArgument(
            "embodiment",
            default_value="aloha_bimanual",
            description="robot description: a name in config/embodiments/ (aloha_bimanual, mobile_aloha, "
            "franka_single_arm) or the path of an embodiment YAML file",
        ),
        DeclareLaunchArgument(
            "model",
            default_value="",
            description="model folder; empty = the embodiment's (make one without training: "
            "ki-vla init-model DIR --embodiment NAME)",
        ),
        DeclareLaunchArgument(
            "backend",
            default_value="torch",
            choices=["auto", "torch", "onnxruntime", "openvino", "tensorrt"],
            description="inference backend (onnxruntime, openvino and tensorrt need `ki-vla export` first; "
            "auto: the fastest path checked for these weights on this CPU, exported on first configure)",
        ),
        DeclareLaunchArgument(
            "precision",
            default_value="auto",
            choices=["auto", "fp32", "bf16", "fp16", "int8"],
            description="what the backend computes in; other than fp32 only once `ki-vla export --precision` "
            "has checked it on the model folder (auto: fp32 on torch / onnxruntime, bf16 or fp16 on tensorrt)",
        ),
        DeclareLaunchArgument(
            "policy_class",
            default_value="",
            description="your own policy as 'package.module:Class'; empty = ki_vla_ros.runtime.Policy",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="ROS namespace of the node"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=BOOL, description="follow /clock (simulation, bag replay)"
        ),
        DeclareLaunchArgument(
            "instruction",
            default_value="",
            description="initial language command; change it at run time with the 'instruction' parameter "
            "or `ki-vla command TEXT`",
        ),
        DeclareLaunchArgument(
            "autostart",
            default_value="false",
            choices=BOOL,
            description="start moving as soon as the node is active and has an instruction (else call ~/start)",
        ),
        DeclareLaunchArgument(
            "activate",
            default_value="true",
            choices=BOOL,
            description="configure and activate the node (lifecycle) at launch; false leaves it unconfigured "
            "for a lifecycle manager",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("ki_vla_ros"), "config", "ros", "policy_node.yaml"]),
            description="ROS parameters of the node (YAML); the other arguments override it",
        ),
    ]
    overrides = {
        "embodiment": LaunchConfiguration("embodiment"),
        "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
        "backend": LaunchConfiguration("backend"),
        "precision": LaunchConfiguration("precision"),
        "policy_class": ParameterValue(LaunchConfiguration("policy_class"), value_type=str),
        "instruction": ParameterValue(LaunchConfiguration("instruction"), value_type=str),
        "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
        "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
    }
    node = LifecycleNode(
        package="ki_vla_ros",
        executable="policy_node",
        name="policy_node",
        namespace="",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), overrides],
        # OpenMP threads that sleep when idle instead of spinning: on a CPU shared with drivers and
        # other nodes, spinning inference threads starve each other (docs/runtime.md, "Threads")
        additional_env={"OMP_WAIT_POLICY": EnvironmentVariable("OMP_WAIT_POLICY", default_value="PASSIVE")},
    )
    activate = IfCondition(LaunchConfiguration("activate"))

    def transition(transition_id, condition=None):
        event = ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id)
        return EmitEvent(event=event, condition=condition)

    lifecycle = [
        # configured (inactive) -> activate; once, so a later deactivate is left alone
        RegisterEventHandler(
            OnStateTransition(target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
                              entities=[transition(Transition.TRANSITION_ACTIVATE)], handle_once=True),
            condition=activate,
        ),
        transition(Transition.TRANSITION_CONFIGURE, condition=activate),
    ]
    return LaunchDescription(
        [*args, GroupAction([PushRosNamespace(LaunchConfiguration("namespace")), node]), *lifecycle]
    )
