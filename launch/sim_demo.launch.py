"""The simulated ALOHA (sim_node) and the policy node, both on sim time: the demo's graph.

    ros2 launch ki_vla_ros sim_demo.launch.py [task:=pick_red_left] [seed:=0] [model:=DIR]
        [backend:=torch] [image_size:=0] [camera_every:=1] [render_quality:=fast]
        [max_sim_time_s:=0.0] [real_time_factor:=1.0] [instruction:=TEXT] [autostart:=false]

Then send the instruction and start: ``ki-vla command "pick up the red cube with the left arm"
--start``; reset the scene with the sim's ``~/reset`` service. ``ki-vla demo`` does all of this
(without ros2 launch) and reports the outcome.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

SIM_ARGS = {
    "task": ("pick_red_left", str),
    "seed": ("0", int),
    "image_size": ("0", int),
    "camera_every": ("1", int),
    "render_quality": ("fast", str),
    "max_sim_time_s": ("0.0", float),
    "real_time_factor": ("1.0", float),
}
POLICY_ARGS = {"model": "", "backend": "torch", "policy_class": "", "instruction": "", "autostart": "false"}


def generate_launch_description():
    declared = [DeclareLaunchArgument(k, default_value=v) for k, (v, _) in SIM_ARGS.items()]
    declared += [DeclareLaunchArgument(k, default_value=v) for k, v in POLICY_ARGS.items()]
    sim = Node(
        package="ki_vla_ros",
        executable="sim_node",
        name="sim_node",
        output="screen",
        parameters=[{k: ParameterValue(LaunchConfiguration(k), value_type=t) for k, (_, t) in SIM_ARGS.items()}],
    )
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("ki_vla_ros"), "launch", "policy.launch.py"])
        ),
        launch_arguments={
            "embodiment": "aloha_bimanual",
            "use_sim_time": "true",
            **{k: LaunchConfiguration(k) for k in POLICY_ARGS},
        }.items(),
    )
    return LaunchDescription([*declared, sim, policy])
