"""ROS 2 side of ki_vla_ros: the policy node, the robot stand-in, replay and the CLI commands.

The only package that imports rclpy or ROS messages."""
