"""SigLIP-style vision tower: patch embedding, learned positions (started from a 2-D sine-cosine code),
pre-LN ViT blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.model.layers import gelu_tanh


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position code [grid², width] (MAE, Simple ViT): a quarter of the channels
    each for sin/cos of the column and of the row at geometric frequencies; row-major patch order."""
    if width % 4:
        raise ValueError(f"vision_width {width} must be a multiple of 4 for 2-D sine-cosine positions")
    freq = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    r, c = rows.reshape(-1, 1) * freq, cols.reshape(-1, 1) * freq  # [P, width/4]
    return torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], dim=1).float()


class VisionBlock(nn.Module):
    def __init__(self, width: int, mlp_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, w/heads]
        x = x + self.out(a.transpose(1, 2).reshape(b, n, w))
        return x + self.fc2(gelu_tanh(self.fc1(self.norm2(x))))


class VisionTower(nn.Module):
    """images [B, 3, S, S] in [-1, 1] -> patch features [B, P, vision_width] (P = (S/patch)²)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, cfg.vision_width, cfg.patch_size, stride=cfg.patch_size)
        # learned, started from the 2-D sine-cosine code: from scratch, the tower locates objects to
        # 0.5 cm after 250 steps, against 4 cm from N(0, 0.02²) (benchmarks/localize_probe.py)
        self.pos_embed = nn.Parameter(sincos_2d(cfg.image_size // cfg.patch_size, cfg.vision_width))
        self.blocks = nn.ModuleList(
            VisionBlock(cfg.vision_width, cfg.vision_mlp_dim, cfg.vision_heads)
            for _ in range(cfg.vision_depth)
        )
        self.norm = nn.LayerNorm(cfg.vision_width, eps=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed  # [B, P, Wv]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)
