"""ONNX export of the two halves of inference, with shapes fixed per embodiment.

1. ``prefix.onnx`` — the prefix encoder: images, image mask, prompt token ids, token mask and
   state -> per-layer keys and values of the backbone and the prefix mask. Runs once per
   observation.
2. ``flow_loop.onnx`` — the action expert's whole N-step Euler integration, unrolled: initial
   noise, K/V cache and prefix mask, and an action prefix (real-time chunking, model/rtc.py:
   ``action_prefix`` [1, H, D], normalised, and ``action_prefix_len`` [1] int64 — how many of its
   rows count; 0 = no prefix) -> action chunk (normalised). One graph serves every prefix length;
   one engine call per chunk.
3. ``expert_step.onnx`` — a single velocity evaluation (x_t, t, cache -> v), for debugging.

The graphs are traced from the model's own `prefix_cache` and `flow_from_cache` /
`expert_velocity`, so ONNX and torch share one definition of the flow step, in the inference
layout (q/k/v and gate/up as one product each, `KIVLA.fuse_projections`). Precision variants keep
fp32 inputs and outputs at the graph boundary and the Euler integration in fp32: fp16 / bf16 (for
TensorRT's strongly typed builds) cast the weights; int8 (ONNX Runtime on CPU) is the fp32 graph,
constant-folded by ONNX Runtime, with its matrix products dynamically quantised (int8 weights per
output channel, activations quantised per call). fp32 is always written: it is the reference.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ki_vla_ros.model import KIVLA

PREFIX_INPUTS = ["images", "image_mask", "tokens", "token_mask", "state"]
PREFIX_OUTPUTS = ["k", "v", "prefix_mask"]
FLOW_INPUTS = ["k", "v", "prefix_mask", "noise", "action_prefix", "action_prefix_len"]
FLOW_OUTPUTS = ["actions"]
STEP_INPUTS = ["k", "v", "prefix_mask", "x_t", "t"]
STEP_OUTPUTS = ["velocity"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = (*DTYPES, "int8")
# 2: the flow loop takes action_prefix / action_prefix_len. A version-1 export.json has no "version".
# 3: RoPE written in the form OpenVINO fuses (attention.apply_rope): the same interface, but the graph
#    the precision checks in precisions.json were made on (and about 1 ms faster per `small` chunk).
EXPORT_VERSION = 3


@dataclass
class ExportSpec:
    """The fixed shapes an export was made for (stored as onnx/export.json)."""

    num_cameras: int
    image_size: int
    prompt_tokens: int  # token budget of the text prompt (instruction + state)
    state_dim: int
    action_horizon: int
    action_dim: int
    num_steps: int
    prefix_len: int  # keys/values per layer the prefix leaves
    depth: int
    num_kv_heads: int
    head_dim: int
    weights_sha256: str  # the weights the files were exported from; a mismatch means stale files
    precisions: list[str]
    version: int = EXPORT_VERSION  # the graphs' revision (interface, or a form a precision check depends on)

    def file(self, part: str, precision: str = "fp32") -> str:
        suffix = "" if precision == "fp32" else f".{precision}"
        return {"prefix": f"prefix{suffix}.onnx", "flow": f"flow_loop{suffix}.onnx",
                "step": f"expert_step{suffix}.onnx"}[part]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> ExportSpec:
        try:
            data = json.loads(path.read_text())
            version = data.get("version", 1) if isinstance(data, dict) else None
            if version != EXPORT_VERSION:
                raise ValueError(f"{path}: export version {version}, this ki_vla_ros needs {EXPORT_VERSION} (the "
                                 f"flow loop takes an action prefix since 2, RoPE is in OpenVINO's fused form "
                                 f"since 3); re-export with `ki-vla export --model DIR`")
            return cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid export description ({exc})") from None


class PrefixEncoder(nn.Module):
    def __init__(self, model: KIVLA, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, images, image_mask, tokens, token_mask, state):
        k, v, prefix_mask = self.model.prefix_cache(images.to(self.dtype), image_mask, tokens, token_mask,
                                                    state.to(self.dtype))
        return k.float(), v.float(), prefix_mask


class FlowLoop(nn.Module):
    def __init__(self, model: KIVLA, num_steps: int, dtype: torch.dtype):
        super().__init__()
        self.model, self.num_steps, self.dtype = model, num_steps, dtype

    def forward(self, k, v, prefix_mask, noise, action_prefix, action_prefix_len):
        d = self.dtype  # the expert's; x stays fp32 (kivla.py: flow_from_cache)
        return self.model.flow_from_cache(k.to(d), v.to(d), prefix_mask, noise, self.num_steps, action_prefix,
                                          action_prefix_len)


class ExpertStep(nn.Module):
    def __init__(self, model: KIVLA, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, k, v, prefix_mask, x_t, t):
        d = self.dtype
        return self.model.expert_velocity(k.to(d), v.to(d), prefix_mask, x_t, t)


def example_inputs(model: KIVLA, num_cameras: int, prompt_tokens: int) -> tuple[torch.Tensor, ...]:
    c = model.config
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, num_cameras, 3, c.image_size, c.image_size, generator=gen) * 2 - 1
    image_mask = torch.ones(1, num_cameras, dtype=torch.bool)
    tokens = torch.randint(1, c.text_vocab_limit, (1, prompt_tokens), generator=gen)
    token_mask = torch.arange(prompt_tokens)[None] < max(1, prompt_tokens // 2)
    state = torch.rand(1, c.state_dim, generator=gen) * 2 - 1
    return images, image_mask, tokens, token_mask, state


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    # in eval mode: the exporter puts the module back into its mode afterwards, and a wrapper left in
    # training mode would call KIVLA.train(), which drops the fused inference layout for the next graph
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python floats in the unrolled loop
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          opset_version=18, dynamo=False, do_constant_folding=True)


@torch.no_grad()
def export_onnx(model: KIVLA, out_dir: Path, num_cameras: int, prompt_tokens: int, num_steps: int,
                weights_sha256: str, precisions: tuple[str, ...] = ("fp32",)) -> ExportSpec:
    """Write prefix / flow-loop / expert-step ONNX files (per precision; fp32 always) and export.json
    into `out_dir`. Files are written under temporary names and renamed once all are complete."""
    out_dir = Path(out_dir)
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    precisions = tuple(dict.fromkeys(("fp32", *precisions)))
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    c = model.config
    args = example_inputs(model, num_cameras, prompt_tokens)
    k, v, prefix_mask = model.prefix_cache(*args)
    noise = torch.randn(1, c.action_horizon, c.action_dim, generator=torch.Generator().manual_seed(1))
    action_prefix = torch.randn(1, c.action_horizon, c.action_dim, generator=torch.Generator().manual_seed(2))
    action_prefix_len = torch.full((1,), min(3, c.action_horizon), dtype=torch.long)  # traced: any length works
    t = torch.full((1,), 0.5)
    spec = ExportSpec(
        num_cameras=num_cameras, image_size=c.image_size, prompt_tokens=prompt_tokens, state_dim=c.state_dim,
        action_horizon=c.action_horizon, action_dim=c.action_dim, num_steps=num_steps,
        prefix_len=int(prefix_mask.shape[1]), depth=c.depth, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
        weights_sha256=weights_sha256, precisions=list(precisions),
    )
    written = []
    for precision in (p for p in precisions if p in DTYPES):
        dtype = DTYPES[precision]
        cast = (model if dtype == torch.float32 else _cast_copy(model, dtype)).fuse_projections()
        jobs = [
            ("prefix", PrefixEncoder(cast, dtype), args, PREFIX_INPUTS, PREFIX_OUTPUTS),
            ("flow", FlowLoop(cast, num_steps, dtype), (k, v, prefix_mask, noise, action_prefix, action_prefix_len),
             FLOW_INPUTS, FLOW_OUTPUTS),
            ("step", ExpertStep(cast, dtype), (k, v, prefix_mask, noise, t), STEP_INPUTS, STEP_OUTPUTS),
        ]
        for part, module, inputs, in_names, out_names in jobs:
            final = out_dir / spec.file(part, precision)
            tmp = final.with_name(".tmp." + final.name)
            _export(module, inputs, tmp, in_names, out_names)
            written.append((tmp, final))
            if precision == "fp32" and "int8" in precisions:
                final = out_dir / spec.file(part, "int8")
                written.append((final.with_name(".tmp." + final.name), final))
                quantize_int8(tmp, written[-1][0])
    model.fuse_projections(False)
    for tmp, final in written:
        tmp.replace(final)
    spec.save(out_dir / "export.json")
    return spec


def quantize_int8(src: Path, dst: Path) -> None:
    """`src` (fp32 ONNX) -> `dst`: constant-folded by ONNX Runtime's basic graph optimisation (the
    unrolled loop's time conditions and modulations become constants), then every MatMul with a
    constant weight dynamically quantised (onnxruntime.quantization: int8 weights per output
    channel; activations quantised per call to uint8, VNNI / AMX int8 products on x86).

    Weights use 7 of their 8 bits (`reduce_range`): on x86 CPUs without VNNI (AVX2, plain AVX-512)
    ONNX Runtime multiplies uint8 × int8 with VPMADDUBSW, whose int16 pair sums saturate with full
    8-bit weights — measured on an AVX2-only EPYC: max action error 0.92 vs fp32 (0.013 on an
    AVX-512/AMX machine). The export may run on another machine than the robot, so always."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folded = dst.with_name(dst.name + ".folded.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        logging.disable(logging.WARNING)  # the quantizer reports every tensor on the root logger
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(folded, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=True, reduce_range=True, extra_options={"MatMulConstBOnly": True})
    finally:
        logging.disable(logging.NOTSET)
        folded.unlink(missing_ok=True)


def _cast_copy(model: KIVLA, dtype: torch.dtype) -> KIVLA:
    import copy

    return copy.deepcopy(model).to(dtype)
