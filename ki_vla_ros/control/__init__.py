"""Pure-Python chunk execution and safety (no ROS): see `ki_vla_ros.control.chunk`."""

from ki_vla_ros.control.chunk import (
    JointLimits,
    UnsafeChunkError,
    Waypoints,
    check_finite,
    clamp_positions,
    compensate_latency,
    finite_difference_velocities,
    limit_velocity,
    plan_base_chunk,
    plan_joint_chunk,
    stale_sources,
    stream_index,
)

__all__ = [
    "JointLimits",
    "UnsafeChunkError",
    "Waypoints",
    "check_finite",
    "clamp_positions",
    "compensate_latency",
    "finite_difference_velocities",
    "limit_velocity",
    "plan_base_chunk",
    "plan_joint_chunk",
    "stale_sources",
    "stream_index",
]
