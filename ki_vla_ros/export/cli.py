"""`ki-vla export`: write the ONNX files of a model folder (and, with --engine, its TensorRT engines).

    ki-vla export --model DIR                          ONNX into an existing model folder
    ki-vla export --checkpoint CKPT --out DIR          training checkpoint (or run folder: its latest)
                                                       -> model folder DIR, then its ONNX
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ki_vla_ros.export.onnx_export import export_onnx
from ki_vla_ros.runtime.model_dir import load_model_dir


def export_model_dir(model_dir: str | Path, num_steps: int | None = None,
                     precisions: tuple[str, ...] = ("fp32",), prompt_tokens: int | None = None) -> dict:
    bundle = load_model_dir(model_dir)
    steps = num_steps or bundle.manifest.num_flow_steps
    spec = export_onnx(bundle.model, bundle.path / "onnx", num_cameras=len(bundle.layout.camera_names),
                       prompt_tokens=prompt_tokens or bundle.config.max_prefix_tokens, num_steps=steps,
                       weights_sha256=bundle.weights_sha256, precisions=precisions)
    return {"onnx_dir": str(bundle.path / "onnx"), "num_steps": spec.num_steps, "prefix_len": spec.prefix_len,
            "precisions": spec.precisions}


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
                        help="comma-separated ONNX precisions to write: fp32, fp16, bf16 (TensorRT builds "
                             "strongly typed engines from these)")
    parser.add_argument("--engine", action="store_true", help="also build the TensorRT engines (GPU only)")
    args = parser.parse_args(argv)
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
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    result = export_model_dir(args.model, args.num_steps, precisions)
    if args.engine:
        from ki_vla_ros.runtime import Policy

        for precision in precisions:
            Policy.load(args.model, backend="tensorrt", num_steps=result["num_steps"], precision=precision)
    result["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result))
    return 0
