"""`TrainConfig`: everything `ki-vla train` reads from its YAML (loaded with `configio.load_config`).

Relative paths (run_dir, dataset paths, cache_dir, model.init) are relative to the working
directory. See docs/training.md for every field and config/train/*.yaml for examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ki_vla_ros.data.augment import AugmentConfig
from ki_vla_ros.data.config import DatasetConfig
from ki_vla_ros.model.config import PRESETS
from ki_vla_ros.model.recipes import RECIPES
from ki_vla_ros.model.rtc import RtcConfig


@dataclass
class ModelSection:
    preset: str = "small"
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields (state_dim, ...)
    init: str = ""  # start from: a model folder, or a π0.5 checkpoint (openpi/LeRobot safetensors)
    init_format: Literal["auto", "model_dir", "pi05"] = "auto"
    # then the vision tower from a vision pre-training run (train/vision_pretrain.py: a folder with
    # vision.safetensors, or that file), over whatever `init` gave it
    init_vision: str = ""

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset: unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW, on matrices only (not biases, norms)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100  # linear warm-up from 0
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0  # global L2 norm; 0: off
    # the vision tower's (`vision.*`) learning rate as a fraction of lr; 0 freezes it. A pre-trained
    # tower's localisation does not survive lr 1e-3 from a fresh backbone (docs/training.md)
    vision_lr_scale: float = 1.0
    # the backbone's (text embeddings, state projection, decoder layers, lm_head) learning rate as a
    # fraction of lr; 0 freezes it. A fresh expert's gradient at full lr wipes out what a pre-trained
    # backbone knows (docs/training.md, "Word-object binding")
    backbone_lr_scale: float = 1.0

    def validate(self) -> None:
        for key in ("vision_lr_scale", "backbone_lr_scale"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key}: expected 0 <= x <= 1, got {getattr(self, key)}")


@dataclass
class TokenizerConfig:
    text_vocab_size: int = 0  # 0: min(2048, the model's text id range)
    fast_vocab_size: int = 0  # 0: min(1024, model num_fast_tokens)
    fast_scale: float = 10.0
    naive_bins: int = 0  # naive_tokens recipe: 0: min(256, num_fast_tokens)
    fit_chunks: int = 2000  # action chunks the FAST BPE is fitted on
    # a published text tokenizer (e.g. Gemma's for π0.5 fine-tuning) instead of training a BPE:
    # a tokenizers-library `tokenizer.json` or a SentencePiece `.model`
    text_tokenizer_path: str = ""
    # a fitted action tokenizer used as it is instead of fitting one (e.g. the action_tokenizer.json
    # of the robot model that model.init fine-tunes: its backbone learned those FAST token meanings)
    action_tokenizer_path: str = ""

    def validate(self) -> None:
        if self.action_tokenizer_path and not Path(self.action_tokenizer_path).is_file():
            raise ValueError(f"action_tokenizer_path: no such file {self.action_tokenizer_path!r}")
        path = self.text_tokenizer_path
        if not path:
            return
        if Path(path).suffix not in (".json", ".model"):
            raise ValueError(f"text_tokenizer_path: expected a tokenizer.json or a SentencePiece .model, got {path!r}")
        if not Path(path).is_file():
            raise ValueError(f"text_tokenizer_path: no such file {path!r}")
        if self.text_vocab_size:
            raise ValueError("text_vocab_size: only for a trained BPE; with text_tokenizer_path the published "
                             "tokenizer's size is used (leave it 0)")


@dataclass
class TrainConfig:
    run_dir: str
    datasets: list[DatasetConfig]
    model: ModelSection = field(default_factory=ModelSection)
    recipe: str = "ki"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 8  # per process (global batch = batch_size * world size * grad_accum)
    grad_accum: int = 1
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: DDP, or FSDP2 (sharded params/grads/optimiser)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema_decay: float = 0.0  # 0: no EMA; e.g. 0.999
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA / CPUs with native bf16
    device: str = "auto"  # auto: cuda:<local rank> if available, else cpu
    threads: int = 0  # torch intra-op threads (0: torch default)
    log_every: int = 10
    eval_every: int = 200  # 0: only at the end
    eval_samples: int = 64  # held-out examples per evaluation (robot and VLM each)
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    num_flow_steps: int = 10  # Euler steps for the evaluation and the exported model
    export_dataset: str = ""  # robot dataset whose layout + norm stats go into the model folder
    cache_dir: str = ""  # decoded-episode cache (default: <run_dir>/cache)
    tokenizers: TokenizerConfig = field(default_factory=TokenizerConfig)
    # real-time chunking, training-time variant (model/rtc.py): {max_delay_steps, probability}; off
    rtc: RtcConfig = field(default_factory=RtcConfig)
    # image augmentation of robot examples (data/augment.py: random crop, rotation, colour); off
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # (noise, flow time) draws per robot example and step, sharing one backbone pass
    # (KIVLA.compute_loss): more expert signal per step for ≈9 % more step time per extra draw (`small`, batch 8)
    flow_samples: int = 1
    progress: bool = True  # tqdm bar (rank 0)
    save_rank_params: bool = False  # debug: every rank writes its final parameters (DDP consistency test)

    def validate(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe: unknown recipe {self.recipe!r}; choose from {sorted(RECIPES)}")
        if not self.datasets:
            raise ValueError("datasets: at least one dataset is needed")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets: names must be unique, got {names}")
        if not any(d.type != "vlm" for d in self.datasets):
            raise ValueError("datasets: at least one robot dataset (rosbag or lerobot) is needed")
        if self.export_dataset and self.export_dataset not in names:
            raise ValueError(f"export_dataset: {self.export_dataset!r} is not one of {names}")
        for key in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints",
                    "flow_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        self.tokenizers.validate()
        init_stats = bool(self.model.init) and (Path(self.model.init) / "norm_stats.json").is_file()
        for i, d in enumerate(self.datasets):
            if d.norm_stats == "init" and not init_stats:
                raise ValueError(f"datasets[{i}].norm_stats: 'init' reads model.init's norm_stats.json; model.init "
                                 f"({self.model.init!r}) is not a model folder with one")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: expected 0 <= x < 1, got {self.ema_decay}")
