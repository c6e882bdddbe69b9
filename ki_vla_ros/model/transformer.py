"""The mixture transformer: backbone and action-expert weights, one attention per layer."""

from __future__ import annotations

import torch
from torch import nn

from ki_vla_ros.model.attention import apply_rope, rope, shared_attention
from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.model.layers import AdaRMSNorm, Block, RMSNorm, TokenCond


class MixtureTransformer(nn.Module):
    """`depth` layers; layer i holds `backbone[i]` (prefix/TEXT/FAST tokens) and `expert[i]` (actions)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self.backbone = nn.ModuleList(
            Block(cfg.width, cfg.mlp_dim, *heads, eps=cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.expert = nn.ModuleList(
            Block(cfg.expert_width, cfg.expert_mlp_dim, *heads, cond_dim=cfg.expert_width, eps=cfg.norm_eps)
            for _ in range(cfg.depth)
        )
        self.backbone_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.expert_norm = AdaRMSNorm(cfg.expert_width, cfg.expert_width, cfg.norm_eps)

    def forward(
        self,
        x_b: torch.Tensor,
        pos_b: torch.Tensor,
        x_a: torch.Tensor | None,
        pos_a: torch.Tensor | None,
        cond: torch.Tensor | TokenCond | None,
        allowed: torch.Tensor,
        insulate: bool,
    ):
        """Joint pass. x_b [B, Nb, W], pos_b [B, Nb]; x_a [B, Na, We] | None, pos_a [B, Na], cond [B, We]
        (or a per-token `TokenCond`); allowed [B, Nb+Na, Nb+Na].
        Returns final-normed (h_b [B, Nb, W], h_a [B, Na, We] | None)."""
        base = self.cfg.rope_base
        for lb, la in zip(self.backbone, self.expert, strict=True):
            q_b, k_b, v_b, g_b = lb.qkv(x_b, None)
            q_b, k_b = rope(q_b, pos_b, base), rope(k_b, pos_b, base)
            q_a = k_a = v_a = g_a = None
            if x_a is not None:
                q_a, k_a, v_a, g_a = la.qkv(x_a, cond)
                q_a, k_a = rope(q_a, pos_a, base), rope(k_a, pos_a, base)
            o_b, o_a = shared_attention(q_b, k_b, v_b, q_a, k_a, v_a, allowed, insulate)
            x_b = lb.finish(x_b, o_b, g_b, None)
            if x_a is not None:
                x_a = la.finish(x_a, o_a, g_a, cond)
        h_b = self.backbone_norm(x_b)[0]
        h_a = None if x_a is None else self.expert_norm(x_a, cond)[0]
        return h_b, h_a

    def prefix_kv(self, x_b: torch.Tensor, pos_b: torch.Tensor, allowed: torch.Tensor):
        """Backbone alone over the prefix. x_b [B, Lp, W], allowed [B, Lp, Lp]
        -> k, v [depth, B, Lp, K, hd] (keys after RoPE). The last layer's MLP is skipped (unused)."""
        ks, vs = [], []
        base = self.cfg.rope_base
        for i, lb in enumerate(self.backbone):
            q, k, v, g = lb.qkv(x_b, None)
            q, k = rope(q, pos_b, base), rope(k, pos_b, base)
            ks.append(k)
            vs.append(v)
            if i + 1 < len(self.backbone):
                o, _ = shared_attention(q, k, v, None, None, None, allowed, False)
                x_b = lb.finish(x_b, o, g, None)
        return torch.stack(ks), torch.stack(vs)

    def expert_over_cache(
        self,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        x_a: torch.Tensor,
        rope_a: tuple[torch.Tensor, torch.Tensor],
        cond: torch.Tensor | TokenCond,
        allowed: torch.Tensor,
        insulate: bool = True,
    ) -> torch.Tensor:
        """Expert alone, reading the cached prefix. k/v_cache [depth, B, Lp, K, hd], x_a [B, Na, We],
        rope_a = (cos, sin) [B, Na, 1, hd/2] of the action positions (`attention.rope_tables`),
        allowed [B, Na, Lp+Na] (action rows) -> final-normed h_a [B, Na, We]."""
        cos, sin = rope_a
        for i, la in enumerate(self.expert):
            q, k, v, g = la.qkv(x_a, cond)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            _, o = shared_attention(None, k_cache[i], v_cache[i], q, k, v, allowed, insulate)
            x_a = la.finish(x_a, o, g, cond)
        return self.expert_norm(x_a, cond)[0]
