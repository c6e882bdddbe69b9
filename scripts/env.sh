# Environment for running the project from this checkout: source it, or let make do it.
# Keeps DDS traffic on this machine unless the caller already chose discovery settings.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export ROS_HOME=${ROS_HOME:-$PWD/.ros}
export MUJOCO_GL=${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
# OpenMP threads sleep when idle instead of spinning (a node and the sim share the CPU; docs/runtime.md)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
