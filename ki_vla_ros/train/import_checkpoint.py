"""`ki-vla import`: a π0.5 checkpoint folder -> a runtime model folder (`runtime/model_dir.py`).

    ki-vla import PATH --out DIR [--embodiment NAME] [--tokenizer FILE]

Two layouts are read (the weights' key table is `train/import_pi05.py`):

* LeRobot (a `lerobot-train` checkpoint's ``pretrained_model/`` or `save_pretrained`):
  ``config.json`` (``type: pi05``; ``chunk_size``, ``max_state_dim``, ``image_resolution``,
  ``num_inference_steps``, ``min_period`` / ``max_period``, ``tokenizer_max_length``,
  ``input_features`` / ``output_features``, ``normalization_mapping``, the Gemma variants),
  ``model.safetensors``, ``policy_preprocessor.json`` and ``policy_postprocessor.json`` with the
  ``state_file`` of their ``normalizer_processor`` / ``unnormalizer_processor`` steps (flat
  safetensors: ``observation.state.q01``, ``action.q99``, …).
* openpi PyTorch (``examples/convert_jax_model_to_pytorch.py``): ``config.json``
  (``action_dim``, ``action_horizon``, the Gemma variants), ``model.safetensors``,
  ``assets/<asset id>/norm_stats.json`` (``{"norm_stats": {"state": {"q01", "q99"}, "actions": …}}``).
  openpi divides by q99 − q01 + 1e-6 where the runtime uses LeRobot's rule (q99 − q01, 1e-8 only
  where they are equal): a relative difference of 1e-6 / range.

`ModelConfig`: every width, depth and MLP size, the patch size, image size, vocabulary and action
width come from the tensor shapes (a fine-tuned or distilled checkpoint need not match its
variant); what shapes cannot tell — attention head counts and head width — comes from the Gemma
variant named in config.json (gemma_2b / gemma_300m: 8 heads, 1 KV head, width 256; SigLIP
So400m: 16 heads) unless given (`--num-heads`, `--num-kv-heads`, `--head-dim`, `--vision-heads`),
and is checked against the shapes. The horizon, the prompt length (200) and the flow steps come
from config.json. Normalisation statistics must be quantiles (q01/q99), the π0.5 default.

Layout: camera slots in the checkpoint's order (LeRobot: its VISUAL input features without
``observation.images.``, then its ``empty_cameras``; openpi: base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb). With
`--embodiment`, the robot's cameras take the slots in order (a slot left over is a missing camera
at run time, as in LeRobot), its joint names and control rate are used, and its state/action sizes
must match the statistics. The text tokenizer is `--tokenizer` (a tokenizers ``tokenizer.json`` or
a SentencePiece ``tokenizer.model``, e.g. PaliGemma's) or one found in the checkpoint folder. π0.5
flow checkpoints have no discrete action tokenizer; the folder gets naive 256-bin action tokens
(unused at run time, there so the folder is complete). Every problem is an `ImportCheckpointError`
naming the file and what is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.recipes import get_recipe
from ki_vla_ros.normalize import NormStats, QuantileStats
from ki_vla_ros.runtime.model_dir import Layout, save_model_dir
from ki_vla_ros.tokenize.naive import NaiveTokenizer
from ki_vla_ros.tokenize.prompt import PromptBuilder
from ki_vla_ros.tokenize.text import TextTokenizer
from ki_vla_ros.train.import_pi05 import EX, PG, Pi05ImportError, _canonical, convert_pi05_state_dict, read_weights

IMAGE_PREFIX = "observation.images."
OPENPI_CAMERAS = ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"]
# what tensor shapes cannot tell: (heads, kv heads, head width) of the Gemma variants, SigLIP heads
GEMMA_HEADS = {"gemma_2b": (8, 1, 256), "gemma_300m": (8, 1, 256)}
SIGLIP_HEADS = {1152: 16}
PROMPT_TOKENS = 200  # openpi / LeRobot π0.5 tokenizer_max_length


class ImportCheckpointError(ValueError):
    """A checkpoint folder that cannot become a model folder; the message names file and problem."""


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ImportCheckpointError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ImportCheckpointError(f"{path}: expected a JSON object")
    return data


def checkpoint_kind(path: Path) -> str:
    """'lerobot' or 'openpi' from the folder's config.json."""
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise ImportCheckpointError(f"{path}: not a folder (expected a π0.5 checkpoint folder with config.json)")
    if not cfg_file.is_file():
        raise ImportCheckpointError(f"{cfg_file}: missing (a LeRobot or openpi π0.5 checkpoint has one)")
    cfg = _json(cfg_file)
    if "type" in cfg:
        if cfg["type"] != "pi05":
            raise ImportCheckpointError(f"{cfg_file}: policy type {cfg['type']!r}; only π0.5 ('pi05') is imported")
        return "lerobot"
    if "action_horizon" in cfg:
        return "openpi"
    raise ImportCheckpointError(f"{cfg_file}: neither LeRobot's ('type': 'pi05') nor openpi's ('action_horizon') "
                                f"config")


