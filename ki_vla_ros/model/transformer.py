"""The mixture transformer: backbone and action-expert weights, one attention per layer."""

from __future__ import annotations

import torch
from torch import nn

from ki_vla_ros.model.attention import attend, attention_bias, product_dtype, rope_tables, shared_attention
from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.model.layers import AdaRMSNorm, Block, Modulation, RMSNorm, TokenCond


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

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.cfg.num_heads // self.cfg.num_kv_heads

    def expert_modulations(self, cond: torch.Tensor | TokenCond) -> list[Modulation]:
        """The expert's adaRMS modulations for a condition [R, We] (or `TokenCond`): one per norm, in
        the order layer 0 attention, layer 0 MLP, ..., final norm; each of [R, 1 | N, We]. Inference
        (outside the blocks' calls, so not under FSDP)."""
        norms = [n for la in self.expert for n in (la.attn_norm, la.mlp_norm)] + [self.expert_norm]
        return [n.modulate(cond) for n in norms]

    def forward(
        self,
        x_b: torch.Tensor,
        pos_b: torch.Tensor,
        x_a: torch.Tensor | None,
        pos_a: torch.Tensor | None,
        cond: torch.Tensor | TokenCond | None,
        allowed: torch.Tensor,
        insulate: bool,
        rows_b: torch.Tensor | None = None,
    ):
        """Joint pass. x_b [B, Nb, W], pos_b [B, Nb]; x_a [B, Na, We] | None, pos_a [B, Na], cond [B, We]
        (or a per-token `TokenCond`); allowed [B, Nb+Na, Nb+Na]. rows_b [B, R] (long): the backbone
        rows whose output is wanted (training: the ones a target's logit is read from); the last
        layer then runs its attention output, o-projection and MLP for those rows only (its keys and
        values, which the expert reads, still come from every row).
        Returns final-normed (h_b [B, Nb | R, W], h_a [B, Na, We] | None)."""
        c, nb = self.cfg, x_b.shape[1]
        rope_b = rope_tables(pos_b, c.head_dim, c.rope_base)
        masks = (attention_bias(allowed[:, :nb, :nb], self.group, product_dtype(x_b)), None)
        rope_a = None
        if x_a is not None:
            masks = (masks[0], attention_bias(allowed[:, nb:], self.group, product_dtype(x_a)))
            rope_a = rope_tables(pos_a, c.head_dim, c.rope_base)
        for i, (lb, la) in enumerate(zip(self.backbone, self.expert, strict=True)):
            q_b, k_b, v_b, g_b = lb.qkv(x_b, None, rope_b)
            rows = rows_b if i + 1 == len(self.backbone) else None  # the last layer: wanted rows only
            if rows is not None:
                q_b = q_b.gather(1, rows[..., None, None].expand(-1, -1, *q_b.shape[2:]))
                rows_allowed = allowed[:, :nb, :nb].gather(1, rows[..., None].expand(-1, -1, nb))
                masks = (attention_bias(rows_allowed, self.group, product_dtype(x_b)), masks[1])
            q_a = k_a = v_a = g_a = None
            if x_a is not None:
                q_a, k_a, v_a, g_a = la.qkv(x_a, cond, rope_a)
            o_b, o_a = shared_attention(q_b, k_b, v_b, q_a, k_a, v_a, masks, insulate)
            x_b = lb.finish(x_b, o_b, g_b, None, rows)
            if x_a is not None:
                x_a = la.finish(x_a, o_a, g_a, cond)
        h_b = self.backbone_norm(x_b)[0]
        h_a = None if x_a is None else self.expert_norm(x_a, cond)[0]
        return h_b, h_a

    def prefix_kv(self, x_b: torch.Tensor, pos_b: torch.Tensor, allowed: torch.Tensor):
        """Backbone alone over the prefix. x_b [B, Lp, W], allowed [B, Lp | 1, Lp] (one row: the same for
        every query, `masks.prefix_attention_row`) -> k, v [depth, B, Lp, K, hd] (keys after RoPE).
        The last layer's attention output and MLP are skipped (unused)."""
        ks, vs = [], []
        c = self.cfg
        rope_b = rope_tables(pos_b, c.head_dim, c.rope_base)
        masks = (attention_bias(allowed, self.group, x_b.dtype), None)  # once for every layer
        for i, lb in enumerate(self.backbone):
            q, k, v, g = lb.qkv(x_b, None, rope_b)
            ks.append(k)
            vs.append(v)
            if i + 1 < len(self.backbone):
                o, _ = shared_attention(q, k, v, None, None, None, masks, False)
                x_b = lb.finish(x_b, o, g, None)
        return torch.stack(ks), torch.stack(vs)

    def backbone_decode(self, x_b: torch.Tensor, pos_b: torch.Tensor, allowed: torch.Tensor,
                        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        """Backbone alone over new tokens x_b [B, N, W] at RoPE positions pos_b [B, N], reading
        `cache` (per layer k, v [B, Nc, K, hd], keys after RoPE; None: nothing before them); allowed
        [B, N, Nc + N] over cached then new keys. -> final-normed h_b [B, N, W] and the cache extended
        by the new tokens' K/V (autoregressive decoding: FAST tokens, VQA answers)."""
        rope_b = rope_tables(pos_b, self.cfg.head_dim, self.cfg.rope_base)
        out = []
        for i, lb in enumerate(self.backbone):
            q, k, v, g = lb.qkv(x_b, None, rope_b)
            if cache is not None:
                k, v = torch.cat([cache[i][0], k], 1), torch.cat([cache[i][1], v], 1)
            out.append((k, v))
            x_b = lb.finish(x_b, attend(q, k, v, allowed), g, None)
        return self.backbone_norm(x_b)[0], out

    def expert_over_cache(
        self,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        x_a: torch.Tensor,
        rope_a: tuple[torch.Tensor, torch.Tensor],
        cond: torch.Tensor | TokenCond | list[Modulation],
        bias: torch.Tensor,
        insulate: bool = True,
    ) -> torch.Tensor:
        """Expert alone, reading the cached prefix. k/v_cache [depth, B, Lp, K, hd], x_a [B, Na, We],
        rope_a = (cos, sin) [B, Na, 1, hd] of the action positions (`attention.rope_tables`), cond
        [B, We] (or `TokenCond`, or its `expert_modulations`), bias = `attention_bias` of the action
        rows -> final-normed h_a [B, Na, We]."""
        conds = cond if isinstance(cond, list) else [cond] * (2 * len(self.expert) + 1)
        for i, la in enumerate(self.expert):
            q, k, v, g = la.qkv(x_a, conds[2 * i], rope_a)
            _, o = shared_attention(None, k_cache[i], v_cache[i], q, k, v, (None, bias), insulate)
            x_a = la.finish(x_a, o, g, conds[2 * i + 1])
        return self.expert_norm(x_a, conds[-1])[0]
