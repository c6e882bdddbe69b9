"""The policy node for any embodiment; the robot-specific launch files include this one.

Arguments: embodiment, model, backend, policy_class, namespace, use_sim_time, instruction,
autostart, params_file. Parameters: params_file (config/ros/policy_node.yaml), then the
arguments as overrides.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    args = [
        DeclareLaunchArgument(
            "embodiment",
            default_value="aloha_bimanual",
            description="embodiment name (config/embodiments/NAME.yaml) or a YAML path",
        ),
        DeclareLaunchArgument("model", default_value="", description="model folder ('' = the embodiment's)"),
        DeclareLaunchArgument(
            "backend",
            default_value="torch",
            choices=["torch", "onnxruntime", "tensorrt"],
            description="inference backend",
        ),
        DeclareLaunchArgument(
            "policy_class",
            default_value="",
            description="custom policy 'module:Class' ('' = ki_vla_ros.runtime.Policy)",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="ROS namespace of the node"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        DeclareLaunchArgument("instruction", default_value="", description="initial instruction"),
        DeclareLaunchArgument(
            "autostart", default_value="false", description="start as soon as an instruction is set"
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare("ki_vla_ros"), "config", "ros", "policy_node.yaml"]
            ),
            description="ROS parameters of the node",
        ),
    ]
    overrides = {
        "embodiment": LaunchConfiguration("embodiment"),
        "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
        "backend": LaunchConfiguration("backend"),
        "policy_class": ParameterValue(LaunchConfiguration("policy_class"), value_type=str),
        "instruction": ParameterValue(LaunchConfiguration("instruction"), value_type=str),
        "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
        "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
    }
    node = Node(
        package="ki_vla_ros",
        executable="policy_node",
        name="policy_node",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), overrides],
    )
    return LaunchDescription([*args, GroupAction([PushRosNamespace(LaunchConfiguration("namespace")), node])])
