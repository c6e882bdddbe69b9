"""TensorRT engines built from the exported ONNX files, run with CUDA device buffers.

Real code for GPU machines (TensorRT 10 or 11 Python API). Where TensorRT or a CUDA GPU is
missing, `require_tensorrt()` raises `TensorRTUnavailable` with the reason; nothing is faked.

Precision: TensorRT 11 removed the weak-typing flags (`BuilderFlag.FP16`/`BF16`), so precision
is a property of the ONNX file: the exporter writes fp32, fp16 or bf16 variants and the engine is
built as a strongly typed network from the variant asked for (TensorRT 10 gets the same
`STRONGLY_TYPED` flag, so both versions build the same engine). Shapes are fixed per embodiment;
inputs that the ONNX file leaves dynamic get an optimisation profile with min = opt = max at
the given shape. Engines are cached next to the ONNX files, keyed by GPU name, TensorRT version
and precision, and the builder's timing cache is kept beside them so rebuilds are fast.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot run here (package or GPU missing); the message says which."""


def require_tensorrt() -> Any:
    """Import tensorrt and check for a CUDA GPU; raise TensorRTUnavailable with the reason."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "backend 'tensorrt' needs the TensorRT Python package (`pip install tensorrt`, matching "
            f"your CUDA version); import failed: {exc}"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("backend 'tensorrt' needs a CUDA GPU, and torch sees none "
                                  "(torch.cuda.is_available() is False)")
    return trt


def pick_precision(requested: str) -> str:
    """'auto' -> bf16 where the GPU supports it, else fp16; explicit values are checked."""
    import torch

    if requested not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be one of auto, fp32, fp16, bf16, got {requested!r}")
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise TensorRTUnavailable(f"bf16 is not supported on {torch.cuda.get_device_name(0)}; use fp16")
    return requested


def engine_dir(onnx_dir: Path, precision: str) -> Path:
    """<onnx_dir>/engines/<gpu name>-trt<version>-<precision>/"""
    trt = require_tensorrt()
    import torch

    gpu = re.sub(r"[^A-Za-z0-9_.-]+", "_", torch.cuda.get_device_name(0)).strip("_")
    return Path(onnx_dir) / "engines" / f"{gpu}-trt{trt.__version__}-{precision}"


def build_engine(onnx_path: Path, engine_path: Path, input_shapes: dict[str, tuple[int, ...]],
                 timing_cache_path: Path | None = None, workspace_bytes: int = 4 << 30) -> Path:
    """Build a serialized engine from `onnx_path` and write it atomically to `engine_path`."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10; always on (and the flag may be absent) in 11
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX file: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    cache_bytes = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.exists() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if -1 in tuple(tensor.shape):
            if tensor.name not in input_shapes:
                raise ValueError(f"{onnx_path}: input '{tensor.name}' has dynamic shape {tuple(tensor.shape)} "
                                 "and no fixed shape was given")
            profile = profile or builder.create_optimization_profile()
            shape = tuple(input_shapes[tensor.name])
            profile.set_shape(tensor.name, shape, shape, shape)
    if profile is not None:
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(engine_path, bytes(serialized))
    if timing_cache_path is not None:
        _atomic_write(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    return engine_path


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool, trt.int8: torch.int8, trt.uint8: torch.uint8}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:
        raise TypeError(f"TensorRT tensor type {dtype} has no torch equivalent here")
    return table[dtype]


class TrtEngine:
    """One deserialized engine with an execution context; inputs and outputs are CUDA tensors.

    Outputs are written into buffers allocated once per shape and reused, so a caller that keeps
    an output across calls must clone it."""

    def __init__(self, engine_path: Path):
        trt = require_tensorrt()
        import torch

        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT could not deserialize the engine "
                               "(built with another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = dtype
            else:
                self.outputs[name] = dtype
        self._buffers: dict[str, Any] = {}

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        torch = self._torch
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise ValueError(f"TensorRT engine inputs missing: {sorted(missing)}")
        keep = []  # converted inputs must live until the stream has run
        for name, dtype in self.inputs.items():
            tensor = inputs[name]
            if not isinstance(tensor, torch.Tensor):
                tensor = torch.as_tensor(tensor)
            tensor = tensor.to(device="cuda", dtype=dtype).contiguous()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        results = {}
        for name, dtype in self.outputs.items():
            shape = tuple(self.context.get_tensor_shape(name))
            buf = self._buffers.get(name)
            if buf is None or tuple(buf.shape) != shape:
                buf = self._buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, buf.data_ptr())
            results[name] = buf
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return results
