"""Presets: sizes, the pi05 dimensions on the meta device, YAML round trip."""

import dataclasses

import pytest
import torch

from ki_vla_ros.configio import ConfigError, from_dict, to_dict
from ki_vla_ros.model import KIVLA, ModelConfig


def count(named) -> int:
    return sum(p.numel() for _, p in named)


def test_pi05_builds_on_meta_with_paper_sizes():
    cfg = ModelConfig.preset("pi05")
    assert (cfg.width, cfg.depth, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == \
        (2048, 18, 16384, 8, 1, 256, 257152)
    assert (cfg.expert_width, cfg.expert_mlp_dim, cfg.action_horizon, cfg.image_size, cfg.patch_size) == \
        (1024, 4096, 50, 224, 14)
    with torch.device("meta"):
        model = KIVLA(cfg)
    assert all(p.is_meta for p in model.parameters())
    g = model.param_groups()
    expert = count(g["expert"])
    expert_no_ada = count((n, p) for n, p in g["expert"] if "modulation" not in n)
    layers = count((n, p) for n, p in g["expert"] if n.startswith("transformer.expert.") and "modulation" not in n)
    # Gemma-300M expert: 18 · (q 1024·2048 + k,v 2·1024·256 + o 2048·1024 + GeGLU 3·1024·4096 + 2 norms)
    assert layers == 18 * (2 * 1024 * 2048 + 2 * 1024 * 256 + 3 * 1024 * 4096 + 0)  # adaRMS norms hold no weight
    assert 290e6 < expert_no_ada < 330e6  # "about 300M"
    assert 400e6 < expert < 450e6  # + adaRMSNorm modulations (3·1024 per norm input dim)
    # SigLIP So400m/14 (~400M) and Gemma 2B (~2.5B with its 257k embedding; +0.53B untied lm_head)
    assert 395e6 < count(g["vision"]) < 430e6
    assert 2.95e9 < count(g["backbone"]) < 3.1e9


def test_tiny_is_under_two_million_and_small_builds():
    assert sum(p.numel() for p in KIVLA(ModelConfig.preset("tiny")).parameters()) < 2_000_000
    small = KIVLA(ModelConfig.preset("small"))
    assert 5e6 < sum(p.numel() for p in small.parameters()) < 30e6


def test_no_shared_parameter_tensors():
    model = KIVLA(ModelConfig.preset("tiny", state_mode="continuous"))
    ptrs = [p.data_ptr() for p in model.state_dict().values()]
    assert len(ptrs) == len(set(ptrs))


def test_replace_validates_and_yaml_round_trip():
    cfg = ModelConfig.preset("small").replace(action_horizon=10, state_mode="tokens")
    assert cfg.action_horizon == 10 and ModelConfig.preset("small").action_horizon == 50
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="patch_size"):
        cfg.replace(patch_size=15)
    with pytest.raises(ConfigError, match="state_mode"):
        from_dict(ModelConfig, {**to_dict(cfg), "state_mode": "image"})
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge")
    assert cfg.fast_token_base == cfg.vocab_size - cfg.num_fast_tokens
    assert dataclasses.is_dataclass(cfg)
