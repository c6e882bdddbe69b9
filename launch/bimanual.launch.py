"""Policy node for ALOHA bimanual (two ViperX arms with grippers, three cameras).

    ros2 launch ki_vla_ros bimanual.launch.py [embodiment:=aloha_bimanual] [model:=DIR] [backend:=torch]
        [namespace:=NS] [use_sim_time:=false] [instruction:=TEXT] [autostart:=false]

Every argument of policy.launch.py is forwarded; this file only changes the default embodiment.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

ARGS = {
    "embodiment": "aloha_bimanual",
    "model": "",
    "backend": "torch",
    "policy_class": "",
    "namespace": "",
    "use_sim_time": "false",
    "instruction": "",
    "autostart": "false",
}


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default) for name, default in ARGS.items()]
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("ki_vla_ros"), "launch", "policy.launch.py"])
        ),
        launch_arguments={name: LaunchConfiguration(name) for name in ARGS}.items(),
    )
    return LaunchDescription([*declared, policy])
