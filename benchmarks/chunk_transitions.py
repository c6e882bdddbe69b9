"""Chunk transitions in closed loop: how smoothly a new chunk takes over from the running one.

Runs episodes of the simulated ALOHA (``SimRig``: sim node + policy node over DDS, sim time) for
each model folder, records the commanded joint positions at every control tick (the sim's
``~/joint_commands``) and the sim time at which every new chunk arrived (a JointTrajectory of more
than one point on an arm controller's topic) — saved as ``--out``/<run>/<task>_<seed>.npz (t, q,
boundaries) — and prints per model, over the arm joints (grippers are 0..1, not radians, and left
out):

* ``jump``: the largest per-tick change of a commanded joint position within ``--window`` ticks
  after a chunk arrived (rad per 20 ms tick) — max and median over the boundaries;
* ``accel``: the peak |second difference| of the commanded positions there (rad/s²);
* the same two away from every boundary (``interior``), the motion's own scale for comparison.

A model trained with action prefixes (model.yaml ``rtc``, real-time chunking) continues the
running chunk; ``--without-rtc`` also runs the same weights with ``rtc`` switched off in a copy of
model.yaml (the node then hands the policy no prefix), so the comparison isolates the prefix.

    python benchmarks/chunk_transitions.py --model models/aloha_pick4 --episodes 2
    python benchmarks/chunk_transitions.py --model runs/rtc/model --without-rtc --model runs/base/model

Figures depend on the machine's load (inference latency sets how many actions a new chunk drops):
quote them with the CPU and what else ran.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ki_vla_ros.ros.demo import DemoError, _common_args, _rig  # noqa: E402

ARM_TOPICS = ("/left_arm_controller/joint_trajectory", "/right_arm_controller/joint_trajectory")


def boundary_metrics(t: np.ndarray, q: np.ndarray, boundaries: np.ndarray, window: int = 3) -> dict:
    """t [N] tick times (s), q [N, J] commanded positions, boundaries [M] chunk arrival times (s) ->
    {boundaries, jump_max, jump_p50, accel_max, accel_p50, interior_jump_max, interior_accel_p99}.
    Tick k belongs to a boundary when it is among the `window` + 1 ticks from the first tick at or
    after the arrival; its jump is max_j |q[k] - q[k-1]|, its acceleration max_j |v[k+1] - v[k]| / dt
    with v[k] = (q[k] - q[k-1]) / (t[k] - t[k-1])."""
    t, q = np.asarray(t, np.float64), np.asarray(q, np.float64)
    step = np.abs(np.diff(q, axis=0)).max(1)  # [N-1], step[k-1] = change into tick k
    v = np.diff(q, axis=0) / np.diff(t)[:, None]  # [N-1]
    acc = np.abs(np.diff(v, axis=0) / np.diff(t)[1:, None]).max(1)  # [N-2], acc[k-1] at tick k
    near = np.zeros(len(t), bool)
    jumps, accels = [], []
    for b in np.asarray(boundaries, np.float64):
        kb = int(np.searchsorted(t, b - 1e-9))
        ks = np.arange(max(kb, 1), min(kb + window + 1, len(t) - 1))
        if len(ks) == 0:
            continue
        near[ks] = True
        jumps.append(step[ks - 1].max())
        accels.append(acc[ks - 1].max())
    inner = np.nonzero(~near[1:-1])[0] + 1  # interior ticks with both neighbours
    out = {"boundaries": len(jumps)}
    for name, vals in (("jump", jumps), ("accel", accels)):
        out[f"{name}_max"] = float(np.max(vals)) if vals else None
        out[f"{name}_p50"] = float(np.median(vals)) if vals else None
    out["interior_jump_max"] = float(step[inner - 1].max()) if len(inner) else None
    out["interior_accel_p99"] = float(np.percentile(acc[inner - 1], 99)) if len(inner) else None
    return out


def recording_metrics(rec: dict, window: int = 3) -> dict:
    """One episode's recording {t [N], q [N, 14] in JOINT_NAMES order, arrivals [M] (s, one per arm
    and chunk)} -> `boundary_metrics` over the arm joints. Both arms' trajectories of a chunk arrive
    together (one boundary). Ticks before the second chunk are left out: the first chunk starts from
    rest, or from where the controller was left before the episode (after a sim reset that can be
    far from the arm), with nothing running to continue."""
    from ki_vla_ros.sim.aloha import JOINT_NAMES

    arm = [i for i, n in enumerate(JOINT_NAMES) if "gripper" not in n]
    t, q = np.asarray(rec["t"], np.float64), np.asarray(rec["q"], np.float64)
    chunks = np.unique(np.round(np.asarray(rec["arrivals"], np.float64), 2))
    if len(chunks) < 2 or len(t) < 4:
        return {"boundaries": 0}
    keep = t >= chunks[1] - 1.5 * np.median(np.diff(t))  # from the tick before the second chunk
    return boundary_metrics(t[keep], q[keep][:, arm], chunks[1:], window)


def rtc_off_copy(model: Path, tmp: Path) -> Path:
    """A copy of the model folder whose model.yaml says: not trained with action prefixes."""
    out = tmp / f"{model.name}_rtc_off"
    shutil.copytree(model, out, ignore=shutil.ignore_patterns("engines"))
    manifest = yaml.safe_load((out / "model.yaml").read_text())
    manifest["rtc"] = {"max_delay_steps": 0, "probability": 0.0}
    (out / "model.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out


def run_model(opts, model: Path, label: str, episodes: list[tuple[str, int]], out: Path) -> dict:
    from rosgraph_msgs.msg import Clock
    from trajectory_msgs.msg import JointTrajectory

    o = copy.copy(opts)
    o.model = str(model)
    rig = _rig(o, out / label, record_video=False)
    clock, arrivals = {"t": 0.0}, []
    rows = []
    try:
        rig.start()
        rig.node.create_subscription(Clock, "/clock", lambda m: clock.update(t=m.clock.sec + m.clock.nanosec * 1e-9),
                                     10)
        for topic in ARM_TOPICS:
            rig.node.create_subscription(
                JointTrajectory, topic, lambda m: arrivals.append(clock["t"]) if len(m.points) > 1 else None, 10)
        for task, seed in episodes:
            arrivals.clear()
            r = rig.run_episode(task, seed, opts.duration)
            rec = {"t": np.array(r.recording["cmd_t"]), "q": np.array(r.recording["cmd"]),
                   "arrivals": np.array(arrivals)}
            np.savez(out / label / f"{task}_{seed}.npz", **rec, success=r.success,
                     latency_sim_ms_p50=np.nan if r.latency_sim_ms_p50 is None else r.latency_sim_ms_p50)
            m = recording_metrics(rec, opts.window)
            rows.append({"task": task, "seed": seed, "success": r.success, "chunks": r.chunks,
                         "latency_sim_ms_p50": r.latency_sim_ms_p50, **m})
            print(f"  {label:<16} {task:<26} seed {seed}: success {int(r.success)}, {m['boundaries']} boundaries, "
                  f"jump max {_f(m.get('jump_max'))} rad, accel max {_f(m.get('accel_max'))} rad/s2", flush=True)
    finally:
        rig.close()
    return {"model": str(model), "episodes": rows, **_pooled(rows)}


def _pooled(rows: list[dict]) -> dict:
    def col(key, fn):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(fn(vals)) if vals else None

    return {"success": col("success", np.mean), "jump_max": col("jump_max", np.max),
            "jump_p50": col("jump_p50", np.median), "accel_max": col("accel_max", np.max),
            "accel_p50": col("accel_p50", np.median), "interior_jump_max": col("interior_jump_max", np.max),
            "interior_accel_p99": col("interior_accel_p99", np.median),
            "latency_sim_ms_p50": col("latency_sim_ms_p50", np.median)}


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def main(argv: list[str] | None = None) -> int:
    from ki_vla_ros.runtime.model_dir import load_manifest
    from ki_vla_ros.sim.tasks import TASK_NAMES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], conflict_handler="resolve")
    _common_args(ap)
    ap.add_argument("--model", action="append", default=[], help="model folder (repeat to compare)")
    ap.add_argument("--recordings", default="", metavar="DIR",
                    help="only recompute the figures from the recordings of an earlier run (its --out)")
    ap.add_argument("--without-rtc", action="store_true",
                    help="also run each model trained with action prefixes with rtc switched off")
    ap.add_argument("--tasks", default="pick_red_left,pick_blue_right", help="comma list of tasks")
    ap.add_argument("--episodes", type=int, default=1, help="episodes per task (seeds S .. S+N-1) [1]")
    ap.add_argument("--seed", type=int, default=900000, help="first scene seed [900000]")
    ap.add_argument("--window", type=int, default=3, help="ticks after a chunk's arrival counted as its boundary")
    ap.add_argument("--out", default="outputs/chunk_transitions", help="folder for results.json and logs")
    opts = ap.parse_args(argv)
    if opts.recordings:
        return report(from_recordings(Path(opts.recordings), opts.window), Path(opts.recordings), vars(opts))
    if not opts.model:
        ap.error("give --model DIR (or --recordings DIR)")
    tasks = [t.strip() for t in opts.tasks.split(",") if t.strip()]
    if not tasks or any(t not in TASK_NAMES for t in tasks):
        ap.error(f"--tasks: choose from {', '.join(TASK_NAMES)}")
    episodes = [(task, opts.seed + k) for task in tasks for k in range(opts.episodes)]
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for m in map(Path, opts.model):
            rtc = load_manifest(m).rtc
            runs.append((f"{m.name}" + ("+rtc" if rtc.enabled else ""), m))
            if opts.without_rtc and rtc.enabled:
                runs.append((f"{m.name}-rtc_off", rtc_off_copy(m, Path(tmp))))
        try:
            for label, model in runs:
                results[label] = run_model(opts, model, label, episodes, out)
        except DemoError as exc:
            print(f"chunk_transitions: {exc}", file=sys.stderr)
            return 1
    meta = {k: getattr(opts, k) for k in ("backend", "tasks", "episodes", "seed", "window", "threads", "duration")}
    return report(results, out, meta)


def from_recordings(folder: Path, window: int) -> dict:
    """{run: pooled figures} from <folder>/<run>/<task>_<seed>.npz recordings."""
    results = {}
    for run in sorted(p for p in folder.iterdir() if p.is_dir() and list(p.glob("*.npz"))):
        rows = []
        for f in sorted(run.glob("*.npz")):
            rec = dict(np.load(f))
            lat = float(rec["latency_sim_ms_p50"])
            rows.append({"episode": f.stem, "success": bool(rec["success"]),
                         "latency_sim_ms_p50": None if np.isnan(lat) else lat, **recording_metrics(rec, window)})
        results[run.name] = {"episodes": rows, **_pooled(rows)}
    return results


def report(results: dict, out: Path, meta: dict) -> int:
    print(f"\n{'run':<24} {'success':>7} {'jump max':>9} {'jump p50':>9} {'acc max':>9} {'acc p50':>9} "
          f"{'int. jump':>9} {'int. acc99':>10} {'lat p50 ms':>10}")
    for label, r in results.items():
        print(f"{label:<24} {_f(r['success']):>7} {_f(r['jump_max']):>9} {_f(r['jump_p50']):>9} "
              f"{_f(r['accel_max']):>9} {_f(r['accel_p50']):>9} {_f(r['interior_jump_max']):>9} "
              f"{_f(r['interior_accel_p99']):>10} {_f(r['latency_sim_ms_p50']):>10}")
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1, default=float))
    print(f"saved: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
