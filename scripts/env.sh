# Environment for running the project from this checkout: source it, or let make do it.
# Keeps DDS traffic on this machine unless the caller already chose discovery settings.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export ROS_HOME=${ROS_HOME:-$PWD/.ros}
export MUJOCO_GL=${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
