"""The one shared attention of backbone and expert tokens — and knowledge insulation (eq. 5-6).

Backbone and expert tokens have their own Q/K/V projections (same head_dim and KV heads) and
attend in a single softmax. With ``insulate=True`` the action-token queries read the backbone's
keys and values through a stop-gradient (`detach`): the flow loss then cannot reach the backbone
or the vision tower, while the forward values are unchanged. This file is the only place where
that happens. No backbone query ever sees an action key (masks.py), so the backbone rows' softmax
runs over the backbone keys alone: the same numbers, without the always-masked action columns.

The mask enters as an additive bias (`attention_bias`: 0 where allowed, a large finite negative
elsewhere) laid out for the attention's query rows, built once per pass and shared by every
layer (and, in the flow loop, by every Euler step); `attend` runs torch's fused
scaled-dot-product attention on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = -2.3819763e38  # large finite negative (openpi); softmax of a fully masked row stays finite


def rope_tables(positions: torch.Tensor, hd: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for positions [B, N], computed once per pass and shared by q and k:
    cos [B, N, 1, hd] = (cos, cos) and sin [B, N, 1, hd] = (−sin, sin) of the angles of the hd/2 pairs."""
    freq = base ** (-torch.arange(0, hd // 2, device=positions.device, dtype=torch.float32) * 2.0 / hd)  # [hd/2]
    angle = positions.to(torch.float32)[..., None, None] * freq  # [B, N, 1, hd/2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-halves: (x1, x2) -> (x1·cos − x2·sin, x2·cos + x1·sin), computed as
    x·cos + roll(x)·sin with `rope_tables`' signed tables (the same products and sums, fewer ops).
    An export writes it as x·cos + (−x2, x1)·(sin, sin) instead — the same numbers (negation is exact),
    in the form OpenVINO's RoPE fusion recognises: one fused node per rotation instead of a split,
    a concatenation and the products (docs/runtime.md, "RoPE as one node"; eager torch keeps the
    roll, 1.0–1.5 ms cheaper forward + backward per call at training sizes).
    x [B, N, heads, hd], cos/sin [B, N, 1, hd] -> [B, N, heads, hd]."""
    xf = x.float()
    half = x.shape[-1] // 2
    if torch.onnx.is_in_onnx_export():
        sin = torch.cat([sin[..., half:], sin[..., half:]], dim=-1)  # (sin, sin): the signed table's 2nd half twice
        return (xf * cos + torch.cat([-xf[..., half:], xf[..., :half]], dim=-1) * sin).to(x.dtype)
    return (xf * cos + torch.roll(xf, half, dims=-1) * sin).to(x.dtype)


def rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding, rotate-halves. x [B, N, heads, hd], positions [B, N] -> [B, N, heads, hd]."""
    return apply_rope(x, *rope_tables(positions, x.shape[-1], base))


def product_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the attention's products run in for activations like x: autocast's on x's device
    when it is on (x itself stays fp32 there), else x's. A bias in that dtype is not converted again
    by every attention call (at peer dims in training, 63 MB per layer, forward and backward)."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def attention_bias(allowed: torch.Tensor, group: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """allowed [B, N, M] bool -> additive bias [B, 1, N·group, M] (0 allowed, NEG_INF not), one row per
    (query token, query head of a KV group) in `attend`'s order. group = num_heads / num_kv_heads.
    One row (N = 1) gives [B, 1, 1, M]: it broadcasts over every query row."""
    b, n, m = allowed.shape
    bias = torch.where(allowed, 0.0, NEG_INF).to(dtype)  # [B, N, M]
    if n == 1:
        return bias[:, None]
    return bias[:, None, :, None, :].expand(b, 1, n, group, m).reshape(b, 1, n * group, m)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention. q [B, N, H, hd], k/v [B, M, K, hd] -> [B, N, H*hd]. `mask`: allowed
    [B, N, M] bool, or its `attention_bias(allowed, H // K, q.dtype)` built once for many calls (or
    any bias that broadcasts to [B, 1, N·G, M], e.g. one row [B, 1, 1, M] when all rows are alike).

    Query rows in (token, head) order, so that with one KV head (Gemma) every reshape is free: the
    ONNX graph has no transposes of activations. Runs in q's dtype (softmax accumulates in fp32).
    An export writes softmax(q·hd^-0.5 Kᵀ + bias) V itself instead of torch's opset-18 form of the
    fused kernel (which scales q and Kᵀ by hd^-0.25 each and transposes K as its own node): OpenVINO
    then folds the transpose into the product, and the flow loop no longer rescales and transposes
    every cached key at every Euler step (`small` flow loop in bf16 4–9 % faster, docs/runtime.md)."""
    b, n, h, hd = q.shape
    m, kv = k.shape[1], k.shape[2]
    g = h // kv
    if mask.dtype == torch.bool:
        mask = attention_bias(mask, g, q.dtype)
    if kv == 1:  # one shared KV head: pure reshapes
        q, k, v = q.reshape(b, 1, n * g, hd), k.reshape(b, 1, m, hd), v.reshape(b, 1, m, hd)
    else:
        q = q.reshape(b, n, kv, g, hd).transpose(1, 2).reshape(b, kv, n * g, hd)  # [B, K, N·G, hd]
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, K, M, hd]
    if torch.onnx.is_in_onnx_export():  # the same product, written so that the runtimes fuse it (below)
        out = torch.matmul(torch.softmax(torch.matmul(q * hd**-0.5, k.transpose(-1, -2)) + mask, -1), v)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, K, N·G, hd], scale hd^-0.5
    if kv > 1:
        out = out.reshape(b, kv, n, g, hd).transpose(1, 2)
    return out.reshape(b, n, h * hd)


def shared_attention(
    q_b: torch.Tensor | None,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    q_a: torch.Tensor | None,
    k_a: torch.Tensor | None,
    v_a: torch.Tensor | None,
    masks: tuple[torch.Tensor | None, torch.Tensor | None],
    insulate: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One attention over backbone (b) and action (a) tokens.

    q_b [B, Nb, H, hd] or None (expert-only step over a cached prefix); k_b/v_b [B, Nb', K, hd]
    (Nb' = Nb, or the cached prefix length); q_a/k_a/v_a [B, Na, ...] or None (backbone only).
    masks = (backbone rows over the backbone keys [B, Nb, Nb], action rows over backbone then
    action keys [B, Na, Nb' + Na]) as `attend` takes them; None for the rows not present.
    Returns (out_b [B, Nb, H*hd] | None, out_a [B, Na, H*hd] | None).
    """
    out_b = out_a = None
    if q_b is not None:
        out_b = attend(q_b, k_b, v_b, masks[0])
    if q_a is not None:
        if insulate:  # eq. 5-6: sg(K_b), sg(V_b) for the action queries
            k_b, v_b = k_b.detach(), v_b.detach()
        out_a = attend(q_a, torch.cat([k_b, k_a], dim=1), torch.cat([v_b, v_a], dim=1), masks[1])
    return out_b, out_a
