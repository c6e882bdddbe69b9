"""Policy node for ALOHA bimanual (two ViperX arms with grippers, three cameras; JointTrajectory per arm).

    ros2 launch ki_vla_ros bimanual.launch.py [model:=DIR] [instruction:=TEXT] [autostart:=true] ...
    ros2 launch ki_vla_ros bimanual.launch.py -s        # every argument, described

Everything is policy.launch.py (included from this folder); only the default embodiment differs.
Without a trained model for aloha_bimanual, the node says how to make one (`ki-vla init-model`).
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument(
            "embodiment",
            default_value="aloha_bimanual",
            description="robot description: a name in config/embodiments/ or the path of an embodiment YAML file",
        ),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(Path(__file__).with_name("policy.launch.py")))),
    ])
