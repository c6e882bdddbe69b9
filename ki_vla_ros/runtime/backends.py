"""Inference backends behind one interface: the prefix pass once, then the whole flow loop.

    cache = backend.prefix(images, image_mask, tokens, token_mask, state)   # once per observation
    actions = backend.flow(cache, noise)                                    # N Euler steps
    actions = backend.flow(cache, noise, action_prefix, action_prefix_len)  # ... continuing a prefix
    actions = backend.chunk(inputs, noise[, action_prefix, action_prefix_len])  # both: what `Policy` runs

`chunk` is the prefix pass and the flow loop of one observation (`inputs` = the five prefix
inputs). OpenVINO compiles the two graphs joined into one (`chain_prefix_flow`): the cache never
leaves the runtime, one call instead of two (≈ 1.5 ms less per chunk at `small`, docs/runtime.md);
the other backends call `prefix`, then `flow`.

Inputs are numpy arrays with a batch dimension of 1 (float32 images [1, V, 3, S, S], bool
image_mask [1, V], int64 tokens [1, Lt], bool token_mask [1, Lt], float32 state [1, Ds],
float32 noise [1, H, D], float32 action_prefix [1, H, D] normalised, of which the first
action_prefix_len rows count — model/rtc.py); `flow` returns float32 [1, H, D] normalised
actions, whose first action_prefix_len rows are the prefix. The cache is opaque and stays where
the backend computes (CPU tensors, ONNX Runtime arrays, CUDA buffers).

Precision (runtime/precision.py): torch casts the weights (fp32, bf16, fp16 on CUDA) and stacks the
q/k/v and gate/up projections once (`KIVLA.fuse_projections`); ONNX Runtime reads the export of
that precision (fp32, or int8: dynamically quantised matrix products); OpenVINO compiles the fp32
export for the CPU, to run in fp32 or in bf16 (its CPU plugin picks bf16 kernels where the CPU has
bf16 units and keeps precision-sensitive operations in fp32), or int8 (the token-wise products' weights
made int8 at load: runtime/openvino_int8.py); TensorRT builds strongly typed engines
from the fp32 / fp16 / bf16 exports. The Euler integration runs in fp32 on torch, ONNX Runtime and
TensorRT.

Threads: OMP_WAIT_POLICY=PASSIVE in the environment (before torch is imported) makes idle
inference threads sleep instead of spinning, in torch's OpenMP pool and ONNX Runtime's; on a CPU
shared with other busy processes this keeps multi-threaded inference from stalling
(docs/runtime.md, "Speed").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ki_vla_ros.export.onnx_export import DTYPES, FLOW_INPUTS, PREFIX_INPUTS, PREFIX_OUTPUTS, ExportSpec
from ki_vla_ros.model import KIVLA
from ki_vla_ros.runtime.openvino_int8 import activation_group, compress_matmul_weights, product_sizes

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


class BackendError(RuntimeError):
    """A backend that cannot run with this model folder here; the message says why."""


def _runtime(backend: str, package: str, precisions: tuple[str, ...], precision: str, elsewhere: str):
    """The runtime package a backend needs (imported), once `precision` is one it runs; BackendError
    naming what is missing or what to use instead (`elsewhere`) otherwise."""
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise BackendError(f"backend '{backend}' needs the {package} package: {exc}") from None
    if precision not in precisions:
        raise BackendError(f"backend '{backend}' runs {', '.join(precisions)}, not {precision!r} ({elsewhere})")
    return module


class TwoCalls:
    """`chunk` as the prefix pass, then the flow loop (backends that keep the two graphs apart)."""

    def chunk(self, inputs, noise: np.ndarray, action_prefix: np.ndarray | None = None,
              action_prefix_len: int = 0) -> np.ndarray:
        return self.flow(self.prefix(*inputs), noise, action_prefix, action_prefix_len)


class TorchBackend(TwoCalls):
    name = "torch"
    precisions = ("fp32", "bf16", "fp16")

    def __init__(self, model: KIVLA, num_steps: int, device: str = "cpu", compile: bool = False,
                 precision: str = "fp32"):
        self.device, self.num_steps = torch.device(device), num_steps
        if precision not in self.precisions:
            raise BackendError(f"backend 'torch' runs {', '.join(self.precisions)}, not {precision!r}")
        if precision == "fp16" and self.device.type == "cpu":
            raise BackendError("backend 'torch': fp16 is for GPUs; on a CPU use bf16 (or fp32)")
        self.precision, self.dtype = precision, DTYPES[precision]
        self.model = model.to(device=self.device, dtype=self.dtype).eval().fuse_projections()
        self._prefix = self.model.prefix_cache
        self._flow = self.model.flow_from_cache
        if compile:
            self._prefix = torch.compile(self._prefix)
            self._flow = torch.compile(self._flow)

    @torch.no_grad()
    def prefix(self, images, image_mask, tokens, token_mask, state) -> Any:
        images, image_mask, tokens, token_mask, state = [
            torch.as_tensor(a).to(self.device) for a in (images, image_mask, tokens, token_mask, state)]
        return self._prefix(images.to(self.dtype), image_mask, tokens, token_mask, state.to(self.dtype))

    @torch.no_grad()
    def flow(self, cache, noise: np.ndarray, action_prefix: np.ndarray | None = None,
             action_prefix_len: int = 0) -> np.ndarray:
        k, v, prefix_mask = cache
        prefix = prefix_len = None
        if action_prefix is not None:
            prefix = torch.as_tensor(action_prefix).to(self.device)
            prefix_len = torch.full((1,), int(action_prefix_len), dtype=torch.long, device=self.device)
        x = self._flow(k, v, prefix_mask, torch.as_tensor(noise).to(self.device), self.num_steps, prefix, prefix_len)
        return x.float().cpu().numpy()


def flow_feeds(noise: np.ndarray, action_prefix: np.ndarray | None, action_prefix_len: int) -> dict:
    """The exported flow loop's inputs besides the cache: noise float32 [1, H, D], and the action
    prefix as float32 [1, H, D] and int64 [1] (zeros: none)."""
    prefix = np.zeros_like(noise, np.float32) if action_prefix is None else action_prefix.astype(np.float32)
    length = np.array([0 if action_prefix is None else int(action_prefix_len)], np.int64)
    return {"noise": noise.astype(np.float32, copy=False), "action_prefix": prefix, "action_prefix_len": length}


def check_export(onnx_dir: Path, weights_sha256: str, num_steps: int, precision: str = "fp32") -> ExportSpec:
    """The export spec of `onnx_dir` if it was made from these weights, with these flow steps and this
    precision; BackendError saying how to re-export otherwise."""
    spec_path = onnx_dir / "export.json"
    if not spec_path.is_file():
        raise BackendError(f"{spec_path}: missing; export the model first (`ki-vla export --model DIR`)")
    try:
        spec = ExportSpec.load(spec_path)
    except ValueError as exc:
        raise BackendError(str(exc)) from None
    if spec.weights_sha256 != weights_sha256:
        raise BackendError(f"{onnx_dir}: the ONNX files were exported from other weights; "
                           "re-export with `ki-vla export --model DIR`")
    if spec.num_steps != num_steps:
        raise BackendError(f"{onnx_dir}: the flow loop was exported with {spec.num_steps} steps, "
                           f"{num_steps} were asked for; re-export with --num-steps {num_steps}")
    if precision not in spec.precisions:
        raise BackendError(f"{onnx_dir}: no {precision} export (have {', '.join(spec.precisions)}); run "
                           f"`ki-vla export --model DIR --precision {precision}`")
    return spec


class OnnxRuntimeBackend(TwoCalls):
    name = "onnxruntime"
    precisions = ("fp32", "int8")

    def __init__(self, onnx_dir: Path, weights_sha256: str, num_steps: int, threads: int | None = None,
                 precision: str = "fp32", profile_dir: Path | None = None):
        """`profile_dir`: record ONNX Runtime's per-node profile of every run there (`end_profiling`;
        benchmarks/latency.py --profile). Profiling slows each run: not for control."""
        ort = _runtime("onnxruntime", "onnxruntime", self.precisions, precision,
                       "bf16: backend openvino, torch or tensorrt; fp16: torch on a GPU or tensorrt")
        self.precision = precision
        self.spec = check_export(onnx_dir, weights_sha256, num_steps, precision)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # as torch's OpenMP threads: sleep, not spin
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        wanted = ("CPUExecutionProvider",) if precision == "int8" else ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in wanted if p in available]
        self.providers = providers
        sessions = {}
        for graph in ("prefix", "flow"):
            if profile_dir is not None:
                options.enable_profiling = True
                options.profile_file_prefix = str(Path(profile_dir) / graph)
            sessions[graph] = ort.InferenceSession(str(onnx_dir / self.spec.file(graph, precision)), options,
                                                   providers=providers)
        self.prefix_session, self.flow_session = sessions["prefix"], sessions["flow"]
        # inputs the graph does not read (e.g. `state` outside "continuous" state mode) are pruned
        self._prefix_inputs = {i.name for i in self.prefix_session.get_inputs()}

    def prefix(self, images, image_mask, tokens, token_mask, state) -> Any:
        feeds = dict(zip(PREFIX_INPUTS, (images, image_mask, tokens, token_mask, state)))
        return self.prefix_session.run(None, {k: v for k, v in feeds.items() if k in self._prefix_inputs})

    def flow(self, cache, noise: np.ndarray, action_prefix: np.ndarray | None = None,
             action_prefix_len: int = 0) -> np.ndarray:
        feeds = dict(zip(FLOW_INPUTS, cache)) | flow_feeds(noise, action_prefix, action_prefix_len)
        return self.flow_session.run(None, feeds)[0]

    def end_profiling(self) -> dict[str, Path]:
        """Stop profiling (a backend made with `profile_dir`): {"prefix" | "flow": the JSON trace}."""
        return {"prefix": Path(self.prefix_session.end_profiling()), "flow": Path(self.flow_session.end_profiling())}


class OpenVinoBackend:
    """The fp32 ONNX export compiled by OpenVINO's CPU plugin, in fp32, bf16 (inference precision
    hint; bf16 needs a CPU with bf16 units: AVX512-BF16 or AMX) or int8 (the token-wise matrix products
    with int8 weights and, on CPUs with int8 dot products, int8 activations quantised per call:
    runtime/openvino_int8.py; everything else as bf16 where the CPU has it, else fp32). Threads are not
    pinned to cores: the node shares the CPU with the simulator or the robot's drivers.

    `chunk` runs prefix and flow loop compiled as one graph (`chain_prefix_flow`), compiled at load;
    `prefix` and `flow` alone (benchmarks, tests) are compiled on first use."""

    name = "openvino"
    precisions = ("fp32", "bf16", "int8")

    def __init__(self, onnx_dir: Path, weights_sha256: str, num_steps: int, threads: int | None = None,
                 precision: str = "fp32"):
        ov = _runtime("openvino", "openvino", self.precisions, precision, "fp16: torch on a GPU or tensorrt")
        self._core = ov.Core()
        bf16_units = "BF16" in self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and not bf16_units:
            raise BackendError("backend 'openvino': this CPU has no bf16 units (AVX512-BF16 or AMX); use fp32")
        self.precision, self._onnx_dir = precision, onnx_dir
        self.spec = check_export(onnx_dir, weights_sha256, num_steps, "fp32")  # the rest is chosen at load time
        compute = "bf16" if precision == "bf16" or (precision == "int8" and bf16_units) else "f32"
        self._config = {"INFERENCE_PRECISION_HINT": compute, "PERFORMANCE_HINT": "LATENCY",
                        "ENABLE_CPU_PINNING": False}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        self._requests, self._inputs = {}, {}
        prefix, flow = self._read("prefix"), self._read("flow")
        int8 = precision == "int8"
        self.activation_group = activation_group(product_sizes(prefix) + product_sizes(flow)) if int8 else None
        self.int8_products = len(self._int8(prefix)) + len(self._int8(flow))  # products given int8 weights
        if self.activation_group:
            self._config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(self.activation_group)
        self._compile("chunk", chain_prefix_flow(prefix, flow))

    def _read(self, graph: str):
        return self._core.read_model(str(self._onnx_dir / self.spec.file(graph)))

    def _int8(self, model) -> list[int]:
        """Precision int8: the products' weights made int8 in place (runtime/openvino_int8.py); their K."""
        return compress_matmul_weights(model, self.activation_group) if self.activation_group else []

    def _compile(self, graph: str, model) -> None:
        compiled = self._core.compile_model(model, "CPU", self._config)
        self._requests[graph] = compiled.create_infer_request()
        # input index -> graph input name; a port can carry several names (OpenVINO merges the
        # images' cast into it), and inputs the graph does not read (e.g. `state`) are pruned
        self._inputs[graph] = {i: next(n for n in (*PREFIX_INPUTS, *FLOW_INPUTS) if n in port.get_names())
                               for i, port in enumerate(compiled.inputs)}

    def _run(self, graph: str, feeds: dict) -> list[np.ndarray]:
        if graph not in self._requests:
            model = self._read(graph)
            self._int8(model)
            self._compile(graph, model)
        request = self._requests[graph]
        out = request.infer({i: feeds[name] for i, name in self._inputs[graph].items()})
        return [np.array(out[port]) for port in request.model_outputs]  # copies: the request reuses its memory

    def prefix(self, images, image_mask, tokens, token_mask, state) -> Any:
        return self._run("prefix", dict(zip(PREFIX_INPUTS, (images, image_mask, tokens, token_mask, state))))

    def flow(self, cache, noise: np.ndarray, action_prefix: np.ndarray | None = None,
             action_prefix_len: int = 0) -> np.ndarray:
        feeds = dict(zip(FLOW_INPUTS, cache)) | flow_feeds(noise, action_prefix, action_prefix_len)
        return self._run("flow", feeds)[0]

    def chunk(self, inputs, noise: np.ndarray, action_prefix: np.ndarray | None = None,
              action_prefix_len: int = 0) -> np.ndarray:
        feeds = dict(zip(PREFIX_INPUTS, inputs)) | flow_feeds(noise, action_prefix, action_prefix_len)
        return self._run("chunk", feeds)[0]


