"""Token kinds and the attention mask of appendix B — built in one function, `attention_mask`.

Every token of the joint sequence has a kind:

* ``PAD``    — padding (a missing camera view, text padding): seen by nothing; sees only itself
  (so its row is never empty and nothing leaks into it);
* ``PREFIX`` — images, instruction, state: bidirectional among themselves;
* ``TEXT``   — language targets (e.g. a VLM answer): causal over the prefix and earlier targets;
* ``FAST``   — discrete action targets: causal over the prefix and earlier targets;
* ``ACTION`` — the action expert's noisy-action tokens: see the prefix and all actions, never
  TEXT/FAST targets (no leak between the two action representations). In training with several
  flow draws per example (`KIVLA.compute_loss(flow_samples=K)`) the actions are K consecutive
  blocks of H tokens, one noisy chunk each, and a block sees only its own actions.

No backbone token (PREFIX/TEXT/FAST) ever sees an ACTION token, so information flows one way,
from the backbone to the expert; this is what makes the prefix K/V cacheable.
"""

from __future__ import annotations

import torch

PAD, PREFIX, TEXT, FAST, ACTION = 0, 1, 2, 3, 4
BACKBONE_KINDS = (PREFIX, TEXT, FAST)


def attention_mask(kinds: torch.Tensor, action_block: int = 0) -> torch.Tensor:
    """kinds [B, N] (int) -> allowed [B, N_query, N_key] bool, True where the query may attend.

    Order along N matters only among targets (causal by index). A PAD query sees only itself.
    ``action_block`` > 0: ACTION tokens form blocks of that many consecutive action tokens (the
    k-th action token is in block k // action_block) and see the actions of their own block only.
    """
    n = kinds.shape[1]
    q, k = kinds[:, :, None], kinds[:, None, :]  # [B, N, 1], [B, 1, N]
    q_valid = q != PAD
    q_target = (q == TEXT) | (q == FAST)
    k_target = (k == TEXT) | (k == FAST)
    idx = torch.arange(n, device=kinds.device)  # index comparisons, not tril/eye: exports to plain ONNX ops
    causal = idx[None, :] <= idx[:, None]  # key index <= query index
    sees_prefix = q_valid & (k == PREFIX)
    sees_targets = q_target & k_target & causal
    sees_actions = (q == ACTION) & (k == ACTION)
    if action_block > 0:
        block = torch.div((kinds == ACTION).long().cumsum(-1) - 1, action_block, rounding_mode="floor")
        sees_actions = sees_actions & (block[:, :, None] == block[:, None, :])
    pad_self = (q == PAD) & (idx[None, :] == idx[:, None])
    return sees_prefix | sees_targets | sees_actions | pad_self


def prefix_attention_row(kinds: torch.Tensor) -> torch.Tensor:
    """The mask of a pass over the prefix alone (kinds PREFIX / PAD, the cached prefix at run time) as
    ONE row for every query: kinds [B, N] -> allowed [B, 1, N], True at the PREFIX keys. Every PREFIX
    query of `attention_mask` sees exactly these keys; a PAD query is given the same row instead of
    only itself, which changes nothing that is read: no query of any kind ever sees a PAD key, so a PAD
    token's keys and values never reach a valid token. One row is N times less mask to build and read
    (at 636 prefix tokens and 8 query heads the full bias was 13 MB, read by every layer)."""
    return (kinds == PREFIX)[:, None, :]


def action_attention_row(prefix_kinds: torch.Tensor, horizon: int) -> torch.Tensor:
    """The mask of the action expert over a cached prefix as ONE row for every action query:
    prefix_kinds [B, Lp] (PREFIX / PAD), `horizon` action tokens after them -> allowed [B, 1, Lp + H],
    True at the PREFIX keys and at every action key: the row `attention_mask` gives each ACTION query
    of that sequence, without building its [Lp + H]² square (a flow loop's mask, once per chunk)."""
    actions = torch.ones(prefix_kinds.shape[0], horizon, dtype=torch.bool, device=prefix_kinds.device)
    return torch.cat([prefix_kinds == PREFIX, actions], 1)[:, None, :]
