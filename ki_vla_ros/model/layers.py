"""Gemma-style building blocks: RMSNorm, adaRMSNorm, GeGLU MLP and a transformer block.

Export forms: in an ONNX export the GELU and the adaRMS normalisation are written in the patterns
ONNX Runtime fuses into one kernel each (FastGelu, SimplifiedLayerNormalization; the graph stays
standard ONNX, and TensorRT fuses such element-wise chains itself). Eager torch runs its own
kernels. Same values either way (test_runtime_policy.py: test_onnx_export_matches_torch)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ki_vla_ros.model.attention import apply_rope

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (Gemma, SigLIP). Exported as x·0.5·(1 + tanh(√(2/π)·(x + 0.044715·x³))),
    the order of products ONNX Runtime fuses into one FastGelu kernel (torch's own opset-18 export of
    it stays nine kernels)."""
    if torch.onnx.is_in_onnx_export():
        return x * 0.5 * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3))))
    return F.gelu(x, approximate="tanh")


def rms_normalize(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """x / rms(x) over the last dim, in fp32, times `weight` [D] if given. ONNX Runtime fuses the
    normalisation and a constant [D] weight into one kernel; so without a weight (the adaRMS norm,
    whose modulation is no constant) an export multiplies by ones, which change no value."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None and torch.onnx.is_in_onnx_export():
        weight = torch.ones(int(x.shape[-1]))
    return y if weight is None else y * weight


class RMSNorm(nn.Module):
    """Gemma RMSNorm: x / rms(x) · (1 + weight), weight zero-initialised."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        return rms_normalize(x, self.eps, 1.0 + self.weight.float()).to(x.dtype), None


class TokenCond(NamedTuple):
    """A condition that differs per token but takes one of two values: `alt` [B, C] on the tokens
    where `use_alt` [B, N] is True, `cond` [B, C] elsewhere. The action expert's per-token flow time
    (model/rtc.py): the action prefix is at t = 0 (`alt`), the rest at the sampled t (`cond`). The
    modulation runs on the two rows only and is selected per token, so the tokens at `cond` get
    exactly what a plain [B, C] condition gives them."""

    cond: torch.Tensor
    alt: torch.Tensor
    use_alt: torch.Tensor


class Modulation(NamedTuple):
    """An adaRMS modulation computed ahead of the norm (`AdaRMSNorm.modulate`): factor = 1 + scale,
    shift and gate, each [B | 1, 1 | N, D]. The flow loop computes every step's at once (kivla.py:
    `step_modulations`), so neither the split nor the 1 + scale runs in its Euler steps; training
    passes the condition and the norm computes it (inside the block, as FSDP needs)."""

    factor: torch.Tensor
    shift: torch.Tensor
    gate: torch.Tensor


class AdaRMSNorm(nn.Module):
    """Adaptive RMSNorm (π0.5): one Linear of the condition gives scale, shift, gate (in that order).

    out = rmsnorm(x)·(1 + scale) + shift; the gate multiplies the residual branch that follows.
    The modulation is zero-initialised, so scale = shift = gate = 0 at init.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def modulate(self, cond: torch.Tensor | TokenCond) -> Modulation:
        """cond [B, C] -> `Modulation` of [B, 1, D] each; a TokenCond or a per-token cond [B, N, C]
        -> [B, N, D] each."""
        if isinstance(cond, TokenCond):
            mod = torch.where(cond.use_alt[..., None], self.modulation(cond.alt)[:, None],
                              self.modulation(cond.cond)[:, None])
        else:
            mod = self.modulation(cond) if cond.dim() == 3 else self.modulation(cond)[:, None]
        scale, shift, gate = mod.chunk(3, dim=-1)
        return Modulation(1.0 + scale, shift, gate)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | TokenCond | Modulation):
        # x [B, N, D], cond [B, C] -> y [B, N, D], gate [B, 1, D]; cond TokenCond -> gate [B, N, D]
        factor, shift, gate = cond if isinstance(cond, Modulation) else self.modulate(cond)
        return (rms_normalize(x, self.eps) * factor + shift).to(x.dtype), gate


def _stack(*parts: nn.Linear) -> torch.Tensor:
    """One [sum(out), in] matrix of the parts' weights; each weight becomes a view into it."""
    with torch.no_grad():
        stacked = torch.cat([p.weight for p in parts])
        row = 0
        for p in parts:
            p.weight.data = stacked[row : row + p.weight.shape[0]]
            row += p.weight.shape[0]
    return stacked


class GeGLU(nn.Module):
    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)
        self.register_buffer("gate_up_weight", None, persistent=False)  # `Block.fuse`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is not None:  # inference: one product (`Block.fuse`)
            gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(gelu_tanh(gate) * up)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return x + y if gate is None else x + y * gate


