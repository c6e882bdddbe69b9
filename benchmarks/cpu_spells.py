"""Does this machine run two threads at twice one thread's speed, all the time?

On a virtual machine the cores a guest sees are the host's to schedule. On the 2-vCPU cloud VM this
project is developed on, there are spells of seconds to tens of seconds in which each vCPU alone runs
at full speed but the two together do no more than one (two threads take as long as one for the same
work), with no steal time reported to the guest. Every 2-thread timing taken in such a spell is
1.5–1.9× too slow (OpenVINO's `small` flow loop: 24 ms instead of 13; one thread: 18 ms either way),
whichever backend, model or compile: the spell belongs to the machine, not to the program.

This probe times one bf16 (or fp32) GEMM with one thread pinned to each CPU in turn and with all
CPUs' threads together, in rounds, and prints one JSON line per round and a summary: the parallel
speedup (one-thread time / all-thread time, ≈ the CPU count when healthy) and the share of rounds in
a spell (speedup below `--spell-below`). Run it beside (or before) a benchmark to know whether its
figures were taken in a spell; compare programs in alternation, not one run against another.

    python benchmarks/cpu_spells.py --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to watch [60]")
    parser.add_argument("--size", type=int, default=512, help="square GEMM size [512]")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--runs", type=int, default=30, help="GEMMs per timing [30]")
    parser.add_argument("--spell-below", type=float, default=0.75,
                        help="a round is in a spell when the speedup is below this share of the CPU count [0.75]")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    a = torch.randn(args.size, args.size, dtype=dtype)
    rounds, start = [], time.time()
    try:
        while time.time() - start < args.seconds:
            torch.set_num_threads(1)
            alone = {}
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                alone[cpu] = median_ms(lambda: a @ a, args.runs)
            os.sched_setaffinity(0, set(cpus))
            torch.set_num_threads(len(cpus))
            together = median_ms(lambda: a @ a, args.runs)
            speedup = max(alone.values()) / together
            row = {"t_s": round(time.time() - start, 1),
                   "one_thread_ms": {str(c): round(v, 3) for c, v in alone.items()},
                   "all_threads_ms": round(together, 3), "speedup": round(speedup, 2),
                   "spell": speedup < args.spell_below * len(cpus)}
            rounds.append(row)
            print(json.dumps(row), flush=True)
    finally:
        os.sched_setaffinity(0, set(cpus))
    speedups = sorted(r["speedup"] for r in rounds)
    print(json.dumps({"summary": {"cpus": len(cpus), "rounds": len(rounds),
                                  "spell_share": round(sum(r["spell"] for r in rounds) / max(len(rounds), 1), 3),
                                  "speedup_median": speedups[len(speedups) // 2] if speedups else None,
                                  "speedup_min": speedups[0] if speedups else None}}))


if __name__ == "__main__":
    main()
