"""`ModelConfig`: every dimension of the knowledge-insulated VLA, with three presets.

Presets (`ModelConfig.preset(name)`):

* ``tiny``  — for tests: < 2M parameters, a training step in well under a second on one core.
* ``small`` — the bundled default model, sized so one full inference (prefix of 3 camera views
  + instruction, then 10 Euler steps of the action expert over H = 50 actions) runs in real time
  on a 2-core CPU. Why these numbers: the cost splits into (a) the prefix, paid once per
  inference — vision tower + backbone over ~3·64 image tokens + ~60 text tokens — and (b) the
  expert, paid 10 times over 50 action tokens. With 112 px images and 14 px patches a view is
  8×8 = 64 tokens (224 px / 14 px would be 256 per view: 4× more tokens and quadratic attention).
  14 px rather than 16 px patches (7×7 = 49 tokens) because the simulated ALOHA's cam_high shows
  a 4 cm cube as ≈12-13 px at 112 px: about one patch (docs/sim.md, "Camera framing"), for
  +31 % image tokens. A 4-layer, 192-wide ViT costs ≈0.13 GFLOP per view. The backbone (width
  256, depth 6, GeGLU mlp 1024, 4 heads × 64 with one shared KV head as in Gemma) costs ≈2·1.9
  MFLOP per token per layer → ≈3.2 GFLOP for ~250 prefix tokens. The expert keeps π0.5's proportions to the
  backbone — half the width, a quarter of the MLP (width 128, mlp 256), same heads so its queries
  read the backbone's keys — ≈0.36 MFLOP per token per layer plus attention over ~250 keys,
  ≈0.19 GFLOP per step, 1.9 GFLOP for 10 steps: the flow loop must stay cheaper than the prefix
  in FLOPs, or caching the prefix would buy little. ≈5.5 GFLOP in all (measured numbers:
  docs/model.md, docs/runtime.md, docs/sim.md).
* ``pi05``  — the paper's dimensions (appendix B; the issue's 8 query heads / 1 KV head of
  Gemma 2B): SigLIP So400m/14 at 224 px, Gemma 2B backbone, Gemma-300M action expert, H = 50,
  actions and state padded to 32 dims. Build it on the ``meta`` device to inspect it.

Vocabulary layout (the model's token ids, see `tokenize/prompt.py`)::

    [0, text_vocab_limit)            text tokenizer ids
    [state_token_base, +state_bins)  robot-state bins ("tokens" state mode)
    [fast_token_base, vocab_size)    action tokens (FAST or naive bins), reserved at the END
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

StateMode = Literal["text", "tokens", "continuous"]


@dataclass
class ModelConfig:
    # vision tower (SigLIP-style ViT, one pass per camera view)
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1152
    vision_depth: int = 27
    vision_mlp_dim: int = 4304
    vision_heads: int = 16
    # backbone (Gemma-style); the expert shares depth, heads, kv_heads and head_dim
    width: int = 2048
    depth: int = 18
    mlp_dim: int = 16384
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    vocab_size: int = 257152
    # action expert
    expert_width: int = 1024
    expert_mlp_dim: int = 4096
    # actions / state
    action_horizon: int = 50
    action_dim: int = 32  # padded width; real dims come first (action_dim_mask)
    state_dim: int = 32  # padded width
    state_mode: StateMode = "text"
    state_bins: int = 256  # bins for "text" / "tokens" state; reserved ids for "tokens"
    num_fast_tokens: int = 1024  # reserved action-token ids at the end of the vocabulary
    max_prefix_tokens: int = 64  # text prefix (BOS, task, state) — the prompt builder truncates
    max_target_tokens: int = 128  # text answer + FAST tokens after the prefix
    # training objective (recipes set these, see recipes.py)
    insulate: bool = True  # eq. 5-6: stop-gradient of backbone K/V seen by action queries
    use_fast: bool = True  # FAST-token cross-entropy counts in `loss`
    use_flow: bool = True  # run the expert and count the flow loss
    alpha: float = 1.0  # eq. 4 weight of the flow loss
    # what the expert's output head predicts (kivla.py, "Flow output"): "velocity" (π0 / π0.5: the
    # flow's velocity) or "sample" (the clean chunk; the flow step's velocity is (x_t − â) / t)
    flow_output: Literal["velocity", "sample"] = "velocity"
    # numerics
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    time_min_period: float = 4e-3
    time_max_period: float = 4.0

    # ---- derived --------------------------------------------------------------------------
    @property
    def fast_token_base(self) -> int:
        return self.vocab_size - self.num_fast_tokens

    @property
    def state_token_base(self) -> int:
        return self.fast_token_base - self.state_bins

    @property
    def text_vocab_limit(self) -> int:
        return self.state_token_base

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def replace(self, **kw) -> ModelConfig:
        out = dataclasses.replace(self, **kw)
        out.validate()
        return out

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size: {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads: {self.num_heads} not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.vision_width % self.vision_heads:
            raise ValueError(f"vision_width: {self.vision_width} not divisible by vision_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim: must be even (rotate-halves RoPE)")
        if self.state_mode not in ("text", "tokens", "continuous"):
            raise ValueError(f"state_mode: expected text|tokens|continuous, got {self.state_mode!r}")
        if self.flow_output not in ("velocity", "sample"):
            raise ValueError(f"flow_output: expected velocity|sample, got {self.flow_output!r}")
        if self.text_vocab_limit <= 3:
            raise ValueError(
                f"vocab_size: {self.vocab_size} leaves no room for text after {self.num_fast_tokens} "
                f"action and {self.state_bins} state ids"
            )

    @staticmethod
    def preset(name: str, **overrides) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        return PRESETS[name].replace(**overrides)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        image_size=32,
        patch_size=8,
        vision_width=32,
        vision_depth=1,
        vision_mlp_dim=64,
        vision_heads=2,
        width=64,
        depth=2,
        mlp_dim=128,
        num_heads=2,
        num_kv_heads=1,
        head_dim=32,
        vocab_size=1024,
        expert_width=32,
        expert_mlp_dim=64,
        action_horizon=10,
        action_dim=8,
        state_dim=8,
        num_fast_tokens=256,
        max_prefix_tokens=32,
        max_target_tokens=48,
    ),
    "small": ModelConfig(
        image_size=112,
        patch_size=14,
        vision_width=192,
        vision_depth=4,
        vision_mlp_dim=768,
        vision_heads=3,
        width=256,
        depth=6,
        mlp_dim=1024,
        num_heads=4,
        num_kv_heads=1,
        head_dim=64,
        vocab_size=4096,
        expert_width=128,
        expert_mlp_dim=256,
        action_horizon=50,
        action_dim=32,
        state_dim=32,
        num_fast_tokens=1024,
        max_prefix_tokens=48,
        max_target_tokens=96,
    ),
    "pi05": ModelConfig(),
}
