#!/usr/bin/env bash
# `launch` / `launch_ros` (what `ros2 launch` runs on) are not on PyPI. scripts/setup.sh installs
# them from the wheels in ../shared/wheels/ros2-launch next to the checkout, as CI does to test the
# launch files:   scripts/install_launch_wheels.sh PYTHON WHEELS_DIR
# Without that folder nothing is installed, a note says so, and the launch-file tests skip (exit 0).
set -euo pipefail
py=$1
wheels=$2
if compgen -G "$wheels/*.whl" >/dev/null; then
  # their wheels name ROS dependencies by ROS names (PyPI spells them ros-...): --no-deps
  "$py" -m pip --disable-pip-version-check -q install --no-deps "$wheels"/*.whl
else
  echo "setup: note: no launch wheels in $wheels: launch / launch_ros not installed;" \
       "the launch-file tests will be skipped (install ROS 2, or put the wheels there)" >&2
fi
