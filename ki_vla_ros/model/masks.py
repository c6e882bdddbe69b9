"""Token kinds and the attention mask of appendix B — built in one function, `attention_mask`.

Every token of the joint sequence has a kind:

* ``PAD``    — padding (a missing camera view, text padding): sees nothing, seen by nothing;
* ``PREFIX`` — images, instruction, state: bidirectional among themselves;
* ``TEXT``   — language targets (e.g. a VLM answer): causal over the prefix and earlier targets;
* ``FAST``   — discrete action targets: causal over the prefix and earlier targets;
* ``ACTION`` — the action expert's noisy-action tokens: see the prefix and all actions, never
  TEXT/FAST targets (no leak between the two action representations).

No backbone token (PREFIX/TEXT/FAST) ever sees an ACTION token, so information flows one way,
from the backbone to the expert; this is what makes the prefix K/V cacheable.
"""

from __future__ import annotations

import torch

PAD, PREFIX, TEXT, FAST, ACTION = 0, 1, 2, 3, 4
BACKBONE_KINDS = (PREFIX, TEXT, FAST)


def attention_mask(kinds: torch.Tensor) -> torch.Tensor:
    """kinds [B, N] (int) -> allowed [B, N_query, N_key] bool, True where the query may attend.

    Order along N matters only among targets (causal by index). Fully masked rows (PAD queries)
    are left all False; the attention uses a large finite negative so they stay finite.
    """
    n = kinds.shape[1]
    q, k = kinds[:, :, None], kinds[:, None, :]  # [B, N, 1], [B, 1, N]
    q_valid = q != PAD
    q_target = (q == TEXT) | (q == FAST)
    k_target = (k == TEXT) | (k == FAST)
    causal = torch.ones(n, n, dtype=torch.bool, device=kinds.device).tril()  # key index <= query index
    sees_prefix = q_valid & (k == PREFIX)
    sees_targets = q_target & k_target & causal
    sees_actions = (q == ACTION) & (k == ACTION)
    return sees_prefix | sees_targets | sees_actions
