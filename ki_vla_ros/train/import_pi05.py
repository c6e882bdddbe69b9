"""Import published π0.5 weights (openpi PyTorch / LeRobot safetensors layout) into `KIVLA`.

Source keys (an optional leading ``model.`` is dropped; both the transformers >= 4.52 layout
``paligemma.model.language_model.*`` and the older ``paligemma.language_model.model.*`` are read)::

    paligemma_with_expert.paligemma.model.vision_tower.vision_model.
        embeddings.patch_embedding.{weight,bias}      -> vision.patch_embed
        embeddings.position_embedding.weight          -> vision.pos_embed
        encoder.layers.i.self_attn.{q,k,v}_proj.*     -> vision.blocks.i.qkv (concatenated q, k, v)
        encoder.layers.i.self_attn.out_proj.*         -> vision.blocks.i.out
        encoder.layers.i.layer_norm{1,2}.*            -> vision.blocks.i.norm{1,2}
        encoder.layers.i.mlp.fc{1,2}.*                -> vision.blocks.i.fc{1,2}
        post_layernorm.*                              -> vision.norm
    paligemma_with_expert.paligemma.model.multi_modal_projector.linear.*  -> image_proj
    paligemma_with_expert.paligemma.model.language_model.
        embed_tokens.weight                           -> embed_tokens (and lm_head if the file has none)
        layers.i.self_attn.{q,k,v,o}_proj.weight      -> transformer.backbone.i.{q,k,v,o}_proj
        layers.i.input_layernorm.weight               -> transformer.backbone.i.attn_norm
        layers.i.post_attention_layernorm.weight      -> transformer.backbone.i.mlp_norm
        layers.i.mlp.{gate,up,down}_proj.weight       -> transformer.backbone.i.mlp.*
        norm.weight                                   -> transformer.backbone_norm
    paligemma_with_expert.paligemma.lm_head.weight    -> lm_head
    paligemma_with_expert.gemma_expert.model.
        layers.i.self_attn.*, mlp.*                   -> transformer.expert.i.*
        layers.i.input_layernorm.dense.*              -> transformer.expert.i.attn_norm.modulation
        layers.i.post_attention_layernorm.dense.*     -> transformer.expert.i.mlp_norm.modulation
        norm.dense.*                                  -> transformer.expert_norm.modulation
    action_in_proj, action_out_proj, time_mlp_in, time_mlp_out  -> same names

Ignored (unused by π0.5): ``gemma_expert.lm_head.weight``, ``gemma_expert.model.embed_tokens.weight``.
Every other key in the file is an error naming it, as is every model parameter no key fills, and
every shape mismatch. Conventions (RMSNorm 1 + weight, adaRMS scale/shift/gate order, time
direction) are the same on both sides (docs: /work/shared/notes/pi05-conventions.md), so values
are copied unchanged (cast to float32).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

PG = "paligemma_with_expert.paligemma."
EX = "paligemma_with_expert.gemma_expert."
IGNORED = (EX + "lm_head.weight", EX + "model.embed_tokens.weight")
_VIS = {"layer_norm1": "norm1", "layer_norm2": "norm2", "mlp.fc1": "fc1", "mlp.fc2": "fc2",
        "self_attn.out_proj": "out"}
_LM = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
       "self_attn.o_proj": "o_proj", "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
       "mlp.down_proj": "mlp.down_proj"}


class Pi05ImportError(ValueError):
    """A checkpoint that does not fit the model (unknown keys, missing parameters, wrong shapes)."""


def _canonical(key: str) -> str:
    if key.startswith("model."):
        key = key[len("model."):]
    key = key.replace(PG + "language_model.model.", PG + "model.language_model.")
    key = key.replace(PG + "language_model.lm_head.", PG + "lm_head.")
    for part in ("vision_tower.", "multi_modal_projector."):
        key = key.replace(PG + part, PG + "model." + part)
    return key


def map_key(key: str) -> tuple[str, str | None] | None:
    """Canonical source key -> (our parameter name, qkv part or None); None if not a π0.5 key we know."""
    vis = PG + "model.vision_tower.vision_model."
    if key.startswith(vis):
        k = key[len(vis):]
        if k.startswith("embeddings.patch_embedding."):
            return "vision.patch_embed." + k.rsplit(".", 1)[1], None
        if k == "embeddings.position_embedding.weight":
            return "vision.pos_embed", None
        if k.startswith("post_layernorm."):
            return "vision.norm." + k.rsplit(".", 1)[1], None
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k)
        if m:
            i, mod, kind = m.groups()
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                return f"vision.blocks.{i}.qkv.{kind}", mod[len("self_attn.")]
            if mod in _VIS:
                return f"vision.blocks.{i}.{_VIS[mod]}.{kind}", None
        return None
    if key.startswith(PG + "model.multi_modal_projector.linear."):
        return "image_proj." + key.rsplit(".", 1)[1], None
    if key == PG + "lm_head.weight":
        return "lm_head.weight", None
    lm = PG + "model.language_model."
    if key.startswith(lm):
        k = key[len(lm):]
        if k == "embed_tokens.weight":
            return "embed_tokens.weight", None
        if k == "norm.weight":
            return "transformer.backbone_norm.weight", None
        m = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", k)
        if m:
            i, mod = m.groups()
            if mod == "input_layernorm":
                return f"transformer.backbone.{i}.attn_norm.weight", None
            if mod == "post_attention_layernorm":
                return f"transformer.backbone.{i}.mlp_norm.weight", None
            if mod in _LM:
                return f"transformer.backbone.{i}.{_LM[mod]}.weight", None
        return None
    ex = EX + "model."
    if key.startswith(ex):
        k = key[len(ex):]
        m = re.fullmatch(r"norm\.dense\.(weight|bias)", k)
        if m:
            return f"transformer.expert_norm.modulation.{m.group(1)}", None
        m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", k)
        if m:
            i, mod, kind = m.groups()
            if mod == "input_layernorm.dense":
                return f"transformer.expert.{i}.attn_norm.modulation.{kind}", None
            if mod == "post_attention_layernorm.dense":
                return f"transformer.expert.{i}.mlp_norm.modulation.{kind}", None
            if mod in _LM and kind == "weight":
                return f"transformer.expert.{i}.{_LM[mod]}.weight", None
        return None
    m = re.fullmatch(r"(action_in_proj|action_out_proj|time_mlp_in|time_mlp_out)\.(weight|bias)", key)
    if m:
        return key, None
    return None


def convert_pi05_state_dict(source: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Source tensors (openpi / LeRobot names) -> a complete state_dict for `model` (float32).
    Raises Pi05ImportError naming unknown keys, unfilled parameters and shape mismatches."""
    expected = {k: v for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for raw_key, tensor in source.items():
        key = _canonical(raw_key)
        if key in IGNORED:
            continue
        target = map_key(key)
        if target is None:
            unknown.append(raw_key)
            continue
        name, part = target
        if part is not None:
            qkv.setdefault(name, {})[part] = tensor
        else:
            out[name] = tensor
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise Pi05ImportError(f"{name}: the checkpoint lacks the {missing} projection(s) of this attention")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if "lm_head.weight" not in out and "embed_tokens.weight" in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]  # Gemma ties them
    if unknown:
        raise Pi05ImportError(f"{len(unknown)} checkpoint key(s) unknown to the π0.5 mapping: {sorted(unknown)[:20]}")
    missing = sorted(set(expected) - set(out))
    if missing:
        raise Pi05ImportError(f"{len(missing)} model parameter(s) not in the checkpoint: {missing[:20]}")
    extra = sorted(set(out) - set(expected))
    if extra:
        raise Pi05ImportError(f"checkpoint keys map to parameters this model config lacks: {extra[:20]} "
                              f"(e.g. state_mode 'continuous' vs π0.5's text state)")
    for k, v in out.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise Pi05ImportError(f"{k}: checkpoint shape {tuple(v.shape)}, the model config needs "
                                  f"{tuple(expected[k].shape)}")
    return {k: v.to(torch.float32).contiguous() for k, v in out.items()}


def weight_files(path: str | Path) -> list[Path]:
    """A safetensors file, or a checkpoint folder's weight files: model*.safetensors (one file or
    shards), else every .safetensors except LeRobot's processor statistics (policy_*processor*)."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("model*.safetensors")) or sorted(
        f for f in path.glob("*.safetensors") if not f.name.startswith(("policy_preprocessor", "policy_postprocessor")))
    if not files:
        raise FileNotFoundError(f"{path}: no model .safetensors file")
    return files


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of `weight_files(path)` (source names); an unreadable file is a Pi05ImportError."""
    source: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        try:
            source.update(load_file(str(f)))
        except (SafetensorError, OSError) as exc:
            raise Pi05ImportError(f"{f}: cannot read safetensors ({exc})") from None
    return source


def load_pi05_into(model: torch.nn.Module, path: str | Path) -> None:
    """Load a π0.5 safetensors file or checkpoint folder (`weight_files`) into `model`."""
    model.load_state_dict(convert_pi05_state_dict(read_weights(path), model))
