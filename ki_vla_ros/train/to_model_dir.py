"""A training checkpoint -> the runtime's model folder (`runtime/model_dir.py`).

Uses the checkpoint's own copy of the run assets (ModelConfig, layout, tokenizers, the export
dataset's normalisation statistics), its weights — the EMA weights when the checkpoint has them,
unless `use_ema=False` — and writes the folder atomically with `save_model_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from ki_vla_ros.configio import from_dict, load_config
from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.rtc import RtcConfig
from ki_vla_ros.normalize import NormStats
from ki_vla_ros.runtime.model_dir import Layout, save_model_dir
from ki_vla_ros.tokenize.naive import load_action_tokenizer
from ki_vla_ros.tokenize.text import TextTokenizer
from ki_vla_ros.train import checkpoint as ckpt
from ki_vla_ros.train.data_setup import text_tokenizer_file


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if (path / "trainer.json").is_file():
        return path
    latest = ckpt.latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint (trainer.json) nor a run folder with checkpoints")
    return latest


def checkpoint_to_model_dir(checkpoint: str | Path, out: str | Path, use_ema: bool = True,
                            num_flow_steps: int | None = None) -> Path:
    path = resolve_checkpoint(checkpoint)
    assets = path / "assets"
    trainer = json.loads((path / "trainer.json").read_text())
    config = load_config(ModelConfig, assets / "model.yaml")
    layout = load_config(Layout, assets / "layout.yaml")
    train_cfg = trainer["config"]
    export_ds = train_cfg.get("export_dataset") or next(d["name"] for d in train_cfg["datasets"] if d["type"] != "vlm")
    norm = NormStats.load(assets / "norm_stats" / f"{export_ds}.json")
    model = KIVLA(config)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    ema_file = path / "ema.safetensors"
    if use_ema and ema_file.is_file():
        model.load_state_dict(load_file(str(ema_file)), strict=False)
    notes = {"checkpoint": str(path), "step": str(trainer["step"]), "recipe": trainer["recipe"],
             "weights": "EMA" if use_ema and ema_file.is_file() else "raw",
             "norm_stats": f"dataset '{export_ds}'"}
    readme = (f"# {Path(out).name}\n\nTrained with `ki-vla train` (recipe `{trainer['recipe']}`), "
              f"step {trainer['step']}, from `{path}`.\n")
    text_file = text_tokenizer_file(assets)
    if text_file.suffix == ".model":
        raise ValueError(f"{path}: trained with a SentencePiece .model tokenizer; a model folder stores a "
                         f"tokenizers-library tokenizer.json, so train with the published tokenizer.json "
                         f"(tokenizers.text_tokenizer_path) to export")
    return save_model_dir(out, model, layout, TextTokenizer.load(text_file),
                          load_action_tokenizer(assets / "action_tokenizer.json"), norm, recipe=trainer["recipe"],
                          num_flow_steps=num_flow_steps or int(train_cfg.get("num_flow_steps", 10)), notes=notes,
                          extra_files={"README.md": readme},
                          rtc=from_dict(RtcConfig, train_cfg.get("rtc", {}), str(path / "trainer.json"), "config.rtc"))