def chain_prefix_flow(prefix, flow):
    """Two OpenVINO models (read from prefix.onnx and flow_loop.onnx) -> one: the prefix inputs,
    noise and action prefix in, actions out; the flow loop's `k`, `v` and `prefix_mask` inputs are
    wired to the prefix's outputs. `flow` is consumed (its inputs are rewired)."""
    import openvino as ov

    produced = {name: result.input_value(0) for result in prefix.get_results()
                for name in result.output(0).get_names()}
    kept = []
    for param in flow.get_parameters():
        names = param.output(0).get_names()
        source = next((produced[n] for n in PREFIX_OUTPUTS if n in names), None)
        if source is None:
            kept.append(param)
            continue
        for target in list(param.output(0).get_target_inputs()):
            target.replace_source_output(source)
    if len(kept) != len(flow.get_parameters()) - len(PREFIX_OUTPUTS):
        raise BackendError("the flow loop's cache inputs do not match the prefix's outputs; re-export")
    return ov.Model(flow.get_results(), [*prefix.get_parameters(), *kept], "chunk")


def op_times_ms(trace: Path) -> dict:
    """An ONNX Runtime profile trace -> {"runs", "run_ms" (median wall time of a run), "ops": per
    operator type {"ms": kernel time per run, "nodes": node executions per run}, dearest first}. The
    first run (warm-up: allocations, thread start) is left out; the gap between the kernels' sum and
    run_ms is the session's own work between kernels."""
    import json

    events = json.loads(Path(trace).read_text())
    runs = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs) < 2:
        raise ValueError(f"{trace}: {len(runs)} model_run(s) in this ONNX Runtime profile; need a warm-up and one more")
    runs = sorted(runs)[1:]
    ops: dict[str, list[float]] = {}
    for e in events:  # the kernels of every run after the warm-up
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= runs[0][0]:
            ops.setdefault(e["args"]["op_name"], []).append(e["dur"])
    n = len(runs)
    per_run = {op: {"ms": round(sum(d) / n / 1e3, 3), "nodes": len(d) // n} for op, d in ops.items()}
    return {"runs": n, "run_ms": round(float(np.median([b - a for a, b in runs])) / 1e3, 3),
            "ops": dict(sorted(per_run.items(), key=lambda kv: -kv[1]["ms"]))}


def make_backend(bundle, backend: str, num_steps: int, device: str = "cpu", compile: bool = False,
                 precision: str = "fp32", threads: int | None = None):
    """The backend `backend` for a loaded model folder (`ModelBundle`)."""
    if backend == "torch":
        return TorchBackend(bundle.model, num_steps, device=device, compile=compile, precision=precision)
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(bundle.path / "onnx", bundle.weights_sha256, num_steps, threads=threads,
                                  precision=precision)
    if backend == "openvino":
        return OpenVinoBackend(bundle.path / "onnx", bundle.weights_sha256, num_steps, threads=threads,
                               precision=precision)
    if backend == "tensorrt":
        return TensorRTBackend(bundle.path / "onnx", bundle.weights_sha256, num_steps, precision=precision)
    raise BackendError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")


class TensorRTBackend(TwoCalls):
    name = "tensorrt"

    def __init__(self, onnx_dir: Path, weights_sha256: str, num_steps: int, precision: str = "auto"):
        from ki_vla_ros.runtime import tensorrt_engine as te

        try:
            te.require_tensorrt()
        except te.TensorRTUnavailable as exc:
            raise BackendError(str(exc)) from None
        self.precision = te.pick_precision(precision)
        self.spec = check_export(onnx_dir, weights_sha256, num_steps, self.precision)
        cache_dir = te.engine_dir(onnx_dir, self.precision)
        timing_cache = onnx_dir / "engines" / "timing.cache"
        s = self.spec
        shapes = {
            "images": (1, s.num_cameras, 3, s.image_size, s.image_size), "image_mask": (1, s.num_cameras),
            "tokens": (1, s.prompt_tokens), "token_mask": (1, s.prompt_tokens), "state": (1, s.state_dim),
            "k": (s.depth, 1, s.prefix_len, s.num_kv_heads, s.head_dim),
            "v": (s.depth, 1, s.prefix_len, s.num_kv_heads, s.head_dim),
            "prefix_mask": (1, s.prefix_len), "noise": (1, s.action_horizon, s.action_dim),
            "action_prefix": (1, s.action_horizon, s.action_dim), "action_prefix_len": (1,),
        }
        engines = {}
        for part in ("prefix", "flow"):
            onnx_file = onnx_dir / s.file(part, self.precision)
            engine_file = cache_dir / (onnx_file.stem + ".engine")
            if not engine_file.is_file():
                te.build_engine(onnx_file, engine_file, shapes, timing_cache)
            engines[part] = te.TrtEngine(engine_file)
        self.prefix_engine, self.flow_engine = engines["prefix"], engines["flow"]

    def prefix(self, images, image_mask, tokens, token_mask, state) -> Any:
        out = self.prefix_engine(images=images, image_mask=image_mask, tokens=tokens, token_mask=token_mask,
                                 state=state)
        return out["k"].clone(), out["v"].clone(), out["prefix_mask"].clone()  # the cache stays on the GPU

    def flow(self, cache, noise: np.ndarray, action_prefix: np.ndarray | None = None,
             action_prefix_len: int = 0) -> np.ndarray:
        k, v, prefix_mask = cache
        out = self.flow_engine(k=k, v=v, prefix_mask=prefix_mask, **flow_feeds(noise, action_prefix, action_prefix_len))
        return out["actions"].float().cpu().numpy()
