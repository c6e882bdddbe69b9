"""Inference precision: what each backend computes in, and the model folder's record of the
precisions checked against fp32 (`precisions.json`).

    fp32   every backend; the reference
    bf16   torch (CPUs with AVX512-BF16 / AMX, GPUs), openvino (CPUs with AVX512-BF16 / AMX), tensorrt
    fp16   torch on CUDA, tensorrt
    int8   onnxruntime on CPU: the fp32 export with dynamically quantised matrix products;
           openvino on CPU: int8 weights made at load (runtime/openvino_int8.py)
    auto   fp32 on torch, onnxruntime and openvino; tensorrt: bf16 where the GPU has it, else fp16

torch, onnxruntime and openvino run a precision other than fp32 only once the folder records that it was
checked for these weights: `ki-vla export --model DIR --precision bf16,int8` (or `verify_precision`)
runs the fp32 torch policy and the candidate on the same synthetic observations (random images,
states drawn inside the statistics' range) and the same noise, and records the largest and mean
|actions − fp32 actions| in normalised units (1 = half the q01…q99 range). The check passes under
`BOUNDS`; a failed or missing check makes `Policy.load` refuse the precision with the command that
checks it. TensorRT engines are checked on a GPU (test_runtime_policy.py: `gpu` marker).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from ki_vla_ros.runtime.backends import BackendError

RECORD = "precisions.json"
BOUNDS = {"bf16": 0.05, "fp16": 0.05, "int8": 0.1}  # max |a − a_fp32|, normalised action units
# backends a check runs on here
CHECKED_ON = {"bf16": ("torch", "openvino"), "fp16": ("torch",), "int8": ("onnxruntime", "openvino")}


class PrecisionError(BackendError):
    """A precision the model folder has not been checked for (or that failed its check)."""


def resolve_precision(backend: str, precision: str) -> str:
    """'auto' -> the backend's default ('auto' stays for tensorrt, which picks by GPU)."""
    if precision == "auto":
        return "auto" if backend == "tensorrt" else "fp32"
    return precision


def load_record(model_dir: str | Path) -> dict:
    path = Path(model_dir) / RECORD
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PrecisionError(f"{path}: unreadable ({exc}); delete it and re-run the check") from None
    return data if isinstance(data, dict) else {}


def checked(record: dict, weights_sha256: str) -> dict[str, dict]:
    """The record's checks of these weights: {"backend/precision": {...}} ({} for other weights)."""
    return record.get("checks", {}) if record.get("weights_sha256") == weights_sha256 else {}


# The CPU extensions that decide which int8 / bf16 kernels OpenVINO and ONNX Runtime run (VNNI or
# AMX for int8 products, AVX512-BF16 or AMX for bf16): a check holds for machines that share them.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> str:
    """The machine kind a check records and `cpu_backend` compares: the architecture and, where
    /proc/cpuinfo lists them, the `ISA_FLAGS` it has (e.g. "x86_64 avx2 avx512_bf16 avx512_vnni
    avx512f")."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    break
    except OSError:
        pass
    return " ".join([platform.machine() or platform.processor(), *sorted(flags.intersection(ISA_FLAGS))])


def passed_here(model_dir: str | Path) -> set[str]:
    """The "backend/precision" checks the folder records as passed for its weights on this kind of
    machine (`machine()`)."""
    from ki_vla_ros.runtime.model_dir import WEIGHTS, file_sha256

    path = Path(model_dir)
    record = load_record(path)
    if not record.get("checks"):  # nothing to hash the weights for
        return set()
    here = machine()
    return {name for name, entry in checked(record, file_sha256(path / WEIGHTS)).items()
            if entry.get("ok") and entry.get("machine") == here}


def cpu_backend(model_dir: str | Path) -> tuple[str, str]:
    """The (backend, precision) a CPU machine runs the flow policy of `model_dir` on when nothing is
    asked for (`backend: auto` with precision auto): OpenVINO int8 where it `passed_here` (about half
    ONNX Runtime fp32's time per chunk, and the same closed-loop success on the bundled model:
    models/aloha_pick4/README.md), else ONNX Runtime fp32."""
    return ("openvino", "int8") if "openvino/int8" in passed_here(model_dir) else ("onnxruntime", "fp32")


def require_checked(model_dir: Path, weights_sha256: str, backend: str, precision: str) -> None:
    """Raise PrecisionError unless `precision` on `backend` passed its check for these weights."""
    if precision == "fp32" or backend == "tensorrt":
        return
    entry = checked(load_record(model_dir), weights_sha256).get(f"{backend}/{precision}")
    if entry is None:
        raise PrecisionError(f"{model_dir}: {precision} on {backend} has not been checked against fp32 for "
                             f"these weights; run `ki-vla export --model {model_dir} --precision {precision}`")
    if not entry["ok"]:
        raise PrecisionError(f"{model_dir}: {precision} on {backend} failed its check (max action error "
                             f"{entry['max_abs_error']:.3g} > {entry['bound']}); use fp32")


def synthetic_observations(policy, count: int):
    """`count` observations for `policy`: random images at the model's size, states drawn inside the
    statistics' q01…q99 range, one instruction (seeded: the same on every call)."""
    from ki_vla_ros.runtime.types import Observation

    stats = policy.bundle.norm_stats.state
    size = policy.config.image_size
    out = []
    for seed in range(count):
        rng = np.random.default_rng(1000 + seed)
        images = {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in policy.layout.camera_names}
        state = stats.q01 + rng.uniform(0, 1, stats.dim) * (stats.q99 - stats.q01)
        out.append(Observation(images, state, "pick up the red cube"))
    return out


def action_error(reference, candidate, observations=3) -> dict[str, float]:
    """max / mean |candidate − reference| of the normalised actions (real dims) on the same inputs and noise."""
    n = len(reference.layout.action_names)
    errors = []
    for seed, obs in enumerate(synthetic_observations(reference, observations)):
        inputs, noise = reference.model_inputs(obs), reference.draw_noise(seed)
        ref = reference.backend.chunk(inputs, noise)[0, :, :n]
        out = candidate.backend.chunk(inputs, noise)[0, :, :n]  # what `Policy.infer` runs
        errors.append(np.abs(np.asarray(out, np.float64) - ref))
    return {"max_abs_error": float(max(e.max() for e in errors)),
            "mean_abs_error": float(np.mean([e.mean() for e in errors]))}


def verify_precision(model_dir: str | Path, backend: str, precision: str, num_steps: int | None = None,
                     observations: int = 3) -> dict:
    """Check `precision` on `backend` against fp32 torch and record the result in precisions.json
    (entries of other weights are dropped). Returns the entry."""
    from ki_vla_ros.runtime.policy import Policy

    model_dir = Path(model_dir)
    reference = Policy.load(model_dir, backend="torch", num_steps=num_steps, precision="fp32")
    candidate = Policy.load(model_dir, backend=backend, num_steps=num_steps, precision=precision,
                            require_check=False)
    entry = action_error(reference, candidate, observations)
    entry.update(bound=BOUNDS[precision], ok=entry["max_abs_error"] <= BOUNDS[precision],
                 num_steps=reference.num_steps, observations=observations,
                 machine=machine())
    record = load_record(model_dir)
    checks = checked(record, reference.bundle.weights_sha256)
    checks[f"{backend}/{precision}"] = {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in entry.items()}
    tmp = model_dir / f".{RECORD}.tmp"
    tmp.write_text(json.dumps({"weights_sha256": reference.bundle.weights_sha256, "checks": checks}, indent=1))
    tmp.replace(model_dir / RECORD)
    return checks[f"{backend}/{precision}"]
