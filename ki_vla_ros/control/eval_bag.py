"""Offline evaluation of a policy on a rosbag2 recording (no DDS, no rclpy): `ki-vla eval-bag`.

The bag must hold the embodiment's camera and JointState topics and, for the action error, the
commands that were sent on its output topics (JointTrajectory, Float64MultiArray, Twist /
TwistStamped). At sample times (every ``stride_s``, default one execution period of
``execute_steps``), the latest camera images and joint states form an observation; the policy
predicts a chunk, whose first ``execute_steps`` actions (action ``i`` due at ``t + (i+1) dt``)
are compared with the command in force at that time in the recording (a newer trajectory
replaces the rest of an older one, as ros2_control's JTC does). Reports the mean absolute error
per action, per output and overall, and the inference latency distribution.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ki_vla_ros.bagio import image_msg_to_rgb, iter_decoded
from ki_vla_ros.control.policy_loader import LayoutMapper
from ki_vla_ros.embodiment import Embodiment
from ki_vla_ros.runtime.types import Observation


@dataclass
class CommandSeries:
    """Commands in force over time for one output (zero-order hold, newest message wins)."""

    times: list[float] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def replace_from(self, t: float, times: list[float], values: list[np.ndarray]) -> None:
        k = bisect.bisect_right(self.times, t)
        del self.times[k:], self.values[k:]
        for ti, vi in sorted(zip(times, values), key=lambda p: p[0]):
            if ti >= t and (not self.times or ti >= self.times[-1]):
                self.times.append(ti)
                self.values.append(vi)

    def at(self, t: float) -> np.ndarray | None:
        k = bisect.bisect_right(self.times, t) - 1
        return self.values[k] if k >= 0 else None


def _stamp_to_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _command_values(output, msgtype: str, msg: Any, t: float) -> tuple[list[float], list[np.ndarray]]:
    if msgtype.endswith("JointTrajectory"):
        index = {n: i for i, n in enumerate(msg.joint_names)}
        if any(j not in index for j in output.joints):
            return [], []
        start = _stamp_to_s(msg.header.stamp) or t
        times, values = [], []
        for pt in msg.points:
            pos = np.asarray(pt.positions, np.float64)
            times.append(start + pt.time_from_start.sec + pt.time_from_start.nanosec * 1e-9)
            values.append(np.array([pos[index[j]] for j in output.joints]))
        return times, values
    if msgtype.endswith("Float64MultiArray"):
        return [t], [np.asarray(msg.data, np.float64)[: output.size]]
    if msgtype.endswith("TwistStamped"):
        return [t], [np.array([msg.twist.linear.x, msg.twist.angular.z])]
    if msgtype.endswith("Twist"):
        return [t], [np.array([msg.linear.x, msg.angular.z])]
    return [], []


def evaluate_bag(
    bag: str | Path,
    policy: Any,
    embodiment: Embodiment,
    instruction: str,
    stride_s: float | None = None,
    max_samples: int = 200,
    seed: int | None = 0,
    execute_steps: int | None = None,
) -> dict:
    emb = embodiment
    dt = emb.dt
    steps = execute_steps or emb.execute_steps
    stride = stride_s or steps * dt
    mapper = LayoutMapper(emb, policy)
    cam_topics = {c.topic: c.name for c in emb.cameras}
    state_topics = {s.topic: s for s in emb.state}
    out_topics = {o.topic: o for o in emb.outputs}
    cams: dict[str, list[tuple[float, str, Any]]] = {n: [] for n in cam_topics.values()}
    states: dict[str, list[tuple[float, np.ndarray]]] = {t: [] for t in state_topics}
    series = {o.name: CommandSeries() for o in emb.outputs}
    t0 = None
    for topic, msgtype, t_ns, msg in iter_decoded(bag, [*cam_topics, *state_topics, *out_topics]):
        t = t_ns * 1e-9
        t0 = t if t0 is None else t0
        if topic in cam_topics:
            cams[cam_topics[topic]].append((t, msgtype, msg))
        elif topic in state_topics:
            index = {n: i for i, n in enumerate(msg.name)}
            pos = np.full(len(state_topics[topic].joints), np.nan)
            for k, j in enumerate(state_topics[topic].joints):
                if j in index and index[j] < len(msg.position):
                    pos[k] = msg.position[index[j]]
            states[topic].append((t, pos))
        else:
            o = out_topics[topic]
            times, values = _command_values(o, msgtype, msg, t)
            if times:
                series[o.name].replace_from(t, times, values)
    missing = [n for n, v in cams.items() if not v] + [t for t, v in states.items() if not v]
    if missing:
        raise ValueError(f"{bag}: no messages on {missing} (embodiment '{emb.name}' needs them)")
    start = max([v[0][0] for v in cams.values()] + [v[0][0] for v in states.values()])
    end = min([v[-1][0] for v in cams.values()] + [v[-1][0] for v in states.values()])

    def latest(items, t):
        k = bisect.bisect_right([x[0] for x in items], t) - 1
        return items[k] if k >= 0 else None

    cam_times = {n: [x[0] for x in v] for n, v in cams.items()}
    state_times = {t: [x[0] for x in v] for t, v in states.items()}
    latencies, errors, skipped = [], [], 0
    stage_ms: dict[str, list[float]] = {}
    t = start
    while t <= end and len(latencies) < max_samples:
        images = {}
        for name in mapper.camera_names:
            k = bisect.bisect_right(cam_times[name], t) - 1
            _, msgtype, msg = cams[name][k]
            images[name] = image_msg_to_rgb(msg, msgtype)
        state = np.concatenate(
            [states[s.topic][bisect.bisect_right(state_times[s.topic], t) - 1][1] for s in emb.state]
        )
        if not np.all(np.isfinite(state)):
            skipped += 1
            t += stride
            continue
        obs = Observation(images=images, state=mapper.state_for_policy(state), instruction=instruction)
        w0 = time.perf_counter()
        out = policy.infer(obs, seed=seed)
        latencies.append((time.perf_counter() - w0) * 1000.0)
        for k, v in (out.timings_ms or {}).items():
            stage_ms.setdefault(k, []).append(float(v))
        actions = mapper.actions_for_embodiment(out.actions)
        for i in range(min(steps, len(actions))):
            target_t = t + (i + 1) * dt
            rec = np.full(emb.action_dim, np.nan)
            for o in emb.outputs:
                v = series[o.name].at(target_t)
                if v is not None and len(v) == o.size:
                    rec[o.action_slice[0] : o.action_slice[1]] = v
            errors.append(np.abs(actions[i] - rec))
        t += stride
    if not latencies:
        raise ValueError(f"{bag}: no usable observation (all joint states invalid?)")
    err = np.array(errors) if errors else np.full((0, emb.action_dim), np.nan)
    with np.errstate(all="ignore"):
        per_action = np.nanmean(err, axis=0) if len(err) else np.full(emb.action_dim, np.nan)

    def clean(x):
        return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)

    lat = np.array(latencies)
    report = {
        "bag": str(bag),
        "embodiment": emb.name,
        "instruction": instruction,
        "samples": len(latencies),
        "skipped_invalid_state": skipped,
        "compared_steps_per_sample": steps,
        "has_recorded_commands": bool(np.isfinite(err).any()) if len(err) else False,
        "mae": clean(np.nanmean(err)) if np.isfinite(err).any() else None,
        "rmse": clean(np.sqrt(np.nanmean(err**2))) if np.isfinite(err).any() else None,
        "mae_per_output": {
            o.name: clean(np.nanmean(per_action[o.action_slice[0] : o.action_slice[1]]))
            if np.isfinite(per_action[o.action_slice[0] : o.action_slice[1]]).any()
            else None
            for o in emb.outputs
        },
        "mae_per_action": {n: clean(v) for n, v in zip(emb.action_names, per_action)},
        "latency_ms": {
            "mean": clean(lat.mean()),
            "p50": clean(np.percentile(lat, 50)),
            "p90": clean(np.percentile(lat, 90)),
            "p99": clean(np.percentile(lat, 99)),
            "max": clean(lat.max()),
        },
        "policy_timings_ms_mean": {k: clean(np.mean(v)) for k, v in stage_ms.items()},
        "bag_span_s": clean(end - start),
    }
    return report


def format_report(report: dict) -> str:
    lines = [
        f"bag {report['bag']} ({report['embodiment']}), instruction {report['instruction']!r}",
        f"samples: {report['samples']} (skipped with invalid state: {report['skipped_invalid_state']})",
    ]
    if report["has_recorded_commands"]:
        lines.append(
            f"action error: MAE {report['mae']:.4f}, RMSE {report['rmse']:.4f} "
            f"(first {report['compared_steps_per_sample']} steps of each chunk)"
        )
        for name, v in report["mae_per_output"].items():
            lines.append(f"  {name}: MAE {v if v is None else f'{v:.4f}'}")
    else:
        lines.append("action error: no recorded commands on the embodiment's output topics")
    lat = report["latency_ms"]
    lines.append(
        f"latency ms: mean {lat['mean']:.1f}, p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, "
        f"p99 {lat['p99']:.1f}, max {lat['max']:.1f}"
    )
    return "\n".join(lines)


__all__ = ["evaluate_bag", "format_report", "CommandSeries"]
