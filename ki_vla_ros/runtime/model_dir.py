"""The model folder: the on-disk format every part of the project reads and writes.

    <model_dir>/
      model.yaml              manifest: format version, ModelConfig, layout (cameras, state and action
                              names, the action dims predicted relative to the state), recipe, flow steps, and
                              `rtc` (action-prefix conditioning the weights were trained with)
      weights.safetensors     all parameters (never pickles)
      text_tokenizer.json     the text tokenizer (`tokenizers` JSON), or text_tokenizer.model
                              (a published SentencePiece model, e.g. an imported π0.5's Gemma one)
      action_tokenizer.json   the FAST (or naive) action tokenizer
      norm_stats.json         1st/99th percentiles of state and actions, in robot units
      onnx/                   after `ki-vla export`: prefix / flow-loop / expert-step ONNX files,
        export.json           the fixed shapes they were made for and the weights' hash
        engines/<gpu>-trt<version>-<precision>/   TensorRT engines built from them (cached)
      README.md, metrics.json optional: how the model was made and how it scored

`save_model_dir` writes into a temporary sibling folder and renames it into place, so a reader
never sees a half-written model. `load_model_dir` checks everything and raises
`ModelDirError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ki_vla_ros.configio import ConfigError, dump_config, load_config
from ki_vla_ros.delta_actions import DeltaActions
from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.rtc import RtcConfig
from ki_vla_ros.normalize import NormStats
from ki_vla_ros.tokenize.naive import load_action_tokenizer
from ki_vla_ros.tokenize.prompt import PromptBuilder
from ki_vla_ros.tokenize.text import TextTokenizer

FORMAT = "ki_vla_ros.model"
FORMAT_VERSION = 1
MANIFEST, WEIGHTS, TEXT_TOKENIZER, ACTION_TOKENIZER, NORM_STATS = (
    "model.yaml", "weights.safetensors", "text_tokenizer.json", "action_tokenizer.json", "norm_stats.json")
TEXT_TOKENIZER_SP = "text_tokenizer.model"


def text_tokenizer_path(path: Path) -> Path:
    """The folder's text tokenizer file: text_tokenizer.json, else text_tokenizer.model."""
    return path / TEXT_TOKENIZER if not (path / TEXT_TOKENIZER_SP).is_file() else path / TEXT_TOKENIZER_SP


class ModelDirError(ValueError):
    """A model folder that is incomplete, from another format version, or inconsistent."""


@dataclass
class Layout:
    """What the model's state and action vectors mean, and which cameras it was trained with.
    The first len(state_names) / len(action_names) dims are real; the rest is padding."""

    camera_names: list[str]
    state_names: list[str]
    action_names: list[str]
    control_rate_hz: float = 50.0
    # action names predicted as offsets from the state of the same name (delta_actions.py); [] = absolute
    delta_actions: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for key in ("camera_names", "state_names", "action_names"):
            names = getattr(self, key)
            if not names:
                raise ValueError(f"{key}: must not be empty")
            if len(set(names)) != len(names):
                raise ValueError(f"{key}: names must be unique, got {names}")
        if self.control_rate_hz <= 0:
            raise ValueError(f"control_rate_hz: must be positive, got {self.control_rate_hz}")
        self.delta()

    def delta(self) -> DeltaActions:
        return DeltaActions.from_names(self.delta_actions, self.action_names, self.state_names)


@dataclass
class Manifest:
    format: str
    format_version: int
    model: ModelConfig
    layout: Layout
    recipe: str = "ki"
    num_flow_steps: int = 10
    notes: dict[str, str] = field(default_factory=dict)
    # trained with action prefixes (real-time chunking, model/rtc.py)? Off: the runtime ignores prefixes
    rtc: RtcConfig = field(default_factory=RtcConfig)

    def validate(self) -> None:
        if self.format != FORMAT:
            raise ValueError(f"format: expected {FORMAT!r}, got {self.format!r}")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version: this ki_vla_ros reads version {FORMAT_VERSION}, "
                             f"the folder has {self.format_version}")
        if len(self.layout.state_names) > self.model.state_dim:
            raise ValueError(f"layout: {len(self.layout.state_names)} state names exceed model.state_dim "
                             f"{self.model.state_dim}")
        if len(self.layout.action_names) > self.model.action_dim:
            raise ValueError(f"layout: {len(self.layout.action_names)} action names exceed model.action_dim "
                             f"{self.model.action_dim}")
        if self.num_flow_steps < 1:
            raise ValueError(f"num_flow_steps: must be >= 1, got {self.num_flow_steps}")
        self.rtc.check_horizon(self.model.action_horizon)


