"""`Batch`: the training batch `KIVLA.compute_loss` takes (what the data pipeline produces).

Shapes: B examples, V camera views, S = config.image_size, L tokens, H = config.action_horizon,
D = config.action_dim (padded), Ds = config.state_dim (padded). `tokenize.prompt.collate` builds
the token arrays; every key below is required except `noise`, `time` and `prefix_len`.

Token rows are laid out ``[prefix tokens | target tokens | PAD ...]``: the prefix (BOS,
instruction, state) first, then the targets (a text answer and/or FAST action tokens), then
padding. `token_kind` gives each token's kind (`masks.PAD/PREFIX/TEXT/FAST`); `loss_mask` marks
the target tokens to predict (on the predicted token itself; its logit comes from the token
before it). A batch may mix VLM-only examples (text targets, `action_mask` False), action-only
examples (FAST targets or none, `action_mask` True) and both.
"""

from __future__ import annotations

from typing import TypedDict

import torch


class _BatchRequired(TypedDict):
    images: torch.Tensor  # float32 [B, V, 3, S, S] in [-1, 1]; a missing view is all -1
    image_mask: torch.Tensor  # bool [B, V]; False for a missing / padded view
    tokens: torch.Tensor  # int64 [B, L]; model vocabulary ids (text, state bins, FAST)
    token_kind: torch.Tensor  # int64 [B, L]; masks.PAD / PREFIX / TEXT / FAST
    loss_mask: torch.Tensor  # bool [B, L]; True on TEXT/FAST tokens that carry cross-entropy
    state: torch.Tensor  # float32 [B, Ds]; normalised to [-1, 1], zero-padded (read in "continuous" mode)
    actions: torch.Tensor  # float32 [B, H, D]; normalised, zero-padded (ignored where action_mask False)
    action_mask: torch.Tensor  # bool [B]; the example has an action chunk (flow loss applies)
    action_dim_mask: torch.Tensor  # bool [B, D]; real (True) vs padded action dims; loss on real only


class Batch(_BatchRequired, total=False):
    noise: torch.Tensor  # float32 [B, H, D]; flow noise override (default N(0, I))
    time: torch.Tensor  # float32 [B]; flow time override in (0, 1], t = 1 noise (default Beta(1.5, 1))
    prefix_len: torch.Tensor  # int64 [B]; leading actions given as clean data, not predicted (model/rtc.py)


BATCH_KEYS = tuple(_BatchRequired.__annotations__)
