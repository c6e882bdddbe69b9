"""ki_vla_ros: knowledge-insulated vision-language-action policies for ROS 2 robots.

Only `ki_vla_ros.ros` imports rclpy; everything else runs without ROS.
"""

__version__ = "0.1.0"
