"""Does the policy read the instruction? The first chunk of recorded episodes predicted with the
episode's own instruction and with the colour or the arm swapped (ki_vla_ros/sim/instruction_swap.py).

    python benchmarks/instruction_swap.py --model DIR --data data/pick4/pick4_left_b data/pick4/pick4_right_b \
        [--every 4]
"""

from __future__ import annotations

import argparse
import json

from ki_vla_ros.runtime import Policy
from ki_vla_ros.sim.instruction_swap import instruction_swap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="sim dataset folders (episodes.jsonl, bags/)")
    ap.add_argument("--every", type=int, default=1, help="every k-th episode of each folder [1: all]")
    ap.add_argument("--num-steps", type=int, default=0, help="Euler steps [0: the model folder's]")
    args = ap.parse_args()
    policy = Policy.load(args.model, num_steps=args.num_steps) if args.num_steps else Policy.load(args.model)
    print(json.dumps({"model": args.model, **instruction_swap(policy, args.data, args.every)}))


if __name__ == "__main__":
    main()
