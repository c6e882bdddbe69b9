"""The simulated ALOHA (sim_node) and the policy node, both on sim time: the demo's graph.

    ros2 launch ki_vla_ros sim_demo.launch.py [task:=pick_red_left] [model:=DIR] [max_sim_time_s:=8.0] ...
    ros2 launch ki_vla_ros sim_demo.launch.py -s      # every argument, described

Then send the instruction and start: ``ki-vla command "pick up the red cube with the left arm"
--start``. The sim holds still until the first command; the episode (and max_sim_time_s) starts
there. ``ros2 service call /sim_node/reset std_srvs/srv/Trigger`` starts a new episode (the
task / seed parameters); after a reset a policy that never commands ends the episode after
max_sim_time_s. ``ki-vla demo`` does all of this (without ros2 launch) and reports the outcome.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ki_vla_ros.sim.tasks import TASK_NAMES

# name: (default, type, description, choices)
SIM_ARGS = {
    "task": ("pick_red_left", str, "task of the first episode (ki_vla_ros/sim/tasks.py)", list(TASK_NAMES)),
    "seed": ("0", int, "scene seed (cube placement) of the first episode", None),
    "image_size": ("0", int, "square camera images in pixels; 0 = the embodiment's size", None),
    "camera_every": ("1", int, "publish the cameras every k-th 50 Hz sim step", None),
    "render_quality": ("fast", str, "rendering: fast (no shadows / reflections) or full", ["fast", "full"]),
    "max_sim_time_s": ("0.0", float, "episode length in sim seconds, counted from the first command (the sim "
                       "pauses there); 0 = no limit", None),
    "real_time_factor": ("1.0", float, "upper bound on the sim's speed relative to real time; 0 = as fast as "
                         "it goes", None),
}


def generate_launch_description():
    declared = [DeclareLaunchArgument(k, default_value=v, description=d, choices=c)
                for k, (v, _, d, c) in SIM_ARGS.items()]
    # two arguments of policy.launch.py that the simulated robot fixes
    declared += [
        DeclareLaunchArgument("embodiment", default_value="aloha_bimanual", choices=["aloha_bimanual"],
                              description="the robot the sim simulates"),
        DeclareLaunchArgument("use_sim_time", default_value="true", choices=["true"],
                              description="the policy node follows the sim's /clock"),
    ]
    sim = Node(
        package="ki_vla_ros",
        executable="sim_node",
        name="sim_node",
        output="screen",
        parameters=[{k: ParameterValue(LaunchConfiguration(k), value_type=t) for k, (_, t, _, _) in SIM_ARGS.items()}],
    )
    # every other argument of policy.launch.py applies too (model, backend, instruction, activate, ...)
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(Path(__file__).with_name("policy.launch.py"))),
    )
    return LaunchDescription([*declared, sim, policy])