@dataclass
class ModelBundle:
    """Everything in a model folder, loaded and checked."""

    path: Path
    manifest: Manifest
    model: KIVLA
    text_tokenizer: TextTokenizer
    action_tokenizer: object  # FastTokenizer | NaiveTokenizer
    norm_stats: NormStats
    weights_sha256: str

    @property
    def config(self) -> ModelConfig:
        return self.manifest.model

    @property
    def layout(self) -> Layout:
        return self.manifest.layout


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model_dir(path: str | Path, model: KIVLA, layout: Layout, text_tokenizer: TextTokenizer,
                   action_tokenizer, norm_stats: NormStats, recipe: str = "ki", num_flow_steps: int = 10,
                   notes: dict[str, str] | None = None, extra_files: dict[str, str] | None = None,
                   rtc: RtcConfig | None = None) -> Path:
    """Write a complete model folder atomically (temporary sibling, then rename over `path`)."""
    path = Path(path)
    if norm_stats.state.dim != len(layout.state_names) or norm_stats.actions.dim != len(layout.action_names):
        raise ValueError(f"norm stats have {norm_stats.state.dim} state / {norm_stats.actions.dim} action dims, "
                         f"the layout {len(layout.state_names)} / {len(layout.action_names)}")
    manifest = Manifest(FORMAT, FORMAT_VERSION, model.config, layout, recipe, num_flow_steps, dict(notes or {}),
                        rtc or RtcConfig())
    manifest.validate()
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dump_config(manifest, tmp / MANIFEST)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    text_tokenizer.save(tmp / f"text_tokenizer{text_tokenizer.file_suffix}")
    action_tokenizer.save(tmp / ACTION_TOKENIZER)
    norm_stats.save(tmp / NORM_STATS)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"{path}: model folder not found")
    file = path / MANIFEST
    if not file.is_file():
        raise ModelDirError(f"{file}: missing (not a ki_vla_ros model folder?)")
    try:
        return load_config(Manifest, file)
    except ConfigError as exc:
        raise ModelDirError(str(exc)) from None


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    path = Path(path)
    manifest = load_manifest(path)
    text_file = text_tokenizer_path(path)
    for file in (path / WEIGHTS, text_file, path / ACTION_TOKENIZER, path / NORM_STATS):
        if not file.is_file():
            raise ModelDirError(f"{file}: missing from the model folder")

    with torch.device("meta"):
        model = KIVLA(manifest.model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        tensors = load_file(str(path / WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelDirError(f"{path / WEIGHTS}: cannot read weights ({exc})") from None
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelDirError(f"{path / WEIGHTS}: tensors do not match model.yaml's config: "
                            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ModelDirError(f"{path / WEIGHTS}: tensor '{key}' has shape {tuple(tensors[key].shape)}, "
                                f"the config needs {shape}")
        if tensors[key].is_floating_point() and not torch.isfinite(tensors[key]).all():
            raise ModelDirError(f"{path / WEIGHTS}: tensor '{key}' contains NaN or inf")
    model.load_state_dict(tensors, assign=True)
    model = model.to(device).eval()

    try:
        text_tokenizer = TextTokenizer.load(text_file)
        action_tokenizer = load_action_tokenizer(path / ACTION_TOKENIZER)
        norm_stats = NormStats.load(path / NORM_STATS)
    except (ValueError, OSError, KeyError, ImportError, RuntimeError) as exc:
        raise ModelDirError(f"{path}: {exc}") from None
    layout = manifest.layout
    if norm_stats.state.dim != len(layout.state_names):
        raise ModelDirError(f"{path / NORM_STATS}: state statistics have {norm_stats.state.dim} dims, "
                            f"layout.state_names {len(layout.state_names)}")
    if norm_stats.actions.dim != len(layout.action_names):
        raise ModelDirError(f"{path / NORM_STATS}: action statistics have {norm_stats.actions.dim} dims, "
                            f"layout.action_names {len(layout.action_names)}")
    try:
        PromptBuilder(text_tokenizer, manifest.model)  # its prompts' ids fit the model's text range
    except ValueError as exc:
        raise ModelDirError(f"{text_file}: {exc}") from None
    return ModelBundle(path, manifest, model, text_tokenizer, action_tokenizer, norm_stats,
                       file_sha256(path / WEIGHTS))