# ---- statistics -------------------------------------------------------------------------------
def _processor_stats(path: Path, pipeline: str, step_name: str) -> dict[str, np.ndarray]:
    """The flat statistics of `step_name` in `<pipeline>.json` (its safetensors state file)."""
    files = sorted(path.glob(f"{pipeline}*.json"))
    if not files:
        raise ImportCheckpointError(f"{path}: no {pipeline}.json (LeRobot writes it next to model.safetensors)")
    spec = _json(files[0])
    steps = [s for s in spec.get("steps", []) if isinstance(s, dict) and s.get("registry_name") == step_name]
    if not steps or not steps[0].get("state_file"):
        raise ImportCheckpointError(f"{files[0]}: no '{step_name}' step with a state_file")
    state = path / steps[0]["state_file"]
    try:
        return {k: v.double().numpy() for k, v in load_file(str(state)).items()}
    except (SafetensorError, OSError) as exc:
        raise ImportCheckpointError(f"{state}: cannot read the normaliser statistics ({exc})") from None


def _quantiles(stats: dict, key: str, where: str) -> QuantileStats:
    try:
        q = {"q01": stats[f"{key}.q01"], "q99": stats[f"{key}.q99"]} if f"{key}.q01" in stats else stats[key]
        return QuantileStats.from_dict({"q01": np.ravel(q["q01"]), "q99": np.ravel(q["q99"])}, f"{where}: {key}")
    except (KeyError, TypeError):
        raise ImportCheckpointError(f"{where}: no q01/q99 statistics for '{key}' (have {sorted(stats)[:8]})") from None
    except ValueError as exc:
        raise ImportCheckpointError(str(exc)) from None


def lerobot_norm_stats(path: Path, cfg: dict) -> NormStats:
    mapping = cfg.get("normalization_mapping", {})
    for kind in ("STATE", "ACTION"):
        mode = mapping.get(kind, "QUANTILES")
        if mode != "QUANTILES":
            raise ImportCheckpointError(f"{path / 'config.json'}: normalization_mapping.{kind} is {mode}; the runtime "
                                        f"normalises with quantiles (q01/q99), π0.5's default")
    pre = _processor_stats(path, "policy_preprocessor", "normalizer_processor")
    post = _processor_stats(path, "policy_postprocessor", "unnormalizer_processor")
    return NormStats(_quantiles(pre, "observation.state", f"{path}/policy_preprocessor"),
                     _quantiles(post, "action", f"{path}/policy_postprocessor"))


def openpi_norm_stats(path: Path) -> NormStats:
    files = sorted(path.glob("assets/*/norm_stats.json"))
    if len(files) != 1:
        raise ImportCheckpointError(f"{path}/assets: expected one <asset id>/norm_stats.json, found "
                                    f"{[str(f.relative_to(path)) for f in files]}")
    data = _json(files[0]).get("norm_stats")
    if not isinstance(data, dict):
        raise ImportCheckpointError(f"{files[0]}: no 'norm_stats' object")
    return NormStats(_quantiles(data, "state", str(files[0])), _quantiles(data, "actions", str(files[0])))


# ---- model config -----------------------------------------------------------------------------
def _shape(tensors: dict, key: str, where: Path) -> tuple[int, ...]:
    if key not in tensors:
        raise ImportCheckpointError(f"{where}: no tensor {key!r}; not a π0.5 checkpoint?")
    return tuple(tensors[key].shape)


