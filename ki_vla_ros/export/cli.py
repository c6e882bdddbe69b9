"""`ki-vla export`: write the ONNX files of a model folder (and, with --engine, its TensorRT engines).

    ki-vla export --model DIR                          ONNX into an existing model folder
    ki-vla export --checkpoint CKPT --out DIR          training checkpoint (or run folder: its latest)
                                                       -> model folder DIR, then its ONNX
    ki-vla export --model DIR --precision fp32,bf16,int8
                                                       also bf16 / int8: written where they are files
                                                       (bf16 ONNX for TensorRT, int8 for ONNX Runtime)
                                                       and checked against fp32 on the backends that
                                                       run them here (torch bf16, onnxruntime int8);
                                                       the results go to DIR/precisions.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ki_vla_ros.export.onnx_export import PRECISIONS, export_onnx
from ki_vla_ros.runtime.backends import BackendError
from ki_vla_ros.runtime.model_dir import load_model_dir
from ki_vla_ros.runtime.precision import CHECKED_ON, verify_precision


def export_model_dir(model_dir: str | Path, num_steps: int | None = None,
                     precisions: tuple[str, ...] = ("fp32",), prompt_tokens: int | None = None,
                     check: bool = True) -> dict:
    """ONNX files of the model folder; with `check`, every precision other than fp32 is also checked
    against fp32 on the backends that run it here (runtime/precision.py) and recorded."""
    bundle = load_model_dir(model_dir)
    steps = num_steps or bundle.manifest.num_flow_steps
    spec = export_onnx(bundle.model, bundle.path / "onnx", num_cameras=len(bundle.layout.camera_names),
                       prompt_tokens=prompt_tokens or bundle.config.max_prefix_tokens, num_steps=steps,
                       weights_sha256=bundle.weights_sha256, precisions=precisions)
    result = {"onnx_dir": str(bundle.path / "onnx"), "num_steps": spec.num_steps, "prefix_len": spec.prefix_len,
              "precisions": spec.precisions}
    if check:
        result["checks"] = check_precisions(bundle.path, precisions, steps)
    return result


def ensure_export(model_dir: str | Path, num_steps: int | None = None, precision: str = "fp32",
                  backend: str = "onnxruntime") -> bool:
    """Export the folder's ONNX files for ONNX Runtime or OpenVINO unless an export of these weights,
    flow steps and precision is there already (a one-time cost: 5–20 s for `small` on 2 cores). True
    when it exported; BackendError naming the folder when it cannot be written."""
    from ki_vla_ros.runtime.backends import OnnxRuntimeBackend, OpenVinoBackend, check_export
    from ki_vla_ros.runtime.model_dir import WEIGHTS, file_sha256, load_manifest
    from ki_vla_ros.runtime.precision import resolve_precision

    path = Path(model_dir)
    steps = num_steps or load_manifest(path).num_flow_steps
    runner = {"onnxruntime": OnnxRuntimeBackend, "openvino": OpenVinoBackend}[backend]
    precision = resolve_precision(backend, precision)
    if precision not in runner.precisions:
        return False  # nothing the backend could run: it names the precisions it has
    if backend == "openvino":
        precision = "fp32"  # OpenVINO compiles the fp32 export in the precision asked for
    try:
        check_export(path / "onnx", file_sha256(path / WEIGHTS), steps, precision)
        return False
    except BackendError:
        pass
    try:
        export_model_dir(path, steps, precisions=tuple(dict.fromkeys(("fp32", precision))))
    except OSError as exc:  # e.g. a model folder installed read-only
        raise BackendError(f"{path}: cannot write its ONNX export ({exc}); run `ki-vla export --model DIR` "
                           f"on a writable copy, or use backend torch") from None
    return True


def check_precisions(model_dir: Path, precisions: tuple[str, ...], num_steps: int) -> dict:
    """{"backend/precision": check entry, or the reason it could not run here}."""
    import torch

    out = {}
    for precision in precisions:
        for backend in CHECKED_ON.get(precision, ()):
            if backend == "torch" and precision == "fp16" and not torch.cuda.is_available():
                out[f"{backend}/{precision}"] = "not checked: fp16 on torch needs a GPU"
                continue
            try:
                out[f"{backend}/{precision}"] = verify_precision(model_dir, backend, precision, num_steps)
            except BackendError as exc:  # e.g. bf16 on openvino on a CPU without bf16 units
                out[f"{backend}/{precision}"] = f"not checked: {exc}"
    return out


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ki-vla export", description=__doc__)
    parser.add_argument("--model", help="model folder")
    parser.add_argument("--checkpoint", help="training checkpoint folder, or a run folder (its latest checkpoint)")
    parser.add_argument("--out", help="with --checkpoint: the model folder to write")
    parser.add_argument("--no-ema", action="store_true", help="with --checkpoint: raw weights even if EMA exists")
    parser.add_argument("--no-onnx", action="store_true", help="with --checkpoint: only write the model folder")
    parser.add_argument("--num-steps", type=int, default=None, help="Euler steps unrolled into the flow loop "
                        "(default: the model's num_flow_steps)")
    parser.add_argument("--precision", default="fp32",
                        help="comma-separated precisions: fp32 (always written), bf16 / fp16 (ONNX for TensorRT; "
                             "bf16 also checked on torch), int8 (ONNX Runtime, dynamically quantised); every one "
                             "but fp32 is checked against fp32 here and recorded in DIR/precisions.json")
    parser.add_argument("--engine", action="store_true", help="also build the TensorRT engines (GPU only)")
    args = parser.parse_args(argv)
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        parser.error(f"--precision: {', '.join(unknown) or 'nothing given'}; choose from {', '.join(PRECISIONS)}")
    if bool(args.model) == bool(args.checkpoint):
        parser.error("give either --model DIR or --checkpoint CKPT --out DIR")
    if args.checkpoint:
        if not args.out:
            parser.error("--checkpoint needs --out DIR (the model folder to write)")
        from ki_vla_ros.train.to_model_dir import checkpoint_to_model_dir

        checkpoint_to_model_dir(args.checkpoint, args.out, use_ema=not args.no_ema, num_flow_steps=args.num_steps)
        args.model = args.out
        if args.no_onnx:
            print(json.dumps({"model_dir": str(args.out)}))
            return 0
    start = time.perf_counter()
    result = export_model_dir(args.model, args.num_steps, precisions)
    if args.engine:
        from ki_vla_ros.runtime import Policy

        for precision in (p for p in precisions if p != "int8"):
            Policy.load(args.model, backend="tensorrt", num_steps=result["num_steps"], precision=precision)
    result["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result))
    return 0
