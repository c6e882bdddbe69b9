"""Policy node for a single 7-DoF arm + gripper with streamed position commands (Franka-style).

    ros2 launch ki_vla_ros single_arm.launch.py [model:=DIR] [instruction:=TEXT] [autostart:=true] ...
    ros2 launch ki_vla_ros single_arm.launch.py -s        # every argument, described

Everything is policy.launch.py (included from this folder); only the default embodiment differs.
Without a trained model for franka_single_arm, the node says how to make one (`ki-vla init-model`).
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument(
            "embodiment",
            default_value="franka_single_arm",
            description="robot description: a name in config/embodiments/ or the path of an embodiment YAML file",
        ),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(Path(__file__).with_name("policy.launch.py")))),
    ])