def model_config(tensors: dict[str, torch.Tensor], cfg: dict, kind: str, where: Path,
                 num_heads: int | None = None, num_kv_heads: int | None = None, head_dim: int | None = None,
                 vision_heads: int | None = None) -> ModelConfig:
    """ModelConfig from canonical-key tensor shapes + config.json (see the module doc)."""
    vis, lm, ex = PG + "model.vision_tower.vision_model.", PG + "model.language_model.", EX + "model."
    vw, _, patch, _ = _shape(tensors, vis + "embeddings.patch_embedding.weight", where)
    num_patches = _shape(tensors, vis + "embeddings.position_embedding.weight", where)[0]
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ImportCheckpointError(f"{where}: {num_patches} position embeddings are not a square grid")
    image_size = side * patch
    res = cfg.get("image_resolution")
    if res and tuple(res) != (image_size, image_size):
        raise ImportCheckpointError(f"{where / 'config.json'}: image_resolution {res}, the weights are for "
                                    f"{image_size}x{image_size}")

    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in tensors if k.startswith(prefix)})

    vocab, width = _shape(tensors, lm + "embed_tokens.weight", where)
    q_rows = _shape(tensors, lm + "layers.0.self_attn.q_proj.weight", where)[0]
    kv_rows = _shape(tensors, lm + "layers.0.self_attn.k_proj.weight", where)[0]
    variant = cfg.get("paligemma_variant", "gemma_2b")
    h, kv, hd = GEMMA_HEADS.get(variant, (None, None, None))
    h, kv, hd = num_heads or h, num_kv_heads or kv, head_dim or hd
    if h is None or kv is None or hd is None or q_rows != h * hd or kv_rows != kv * hd:
        raise ImportCheckpointError(
            f"{where}: query/key projections of {q_rows}/{kv_rows} rows do not fit {h} heads, {kv} KV heads of "
            f"width {hd} (variant {variant!r}); give --num-heads, --num-kv-heads and --head-dim")
    eq_rows = _shape(tensors, ex + "layers.0.self_attn.q_proj.weight", where)[0]
    if eq_rows != q_rows:
        raise ImportCheckpointError(f"{where}: the action expert's query projection has {eq_rows} rows, the "
                                    f"backbone's {q_rows}; the two must share heads")
    vh = vision_heads or SIGLIP_HEADS.get(vw)
    if vh is None or vw % vh:
        raise ImportCheckpointError(f"{where}: vision width {vw} needs --vision-heads (a divisor of {vw})")
    expert_width = _shape(tensors, ex + "layers.0.self_attn.q_proj.weight", where)[1]
    action_dim = _shape(tensors, "action_in_proj.weight", where)[1]
    if kind == "lerobot":
        horizon, state_dim = int(cfg.get("chunk_size", 50)), int(cfg.get("max_state_dim", 32))
        prompt = int(cfg.get("tokenizer_max_length", PROMPT_TOKENS))
    else:
        horizon, state_dim, prompt = int(cfg["action_horizon"]), action_dim, PROMPT_TOKENS
    base = ModelConfig.preset("pi05")
    try:
        return get_recipe("pi0").apply(base.replace(
            image_size=image_size, patch_size=patch, vision_width=vw, vision_depth=count(vis + "encoder.layers."),
            vision_mlp_dim=_shape(tensors, vis + "encoder.layers.0.mlp.fc1.weight", where)[0], vision_heads=vh,
            width=width, depth=count(lm + "layers."), mlp_dim=_shape(tensors, lm + "layers.0.mlp.gate_proj.weight",
                                                                     where)[0],
            num_heads=h, num_kv_heads=kv, head_dim=hd, vocab_size=vocab,
            num_fast_tokens=min(base.num_fast_tokens, vocab // 4), expert_width=expert_width,
            expert_mlp_dim=_shape(tensors, ex + "layers.0.mlp.gate_proj.weight", where)[0],
            action_horizon=horizon, action_dim=action_dim, state_dim=state_dim, state_mode="text",
            max_prefix_tokens=prompt, time_min_period=float(cfg.get("min_period", base.time_min_period)),
            time_max_period=float(cfg.get("max_period", base.time_max_period))))
    except ValueError as exc:
        raise ImportCheckpointError(f"{where}: the shapes give an invalid model config: {exc}") from None


# ---- layout and tokenizer ---------------------------------------------------------------------
def _layout(kind: str, cfg: dict, norm: NormStats, embodiment: str | None, where: Path) -> tuple[Layout, str]:
    if kind == "lerobot":
        feats = cfg.get("input_features", {})
        slots = [k.removeprefix(IMAGE_PREFIX) for k, f in feats.items() if f.get("type") == "VISUAL"]
        # LeRobot adds `empty_cameras` slots when it loads the config (always missing images)
        slots += [f"empty_camera_{i}" for i in range(int(cfg.get("empty_cameras", 0)))
                  if f"empty_camera_{i}" not in slots]
        if not slots:
            raise ImportCheckpointError(f"{where / 'config.json'}: no VISUAL input features (cameras)")
    else:
        slots = list(OPENPI_CAMERAS)
    ns, na = norm.state.dim, norm.actions.dim
    if not embodiment:
        return Layout(slots, [f"state_{i}" for i in range(ns)], [f"action_{i}" for i in range(na)], 50.0), \
            "no embodiment: generic joint names, 50 Hz; cameras " + ", ".join(slots)
    from ki_vla_ros.embodiment import load_embodiment

    emb = load_embodiment(embodiment)
    if len(emb.camera_names) > len(slots):
        raise ImportCheckpointError(f"{where}: embodiment {emb.name!r} has {len(emb.camera_names)} cameras, the "
                                    f"checkpoint {len(slots)} camera slots ({slots})")
    if len(emb.state_names) != ns or len(emb.action_names) != na:
        raise ImportCheckpointError(f"{where}: embodiment {emb.name!r} has {len(emb.state_names)} state / "
                                    f"{len(emb.action_names)} action dims, the checkpoint's statistics {ns} / {na}")
    cams = emb.camera_names + slots[len(emb.camera_names):]
    mapping = ", ".join(f"{s} <- {c}" if c != s else f"{s} (none on the robot)" for s, c in zip(slots, cams))
    return Layout(cams, emb.state_names, emb.action_names, emb.control_rate_hz), f"camera slots: {mapping}"


def _tokenizer(path: Path, tokenizer: str | None) -> TextTokenizer:
    candidates = [Path(tokenizer)] if tokenizer else [path / "tokenizer.json", path / "tokenizer.model"]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise ImportCheckpointError(f"{candidates[0]}: no such file" if tokenizer else
                                    f"{path}: no tokenizer.json / tokenizer.model; π0.5 checkpoints do not hold "
                                    f"their tokenizer: give --tokenizer (PaliGemma's tokenizer.model or .json)")
    try:
        return TextTokenizer.load(found[0])
    except Exception as exc:  # noqa: BLE001 - any loader failure, re-raised naming the file
        raise ImportCheckpointError(f"{found[0]}: cannot load as a tokenizer.json or SentencePiece .model "
                                    f"({exc})") from None


# ---- the import -------------------------------------------------------------------------------
def import_checkpoint(path: str | Path, out: str | Path, embodiment: str | None = None,
                      tokenizer: str | None = None, num_heads: int | None = None, num_kv_heads: int | None = None,
                      head_dim: int | None = None, vision_heads: int | None = None, log=print) -> Path:
    path = Path(path)
    kind = checkpoint_kind(path)
    cfg = _json(path / "config.json")
    try:
        source = read_weights(path)
    except (Pi05ImportError, FileNotFoundError) as exc:
        raise ImportCheckpointError(str(exc)) from None
    tensors = {_canonical(k): v for k, v in source.items()}
    config = model_config(tensors, cfg, kind, path, num_heads, num_kv_heads, head_dim, vision_heads)
    norm = lerobot_norm_stats(path, cfg) if kind == "lerobot" else openpi_norm_stats(path)
    if norm.state.dim > config.state_dim or norm.actions.dim > config.action_dim:
        raise ImportCheckpointError(f"{path}: statistics for {norm.state.dim} state / {norm.actions.dim} action "
                                    f"dims exceed the model's {config.state_dim} / {config.action_dim}")
    layout, how = _layout(kind, cfg, norm, embodiment, path)
    text_tok = _tokenizer(path, tokenizer)
    try:
        PromptBuilder(text_tok, config)
    except ValueError as exc:
        raise ImportCheckpointError(f"{tokenizer or path}: {exc}") from None
    with torch.device("meta"):
        model = KIVLA(config)
    try:
        model.load_state_dict(convert_pi05_state_dict(source, model), assign=True)
    except Pi05ImportError as exc:
        raise ImportCheckpointError(f"{path}: {exc}") from None
    del source, tensors
    steps = int(cfg.get("num_inference_steps", 10))
    notes = {"source": str(path.resolve()), "format": kind, "layout": how,
             "action_tokenizer": "naive 256 bins (π0.5 flow checkpoints have none; unused at run time)"}
    readme = (f"# {Path(out).name}\n\nImported with `ki-vla import` from the {kind} π0.5 checkpoint "
              f"`{path.resolve()}` ({how}).\n")
    out = save_model_dir(out, model.eval(), layout, text_tok, NaiveTokenizer(256), norm, recipe="pi05",
                         num_flow_steps=steps, notes=notes, extra_files={"README.md": readme})
    log(f"[import] {kind} checkpoint {path} -> {out}: {layout.camera_names}, {len(layout.state_names)} state / "
        f"{len(layout.action_names)} action dims, horizon {config.action_horizon}, {steps} flow steps; {how}")
    return out


def import_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ki-vla import", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="π0.5 checkpoint folder (LeRobot or openpi PyTorch layout)")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--embodiment", default=None, help="embodiment name or YAML: joint names, cameras, rate")
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json or SentencePiece tokenizer.model")
    for flag in ("--num-heads", "--num-kv-heads", "--head-dim", "--vision-heads"):
        parser.add_argument(flag, type=int, default=None, help="when the Gemma/SigLIP variant does not tell")
    args = parser.parse_args(argv)
    try:
        import_checkpoint(args.path, args.out, args.embodiment, args.tokenizer, args.num_heads, args.num_kv_heads,
                          args.head_dim, args.vision_heads)
    except (ImportCheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"ki-vla import: {exc}", file=sys.stderr)
        return 1
    return 0
