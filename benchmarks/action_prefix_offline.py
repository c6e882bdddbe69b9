"""Does a model continue an action prefix? Offline, on recorded simulated-ALOHA episodes.

For observations every ``--every`` steps of each episode bag (``ki_vla_ros.sim.generate`` output),
the recorded actions that follow are the reference chunk. The policy samples a chunk with the
first d reference actions as its action prefix, and one without (same noise), for each d of
``--delays``. Printed per d, over the arm joints (rad; grippers left out):

* ``mae_after``: mean |error| of the 5 actions after the prefix, with and without it — a model that
  uses the prefix knows where the arm is committed to be;
* ``step_in``: median over observations of max_j |a[d] − reference[d−1]|, the step from the last
  prefix action into the new chunk, beside the demonstration's own step (its smooth scale).

No ROS, no executor: it isolates the model's continuation from latency, velocity limits and
transport, which ``chunk_transitions.py`` measures in closed loop. A model trained without action
prefixes (model.yaml ``rtc`` off) ignores them: both columns are then equal.

    python benchmarks/action_prefix_offline.py --model DIR --bags data/sim_heldout/bags --delays 3,6,10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    import torch

    from ki_vla_ros.runtime import Observation, Policy
    from ki_vla_ros.sim.record import read_bag

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--bags", required=True, help="folder of episode bags (sim.generate's <out>/bags)")
    ap.add_argument("--delays", default="3,6,10", help="prefix lengths d, comma list")
    ap.add_argument("--every", type=int, default=20, help="observation spacing in steps [20]")
    ap.add_argument("--threads", type=int, default=1)
    opts = ap.parse_args(argv)
    torch.set_num_threads(opts.threads)
    policy = Policy.load(opts.model)
    delays = [int(d) for d in opts.delays.split(",") if d.strip()]
    if policy.max_action_prefix == 0:
        print(f"{opts.model}: not trained with action prefixes (model.yaml rtc): it ignores them")
    arm = [i for i, n in enumerate(policy.layout.action_names) if "gripper" not in n]
    h = policy.action_horizon
    keys = ("mae_with", "mae_without", "step_with", "step_without", "step_demo")
    res = {d: {k: [] for k in keys} for d in delays}
    bags = sorted(p for p in Path(opts.bags).iterdir() if p.is_dir() or p.suffix in (".mcap", ".db3"))
    for bag in bags:
        ep = read_bag(bag)
        ref_all = ep["actions"]
        for t in range(0, len(ref_all) - h, opts.every):
            obs = Observation({c: ep["images"][c][t] for c in policy.layout.camera_names}, ep["joint_positions"][t],
                              ep["instruction"])
            ref, noise = ref_all[t:t + h], policy.draw_noise(t)
            plain = policy.infer(obs, noise=noise).actions
            for d, r in res.items():
                out = policy.infer(obs, noise=noise, action_prefix=ref[:d]).actions
                after = slice(d, d + 5)
                r["mae_with"].append(np.abs(out[after, arm] - ref[after, arm]).mean())
                r["mae_without"].append(np.abs(plain[after, arm] - ref[after, arm]).mean())
                r["step_with"].append(np.abs(out[d, arm] - ref[d - 1, arm]).max())
                r["step_without"].append(np.abs(plain[d, arm] - ref[d - 1, arm]).max())
                r["step_demo"].append(np.abs(ref[d, arm] - ref[d - 1, arm]).max())
    summary = {}
    for d, r in res.items():
        n = len(r["mae_with"])
        s = summary[d] = {"observations": n, "mae_after_with": float(np.mean(r["mae_with"])),
                          "mae_after_without": float(np.mean(r["mae_without"])),
                          "step_in_with": float(np.median(r["step_with"])),
                          "step_in_without": float(np.median(r["step_without"])),
                          "step_demo": float(np.median(r["step_demo"]))}
        print(f"d={d:2d} ({n} observations): mae_after with {s['mae_after_with']:.4f} / without "
              f"{s['mae_after_without']:.4f} rad; step_in with {s['step_in_with']:.4f} / without "
              f"{s['step_in_without']:.4f} (demonstration {s['step_demo']:.4f}) rad")
    print(json.dumps({"model": opts.model, "bags": len(bags), "by_delay": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
