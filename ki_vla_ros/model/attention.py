"""The one shared attention of backbone and expert tokens — and knowledge insulation (eq. 5-6).

Backbone and expert tokens have their own Q/K/V projections (same head_dim and KV heads) and
attend in a single softmax. With ``insulate=True`` the action-token queries read the backbone's
keys and values through a stop-gradient (`detach`): the flow loss then cannot reach the backbone
or the vision tower, while the forward values are unchanged. This file is the only place where
that happens.
"""

from __future__ import annotations

import torch

NEG_INF = -2.3819763e38  # large finite negative (openpi); softmax of a fully masked row stays finite


def rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding, rotate-halves. x [B, N, heads, hd], positions [B, N] -> [B, N, heads, hd]."""
    hd = x.shape[-1]
    freq = base ** (-torch.arange(0, hd // 2, device=x.device, dtype=torch.float32) * 2.0 / hd)  # [hd/2]
    angle = positions.to(torch.float32)[..., None, None] * freq  # [B, N, 1, hd/2]
    sin, cos = torch.sin(angle), torch.cos(angle)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention. q [B, N, H, hd], k/v [B, M, K, hd], allowed [B, N, M] -> [B, N, H*hd]."""
    b, n, h, hd = q.shape
    kv = k.shape[2]
    q = q.reshape(b, n, kv, h // kv, hd)  # [B, N, K, G, hd]
    scores = torch.einsum("bnkgd,bmkd->bkgnm", q.float(), k.float()) * hd**-0.5  # [B, K, G, N, M]
    scores = torch.where(allowed[:, None, None], scores, NEG_INF)
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bkgnm,bmkd->bnkgd", probs, v.float())  # [B, N, K, G, hd]
    return out.reshape(b, n, h * hd).to(q.dtype)


def shared_attention(
    q_b: torch.Tensor | None,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    q_a: torch.Tensor | None,
    k_a: torch.Tensor | None,
    v_a: torch.Tensor | None,
    allowed: torch.Tensor,
    insulate: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One attention over backbone (b) and action (a) tokens.

    q_b [B, Nb, H, hd] or None (expert-only step over a cached prefix); k_b/v_b [B, Nb', K, hd]
    (Nb' = Nb, or the cached prefix length); q_a/k_a/v_a [B, Na, ...] or None (backbone only).
    allowed [B, Nq, Nb' + Na] for the queries present, backbone rows first.
    Returns (out_b [B, Nb, H*hd] | None, out_a [B, Na, H*hd] | None).
    """
    nb = 0 if q_b is None else q_b.shape[1]
    out_b = out_a = None
    if q_b is not None:
        k = k_b if k_a is None else torch.cat([k_b, k_a], dim=1)
        v = v_b if v_a is None else torch.cat([v_b, v_a], dim=1)
        out_b = attend(q_b, k, v, allowed[:, :nb])
    if q_a is not None:
        if insulate:  # eq. 5-6: sg(K_b), sg(V_b) for the action queries
            k_b, v_b = k_b.detach(), v_b.detach()
        out_a = attend(q_a, torch.cat([k_b, k_a], dim=1), torch.cat([v_b, v_a], dim=1), allowed[:, nb:])
    return out_b, out_a
