"""Random batches in the exact `Batch` format, for tests, benchmarks and smoke runs."""

from __future__ import annotations

import torch

from ki_vla_ros.model.batch import Batch
from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.model.masks import FAST, PAD, PREFIX, TEXT


def synthetic_batch(
    cfg: ModelConfig,
    batch_size: int = 4,
    num_views: int = 2,
    prefix_len: int = 12,
    text_len: int = 4,
    fast_len: int = 8,
    real_dims: int | None = None,
    seed: int = 0,
    mix: str = "mixed",
) -> Batch:
    """A random batch. `mix`: "mixed" (example 0 VLM-only, 1 action-only, the rest both), "vlm",
    "action" (FAST targets, no text) or "both". Rows have different prefix lengths (right padding),
    the last view of example 0 is missing, and only the first `real_dims` action dims are real."""
    g = torch.Generator().manual_seed(seed)
    b, h, d, s = batch_size, cfg.action_horizon, cfg.action_dim, cfg.image_size
    real_dims = d // 2 if real_dims is None else real_dims
    n = prefix_len + text_len + fast_len
    tokens = torch.zeros(b, n, dtype=torch.long)
    kind = torch.full((b, n), PAD, dtype=torch.long)
    loss_mask = torch.zeros(b, n, dtype=torch.bool)
    action_mask = torch.ones(b, dtype=torch.bool)
    for i in range(b):
        m = {"mixed": ("vlm" if i == 0 else "action" if i == 1 else "both")}.get(mix, mix)
        lp = prefix_len - (i % 3)  # ragged prefixes
        row = [torch.randint(3, cfg.text_vocab_limit, (lp,), generator=g)]
        kinds = [torch.full((lp,), PREFIX)]
        if m in ("vlm", "both"):
            row.append(torch.randint(3, cfg.text_vocab_limit, (text_len,), generator=g))
            kinds.append(torch.full((text_len,), TEXT))
        if m in ("action", "both"):
            row.append(torch.randint(cfg.fast_token_base, cfg.vocab_size, (fast_len,), generator=g))
            kinds.append(torch.full((fast_len,), FAST))
        row, kinds = torch.cat(row), torch.cat(kinds)
        tokens[i, : len(row)] = row
        kind[i, : len(row)] = kinds
        loss_mask[i, : len(row)] = kinds != PREFIX
        action_mask[i] = m != "vlm"
    image_mask = torch.ones(b, num_views, dtype=torch.bool)
    image_mask[0, -1] = num_views == 1
    images = torch.rand(b, num_views, 3, s, s, generator=g) * 2 - 1
    images[~image_mask] = -1.0
    dim_mask = torch.zeros(b, d, dtype=torch.bool)
    dim_mask[:, :real_dims] = True
    t_axis = torch.linspace(0, 1, h)[None, :, None]
    phase = torch.rand(b, 1, d, generator=g) * 6.28
    actions = (0.8 * torch.sin(2.0 * t_axis * 3.14 + phase)) * dim_mask[:, None, :]  # smooth, zero-padded
    state = torch.rand(b, cfg.state_dim, generator=g) * 2 - 1
    return Batch(
        images=images,
        image_mask=image_mask,
        tokens=tokens,
        token_kind=kind,
        loss_mask=loss_mask,
        state=state,
        actions=actions,
        action_mask=action_mask,
        action_dim_mask=dim_mask,
        noise=torch.randn(b, h, d, generator=g),
        time=torch.rand(b, generator=g) * 0.98 + 0.01,
    )


def open_gates(model, seed: int = 0, std: float = 0.3) -> None:
    """Randomise the adaRMSNorm modulations (scale/shift/gate), as after some training. At init the
    zero gates make the expert's residual branches (hence its attention to the prefix) vanish."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