class Block(nn.Module):
    """One transformer layer's weights for one token group (backbone or expert).

    The attention itself is shared between groups (attention.shared_attention), so a block is
    used in two halves: `qkv` before the attention and `finish` after it.
    """

    def __init__(
        self,
        width: int,
        mlp_dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        cond_dim: int | None = None,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        norm = (
            (lambda: RMSNorm(width, eps)) if cond_dim is None else (lambda: AdaRMSNorm(width, cond_dim, eps))
        )
        self.attn_norm = norm()
        self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)
        self.mlp_norm = norm()
        self.mlp = GeGLU(width, mlp_dim)
        self.register_buffer("qkv_weight", None, persistent=False)  # `fuse`

    def fuse(self, on: bool = True) -> None:
        """Inference: stack q/k/v and gate/up weights (one matrix product each instead of three and
        two per call). The parameters stay, as views into the stacked matrices (no second copy in
        memory); state dicts keep the π0.5 layout. Training keeps the separate products (the stacks
        pass no gradient; `KIVLA.train()` drops them). on=False drops them and gives each parameter
        its own memory again."""
        qkv, gate_up = (self.q_proj, self.k_proj, self.v_proj), (self.mlp.gate_proj, self.mlp.up_proj)
        if on:
            self.qkv_weight, self.mlp.gate_up_weight = _stack(*qkv), _stack(*gate_up)
        elif self.qkv_weight is not None:
            for p in (*qkv, *gate_up):
                p.weight.data = p.weight.data.clone()
            self.qkv_weight = self.mlp.gate_up_weight = None

    def qkv(self, x: torch.Tensor, cond: torch.Tensor | TokenCond | Modulation | None,
            rope: tuple[torch.Tensor, torch.Tensor]):
        # x [B, N, W], cond: the expert's condition (or its attention norm's `Modulation`), None in
        # the backbone; rope = (cos, sin) [B, N, 1, hd] of the tokens' positions (`attention.rope_tables`)
        # -> q [B, N, H, hd], k [B, N, K, hd] (both rotated), v [B, N, K, hd], gate [B | 1, 1 | N, W] | None
        b, n, _ = x.shape
        h, gate = self.attn_norm(x, cond)
        heads, kv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        if self.qkv_weight is not None:  # inference (`fuse`): one product, one rotation of q and k together
            qk, v = F.linear(h, self.qkv_weight).view(b, n, heads + 2 * kv, hd).split([heads + kv, kv], dim=2)
            q, k = apply_rope(qk, *rope).split([heads, kv], dim=2)
            return q, k, v, gate
        q = apply_rope(self.q_proj(h).view(b, n, heads, hd), *rope)
        k = apply_rope(self.k_proj(h).view(b, n, kv, hd), *rope)
        return q, k, self.v_proj(h).view(b, n, kv, hd), gate

    def finish(self, x: torch.Tensor, attn: torch.Tensor, gate, cond, rows: torch.Tensor | None = None
               ) -> torch.Tensor:
        # x [B, N, W], attn [B, N, H*hd], cond as in `qkv` (or the MLP norm's `Modulation`) -> [B, N, W];
        # rows [B, R] (long): attn holds those rows of x only, and so does the output [B, R, W]
        if rows is not None:
            x = x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))
        x = gated_residual(x, self.o_proj(attn), gate)
        h, gate = self.mlp_norm(x, cond)
        return gated_residual(x, self.mlp(h), gate)
