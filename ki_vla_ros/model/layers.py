"""Gemma-style building blocks: RMSNorm, adaRMSNorm, GeGLU MLP and a transformer block."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Gemma RMSNorm: x / rms(x) · (1 + weight), weight zero-initialised."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype), None


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
    """An adaRMS modulation computed ahead of the norm (`AdaRMSNorm.modulate`): scale|shift|gate
    [B | 1, 1 | N, 3D]. The flow loop computes every step's at once (kivla.py: `step_modulations`);
    training passes the condition and the norm computes it (inside the block, as FSDP needs)."""

    value: torch.Tensor


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
        """cond [B, C] -> scale|shift|gate [B, 1, 3D]; a TokenCond or a per-token cond [B, N, C]
        -> [B, N, 3D]."""
        if isinstance(cond, TokenCond):
            return Modulation(torch.where(cond.use_alt[..., None], self.modulation(cond.alt)[:, None],
                                          self.modulation(cond.cond)[:, None]))
        return Modulation(self.modulation(cond) if cond.dim() == 3 else self.modulation(cond)[:, None])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | TokenCond | Modulation):
        # x [B, N, D], cond [B, C] -> y [B, N, D], gate [B, 1, D]; cond TokenCond -> gate [B, N, D]
        mod = cond if isinstance(cond, Modulation) else self.modulate(cond)
        scale, shift, gate = mod.value.chunk(3, dim=-1)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + scale) + shift).to(x.dtype), gate


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
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


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

    def qkv(self, x: torch.Tensor, cond: torch.Tensor | TokenCond | Modulation | None):
        # x [B, N, W], cond: the expert's condition (or its attention norm's `Modulation`), None in
        # the backbone -> q [B, N, H, hd], k/v [B, N, K, hd], gate [B | 1, 1 | N, W] | None
        b, n, _ = x.shape
        h, gate = self.attn_norm(x, cond)
        if self.qkv_weight is not None:  # inference: one product (`fuse`)
            hq, hk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = F.linear(h, self.qkv_weight).split([hq, hk, hk], dim=-1)
        else:
            q, k, v = self.q_proj(h), self.k_proj(h), self.v_proj(h)
        shape = (b, n, -1, self.head_dim)
        return q.view(shape), k.view(shape), v.view(shape), gate

    def finish(self, x: torch.Tensor, attn: torch.Tensor, gate, cond) -> torch.Tensor:
        # x [B, N, W], attn [B, N, H*hd], cond as in `qkv` (or the MLP norm's `Modulation`) -> [B, N, W]
        x = gated_residual(x, self.o_proj(attn), gate)
        h, gate = self.mlp_norm(x, cond)
        return gated_residual(x, self.mlp(h), gate)
