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


def rope_tables(positions: torch.Tensor, hd: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, N, 1, hd/2] for positions [B, N] (computed once per pass, shared by q and k)."""
    freq = base ** (-torch.arange(0, hd // 2, device=positions.device, dtype=torch.float32) * 2.0 / hd)  # [hd/2]
    angle = positions.to(torch.float32)[..., None, None] * freq  # [B, N, 1, hd/2]
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-halves. x [B, N, heads, hd], cos/sin [B, N, 1, hd/2] -> [B, N, heads, hd]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding, rotate-halves. x [B, N, heads, hd], positions [B, N] -> [B, N, heads, hd]."""
    return apply_rope(x, *rope_tables(positions, x.shape[-1], base))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention. q [B, N, H, hd], k/v [B, M, K, hd], allowed [B, N, M] -> [B, N, H*hd].

    Plain batched matmuls (no einsum), query rows kept in (token, head) order so that with one KV
    head (Gemma) every reshape is free: the ONNX graph has no transposes of activations."""
    b, n, h, hd = q.shape
    m, kv = k.shape[1], k.shape[2]
    g = h // kv
    dtype = q.dtype
    if kv == 1:  # one shared KV head: pure reshapes
        q, k, v = q.float().reshape(b, 1, n * g, hd), k.float().reshape(b, 1, m, hd), v.float().reshape(b, 1, m, hd)
    else:
        q = q.float().reshape(b, n, kv, g, hd).transpose(1, 2).reshape(b, kv, n * g, hd)  # [B, K, N·G, hd]
        k, v = k.float().transpose(1, 2), v.float().transpose(1, 2)  # [B, K, M, hd]
    scores = (torch.matmul(q, k.transpose(-1, -2)) * hd**-0.5).reshape(b, kv, n, g, m)  # [B, K, N, G, M]
    scores = torch.where(allowed[:, None, :, None, :], scores, NEG_INF)
    probs = torch.softmax(scores, dim=-1).reshape(b, kv, n * g, m)
    out = torch.matmul(probs, v).reshape(b, kv, n, g, hd)  # [B, K, N, G, hd]
    if kv > 1:
        out = out.transpose(1, 2)
    return out.reshape(b, n, h * hd).to(dtype)


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
