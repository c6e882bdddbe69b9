"""What the benchmarks share: the model's dimensions (`--preset` / `--dims FILE`), FLOP counts of a
call, this machine's measured GEMM peak per precision, and the machine's state while measuring."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import torch
import yaml

from ki_vla_ros.configio import ConfigError, from_dict
from ki_vla_ros.model import ModelConfig


def add_model_args(parser: argparse.ArgumentParser, preset: str = "small") -> None:
    parser.add_argument("--preset", default=preset, help=f"model preset [{preset}]")
    parser.add_argument("--dims", default=None, help="YAML/JSON file of ModelConfig fields, over the preset "
                        "(e.g. benchmarks/dims/peer.yaml)")


def model_overrides(args: argparse.Namespace) -> dict:
    """The fields of the --dims file ({} without one), checked against ModelConfig over the preset."""
    base = dataclasses.asdict(ModelConfig.preset(args.preset))
    if not args.dims:
        return {}
    try:
        with open(args.dims) as f:
            dims = yaml.safe_load(f)  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"--dims {args.dims}: cannot read it ({exc})") from None
    if not isinstance(dims, dict):
        raise SystemExit(f"--dims {args.dims}: expected a mapping of ModelConfig fields")
    try:
        from_dict(ModelConfig, {**base, **dims}, where=args.dims)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    return dims


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The preset, with the fields of the --dims file (if any) replacing its own."""
    return ModelConfig.preset(args.preset, **model_overrides(args))


def count_flops(fn, *args, **kwargs) -> int:
    """Floating-point operations of the matrix products (matmul, linear, conv, attention) in fn(*args).
    torch's counter knows the GPU attention kernels; the CPU flash kernels get the same formulas."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    cpu_attention = {  # argument shapes in, FLOPs out (FlopCounterMode passes shapes)
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *rest, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad_out, q, k, v, *rest, out_shape=None, **kw: fc.sdpa_backward_flop_count(grad_out, q, k, v)}
    with fc.FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def gemm_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n×n×n matrix product in `dtype` with torch's current threads."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return round(2 * n**3 / best / 1e9, 1)


def machine() -> dict:
    """CPU, torch threads and the load average (1, 5, 15 min) at the time of measuring."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def gemm_peaks() -> dict:
    return {"fp32": gemm_peak_gflops(torch.float32), "bf16": gemm_peak_gflops(torch.bfloat16)}
