"""FAST-token decoding as a policy: the backbone alone, no action expert (π0-FAST's way to act).

    policy = FastTokenPolicy.load("models/aloha_sim_ki")
    out = policy.infer(Observation(images={...}, state=q, instruction="pick up the red cube"))
    out.actions        # float64 [H, action_dim] in robot units
    out.timings_ms     # preprocess, decode (prefix pass + token steps), postprocess, total
    policy.last_num_tokens                  # action tokens the last chunk took

The same interface as `ki_vla_ros.runtime.Policy` (it reuses its input checks and prompt), so the
policy node loads it with ``policy_class:=ki_vla_ros.runtime.fast_policy:FastTokenPolicy`` and
``ki-vla eval --policy-class ...`` evaluates it in closed loop.

Decoding follows the training layout (`tokenize/prompt.py`): the prefix ends ";\\nAction: " and
the target is the action tokens, then <eos>. One pass over the prefix fills a per-layer K/V
cache; each further token costs one backbone step over that cache (keys after RoPE, positions
continuing after the prefix's valid tokens, causal among the decoded tokens, as the FAST target
rows see the sequence in training). Greedy: at each step the argmax over the action-token range
and <eos> (the only ids a FAST target holds), up to `max_new_tokens` (default: the model's
`max_target_tokens`). The action tokenizer turns the ids into a normalised chunk [H, n_actions],
de-normalised with the folder's statistics. A sequence that does not decode (no <eos> within the
budget, or not exactly H·n_actions coefficients) raises `FastDecodeError` naming why: the policy
node then holds the robot and sends no chunk. Deterministic (no noise): `seed` is ignored.

`RelaxedFastTokenPolicy` (``policy_class:=ki_vla_ros.runtime.fast_policy:RelaxedFastTokenPolicy``)
decodes as LeRobot's π0-FAST and openpi do: a sequence of the wrong length is cut or padded with
zero coefficients on the right, i.e. at the highest frequencies (`FastTokenizer.decode`, relaxed);
it still holds the robot without <eos>, on unknown ids and below one frequency row.
`policy.last_fill` is how many coefficients the last chunk lacked (> 0, padded) or had too many
(< 0, cut); 0 for an exact sequence.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.model import KIVLA
from ki_vla_ros.model.kivla import token_positions
from ki_vla_ros.model.masks import PAD, PREFIX, attention_mask
from ki_vla_ros.model.recipes import RECIPES
from ki_vla_ros.runtime.backends import BackendError
from ki_vla_ros.runtime.model_dir import ModelBundle, ModelDirError, load_model_dir
from ki_vla_ros.runtime.policy import Policy
from ki_vla_ros.runtime.types import Observation, PolicyOutput
from ki_vla_ros.tokenize.fast import FastDecodeError


@torch.no_grad()
def greedy_action_ids(model: KIVLA, images, image_mask, tokens, token_mask, state, eos_id: int,
                      max_new_tokens: int) -> tuple[list[int], bool]:
    """Greedy FAST decoding for one observation (batch of 1, the backends' inputs as tensors).
    -> (model ids of the action tokens, without <eos>; whether <eos> came within the budget)."""
    c = model.config
    emb, kinds = model.embed_prefix(images, image_mask, tokens, torch.where(token_mask, PREFIX, PAD), state)
    h, cache = model.transformer.backbone_decode(emb, token_positions(kinds), attention_mask(kinds))
    seen = kinds == PREFIX  # [1, Lp]: what a target token attends to in the prefix (not padding)
    last = int(torch.nonzero(seen[0]).max())  # the last prefix token's logits predict the first target
    pos = int(seen.sum())  # targets continue the RoPE positions after the valid prefix tokens
    allowed_ids = torch.cat([torch.arange(c.fast_token_base, c.vocab_size), torch.tensor([eos_id])])
    logits = model.lm_head(h[:, last])  # [1, vocab]
    ids: list[int] = []
    for n in range(max_new_tokens):
        nxt = int(allowed_ids[logits[0, allowed_ids].argmax()])
        if nxt == eos_id:
            return ids, True
        ids.append(nxt)
        x = model.embed_tokens(torch.tensor([[nxt]])) * math.sqrt(c.width)  # [1, 1, W]
        allowed = torch.cat([seen, torch.ones(1, n + 1, dtype=torch.bool)], 1)[:, None]  # [1, 1, Lp + n + 1]
        h, cache = model.transformer.backbone_decode(x, torch.tensor([[pos + n]]), allowed, cache)
        logits = model.lm_head(h[:, 0])
    return ids, False


class FastTokenPolicy(Policy):
    """`Policy` whose chunk comes from FAST tokens decoded by the backbone (see the module doc)."""

    relaxed = False  # exactly H·n_actions coefficients, or FastDecodeError

    def __init__(self, bundle: ModelBundle, max_new_tokens: int = 0):
        super().__init__(bundle, backend=None, num_steps=0)
        recipe = RECIPES.get(bundle.manifest.recipe)
        if recipe is not None and not recipe.use_fast:
            fast = ", ".join(sorted(r for r, x in RECIPES.items() if x.use_fast))
            raise ModelDirError(f"{bundle.path}: recipe '{recipe.name}' trains no action tokens; FAST decoding "
                                f"needs a recipe with FAST targets ({fast})")
        self.model = bundle.model.eval()
        self.action_tokenizer = bundle.action_tokenizer
        self.eos_id = bundle.text_tokenizer.eos_id
        self.max_new_tokens = max_new_tokens or self.config.max_target_tokens
        self.last_num_tokens = 0
        self.last_fill = 0

    @classmethod
    def load(cls, model_dir: str | Path, backend: str = "torch", num_steps: int | None = None,
             threads: int | None = None, max_new_tokens: int = 0, **_) -> FastTokenPolicy:
        """`num_steps` (flow steps) does not apply; `threads` > 0 sets torch's intra-op threads."""
        if backend != "torch":
            raise BackendError(f"FAST-token decoding runs on the torch backend, not {backend!r}")
        if threads:
            torch.set_num_threads(threads)
        return cls(load_model_dir(model_dir, device="cpu"), max_new_tokens)

    @property
    def max_action_prefix(self) -> int:
        return 0  # decoding does not continue a running chunk

    def chunk_from_ids(self, model_ids: list[int], state: np.ndarray) -> np.ndarray:
        """Decoded model ids (without <eos>) -> actions [H, n_actions] in robot units (`state`: the
        observation's, for delta actions); FastDecodeError when they are not one chunk's encoding."""
        n = len(self.layout.action_names)
        tokens = self.prompt.action_tokens_from_ids(model_ids)
        try:
            chunk = self.action_tokenizer.decode(tokens, self.action_horizon, n, relaxed=self.relaxed)
        except FastDecodeError as exc:
            raise FastDecodeError(f"FAST decoding failed: {exc}") from None
        self.last_fill = self.action_horizon * n - self.action_tokenizer.count(tokens) if self.relaxed else 0
        return self.actions_to_robot(chunk, state)

    def infer(self, obs: Observation, seed: int | None = None, noise=None, action_prefix=None) -> PolicyOutput:
        t0 = time.perf_counter()
        inputs = [torch.as_tensor(a) for a in self.model_inputs(obs)]
        t1 = time.perf_counter()
        ids, ended = greedy_action_ids(self.model, *inputs, self.eos_id, self.max_new_tokens)
        t2 = time.perf_counter()
        self.last_num_tokens = len(ids)
        if not ended:
            raise FastDecodeError(f"FAST decoding failed: no end of sequence within {self.max_new_tokens} "
                                  f"action tokens")
        actions = self.chunk_from_ids(ids, obs.state)
        if not np.isfinite(actions).all():
            raise FloatingPointError("FAST decoding produced NaN or inf actions; refusing to return them")
        t3 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "decode": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0}
        return PolicyOutput(actions, {k: v * 1e3 for k, v in timings.items()})


class RelaxedFastTokenPolicy(FastTokenPolicy):
    """`FastTokenPolicy` with the reference implementations' relaxed decoding (module doc)."""

    relaxed = True


__all__ = ["FastTokenPolicy", "RelaxedFastTokenPolicy", "FastDecodeError", "greedy_action_ids"]
