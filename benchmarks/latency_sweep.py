"""Closed-loop success against control latency, in one process, without ROS and without timing noise
(the episode: ki_vla_ros/sim/fixed_latency.py, the node's chunk logic with inference taking exactly
``--latency`` control steps of sim time and each camera frame held for ``--camera-every`` steps).
Figures depend only on the model, the scene seeds and these two settings, and a sweep shows how
much of the success a given latency costs:

    MUJOCO_GL=egl python benchmarks/latency_sweep.py --model models/aloha_pick4 --latency 0 1 2 3 4 \\
        --episodes 5 --out outputs/latency_sweep.json

Prints one line per latency (and ``--execute-steps``: how many steps of a chunk run before the
next one takes over) with success, instruction followed and median reach and, with ``--out``, all
episodes as JSON. ``--without-rtc`` hands the policy no action prefix (what a model without
prefix training gets). The first chunk is computed while the robot holds still (the eval's sim waits
for its first command).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ki_vla_ros.control.policy_loader import LayoutMapper  # noqa: E402
from ki_vla_ros.embodiment import load_embodiment  # noqa: E402
from ki_vla_ros.runtime import Policy  # noqa: E402
from ki_vla_ros.sim.fixed_latency import run_episode  # noqa: E402

PICKS = ["pick_red_left", "pick_red_right", "pick_blue_left", "pick_blue_right"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/aloha_pick4")
    ap.add_argument("--embodiment", default="aloha_bimanual")
    ap.add_argument("--execute-steps", type=int, nargs="+", default=[0],
                    help="replan after this many steps of a chunk, one sweep each [0: the embodiment's]")
    ap.add_argument("--latency", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="control steps [0 1 2 3 4]")
    ap.add_argument("--camera-every", type=int, default=2, help="camera frame held for k steps [2: 25 Hz]")
    ap.add_argument("--tasks", default=",".join(PICKS))
    ap.add_argument("--episodes", type=int, default=5, help="per task: seeds --seed .. --seed + N - 1 [5]")
    ap.add_argument("--seed", type=int, default=900000)
    ap.add_argument("--duration", type=float, default=8.0, help="episode length, sim s [8]")
    ap.add_argument("--num-steps", type=int, default=0, help="flow steps [0: the model folder's]")
    ap.add_argument("--backend", default="onnxruntime", choices=["torch", "onnxruntime", "openvino"])
    ap.add_argument("--precision", default="auto", help="fp32 | bf16 | int8: what the backend offers and the "
                    "model folder records as checked (`ki-vla export --precision`) [auto: fp32]")
    ap.add_argument("--unchecked", action="store_true", help="also run a precision whose check failed or did not "
                    "run: to measure what the check's bound means in closed loop (the node never does)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--without-rtc", action="store_true", help="no action prefix for the policy")
    ap.add_argument("--fixed-noise", action="store_true",
                    help="every chunk's flow noise drawn with the scene seed, as `ki-vla eval` sets the node's "
                         "seed (default: the policy's own generator, seeded by --noise-seed: the node's seed -1)")
    ap.add_argument("--noise-seed", type=int, default=0)
    ap.add_argument("--arrival", type=int, default=0,
                    help="control steps between publishing a chunk and the controller starting it: a "
                         "controller that ignores the chunk's stamp, behind a slow link [0]")
    ap.add_argument("--trace", default="", help="folder for one .npz per episode: chunks (observation time, "
                    "actions, state) and the command at every step")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    if a.camera_every < 1 or min(a.latency) < 0 or min(a.execute_steps) < 0:
        ap.error("--camera-every must be >= 1, --latency and --execute-steps >= 0")

    from ki_vla_ros.sim.tasks import get_task

    emb = load_embodiment(a.embodiment)
    policy = Policy.load(a.model, backend=a.backend, num_steps=a.num_steps or None, threads=a.threads or None,
                         rng_seed=a.noise_seed, precision=a.precision, require_check=not a.unchecked)
    mapper = LayoutMapper(emb, policy)
    tasks = a.tasks.split(",")
    if a.trace:
        Path(a.trace).mkdir(parents=True, exist_ok=True)
    episodes, summary = [], []
    for ex, lat in [(ex, lat) for ex in a.execute_steps for lat in a.latency]:
        t0, rows = time.perf_counter(), []
        ex = ex or emb.execute_steps
        for task in tasks:
            for seed in range(a.seed, a.seed + a.episodes):
                rows.append(run_episode(policy, mapper, emb, task, seed, lat, a.camera_every, a.duration,
                                        get_task(task).instruction, not a.without_rtc, a.fixed_noise, a.arrival,
                                        f"{a.trace}/{task}_{seed}_lat{lat}_ex{ex}.npz" if a.trace else "", ex))
        n = len(rows)
        line = {"execute_steps": ex, "latency_steps": lat, "latency_ms": round(lat * emb.dt * 1000), "episodes": n,
                "success": sum(r["success"] for r in rows), "followed": sum(r["instruction_followed"] for r in rows),
                "median_reach_cm": round(100 * float(np.median([r["reach_m"] for r in rows])), 1),
                "wall_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps(line), flush=True)
        summary.append(line)
        episodes += rows
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"args": vars(a), "summary": summary, "episodes": episodes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
