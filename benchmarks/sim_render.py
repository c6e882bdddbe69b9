"""Simulator timing on this machine; prints JSON.

``MUJOCO_GL=egl python benchmarks/sim_render.py [--image-size 224] [--quality fast|full]``

``cpu_ms_per_image`` is the process's CPU time (all threads) per image: with Mesa's llvmpipe the
rasteriser threads (``LP_NUM_THREADS``; the sim sets 0 unless given) count there, not in the
wall time. Compare ``LP_NUM_THREADS=2 python benchmarks/sim_render.py --image-size 112``.
"""

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from ki_vla_ros.sim.aloha import AlohaSim  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--quality", choices=("fast", "full"), default="fast")
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    sim = AlohaSim("pick_red_left", seed=0, image_size=a.image_size, render_quality=a.quality)
    q = sim.joint_positions()
    for c in sim.cameras:  # warm-up (context creation)
        sim.render(c)
    t, c0 = time.perf_counter(), time.process_time()
    for _ in range(a.steps):
        for c in sim.cameras:
            sim.render(c)
    ms_image = (time.perf_counter() - t) * 1e3 / (a.steps * len(sim.cameras))
    cpu_ms_image = (time.process_time() - c0) * 1e3 / (a.steps * len(sim.cameras))
    t = time.perf_counter()
    n = a.steps * 20
    for _ in range(n):
        mujoco.mj_step(sim.model, sim.data)
    ms_physics = (time.perf_counter() - t) * 1e3 / n
    t = time.perf_counter()
    for _ in range(a.steps):
        sim.step(q, render=False)
    ms_ctrl_no_render = (time.perf_counter() - t) * 1e3 / a.steps
    t = time.perf_counter()
    for _ in range(a.steps):
        sim.step(q + np.random.default_rng(0).normal(0, 0.01, 14))
    ms_ctrl = (time.perf_counter() - t) * 1e3 / a.steps
    sim.close()
    print(json.dumps({
        "image_size": a.image_size, "render_quality": a.quality, "cameras": list(sim.cameras),
        "physics_substeps_per_control_step": sim.n_substeps,
        "lp_num_threads": os.environ.get("LP_NUM_THREADS"),
        "ms_per_image": round(ms_image, 2), "cpu_ms_per_image": round(cpu_ms_image, 2),
        "ms_per_physics_step": round(ms_physics, 4),
        "ms_per_control_step_no_render": round(ms_ctrl_no_render, 3),
        "ms_per_control_step_3_cameras": round(ms_ctrl, 2),
        "realtime_factor_3_cameras": round(20.0 / ms_ctrl, 2),
    }))


if __name__ == "__main__":
    main()
