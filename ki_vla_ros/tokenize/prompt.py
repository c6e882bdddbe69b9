"""The prompt builder: the ONE place that turns an example into the model's token arrays.

Layout of one token row (kinds from `ki_vla_ros.model.masks`)::

    PREFIX  <bos> "Task: {instruction}, State: {s};\\n"     (bidirectional, no loss)
    TEXT    {answer} <eos>                                  (optional language target, loss)
    FAST    "Action: " {action tokens} <eos>                 (optional; loss on the action tokens and <eos>)

State (normalised to [-1, 1]) per `config.state_mode`:
* ``text``       — 256 bins written as numbers: "State: 12 200 …;" (π0.5, §C "text state");
* ``tokens``     — one reserved id per dimension: state_token_base + bin (§C "special token state");
* ``continuous`` — not in the text ("Task: {instruction};\\n"); the model projects `state` itself.
`state=None` (VLM data) omits the state. Action token k (FAST or naive, 0 ≤ k < num_fast_tokens)
becomes model id `config.fast_token_base + k` (the reserved range at the end of the vocabulary).

The prefix is truncated (instruction end) to `config.max_prefix_tokens`; targets longer than
`config.max_target_tokens` raise ValueError (a cut action sequence would be an undecodable target).
Both the data pipeline (`build` + `collate`) and the runtime (`prefix`) use this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.model.masks import FAST, PAD, PREFIX, TEXT
from ki_vla_ros.tokenize.text import TextTokenizer

TOKEN_KEYS = ("tokens", "token_kind", "loss_mask")


def discretize_state(state: np.ndarray, bins: int = 256) -> np.ndarray:
    """Normalised state [s] in [-1, 1] -> bin indices [s] in [0, bins) (values outside are clipped)."""
    edges = np.linspace(-1.0, 1.0, bins + 1)[:-1]
    return (np.digitize(np.asarray(state, dtype=np.float64), edges) - 1).clip(0, bins - 1)


class PromptBuilder:
    def __init__(self, text_tokenizer: TextTokenizer, config: ModelConfig):
        if text_tokenizer.vocab_size > config.text_vocab_limit:
            raise ValueError(
                f"text tokenizer has {text_tokenizer.vocab_size} ids but the model reserves ids from "
                f"{config.text_vocab_limit} for state bins and action tokens (vocab_size {config.vocab_size})"
            )
        self.tok, self.cfg = text_tokenizer, config

    # ---- pieces ---------------------------------------------------------------------------------
    def prefix(self, instruction: str, state: np.ndarray | None = None) -> list[int]:
        """<bos> Task: …, State: …;\\n as model ids (length ≤ max_prefix_tokens)."""
        c = self.cfg
        instruction = instruction.strip().replace("_", " ").replace("\n", " ")
        head = [self.tok.bos_id, *self.tok.encode(f"Task: {instruction}")]
        if state is None or c.state_mode == "continuous":
            tail = self.tok.encode(";\n")
        elif c.state_mode == "text":
            bins = discretize_state(state, c.state_bins)
            tail = self.tok.encode(", State: " + " ".join(str(int(b)) for b in bins) + ";\n")
        else:  # tokens
            bins = discretize_state(state, c.state_bins)
            tail = [
                *self.tok.encode(", State: "),
                *(c.state_token_base + bins).tolist(),
                *self.tok.encode(";\n"),
            ]
        room = c.max_prefix_tokens - len(tail)
        if room < 2:
            raise ValueError(
                f"state takes {len(tail)} tokens; max_prefix_tokens = {c.max_prefix_tokens} is too small"
            )
        return head[:room] + tail

    def action_ids(self, action_tokens: Sequence[int]) -> list[int]:
        """Action-tokenizer ids -> model ids in the reserved range."""
        c = self.cfg
        ids = np.asarray(list(action_tokens), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= c.num_fast_tokens):
            raise ValueError(
                f"action token ids must lie in [0, {c.num_fast_tokens}) (config.num_fast_tokens)"
            )
        return (ids + c.fast_token_base).tolist()

    def action_tokens_from_ids(self, model_ids: Sequence[int]) -> list[int]:
        """Model ids -> action-tokenizer ids (ids outside the reserved range give -1: undecodable)."""
        base = self.cfg.fast_token_base
        return [i - base if base <= i < self.cfg.vocab_size else -1 for i in model_ids]

    # ---- examples -------------------------------------------------------------------------------
    def build(
        self,
        instruction: str,
        state: np.ndarray | None = None,
        action_tokens: Sequence[int] | None = None,
        answer: str | None = None,
    ) -> dict[str, np.ndarray]:
        """One training example -> {"tokens" int64 [L], "token_kind" int64 [L], "loss_mask" bool [L]}."""
        tokens = self.prefix(instruction, state)
        kinds = [PREFIX] * len(tokens)
        loss = [False] * len(tokens)
        if answer is not None:
            ans = [*self.tok.encode(answer), self.tok.eos_id]
            tokens += ans
            kinds += [TEXT] * len(ans)
            loss += [True] * len(ans)
        if action_tokens is not None:
            marker = self.tok.encode("Action: ")
            act = [*self.action_ids(action_tokens), self.tok.eos_id]
            tokens += marker + act
            kinds += [FAST] * (len(marker) + len(act))
            loss += [False] * len(marker) + [True] * len(act)
        n_target = len(tokens) - kinds.count(PREFIX)
        if n_target > self.cfg.max_target_tokens:
            raise ValueError(
                f"{n_target} target tokens exceed max_target_tokens = {self.cfg.max_target_tokens}"
            )
        return {
            "tokens": np.asarray(tokens, np.int64),
            "token_kind": np.asarray(kinds, np.int64),
            "loss_mask": np.asarray(loss, bool),
        }

    def inference_prefix(
        self, instruction: str, state: np.ndarray | None = None, pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Runtime prefix: tokens int64 [Lt], token_mask bool [Lt] (Lt = pad_to or max_prefix_tokens)."""
        ids = self.prefix(instruction, state)
        n = pad_to or self.cfg.max_prefix_tokens
        tokens = np.zeros(n, np.int64)
        tokens[: len(ids)] = ids
        return tokens, np.arange(n) < len(ids)


def collate(examples: Sequence[dict], pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Examples (dicts of numpy arrays / tensors / scalars) -> a padded batch of tensors.

    The token keys (`tokens`, `token_kind`, `loss_mask`) are right-padded with PAD to the longest row
    (or `pad_to`, for fixed shapes); every other key is stacked (floating point as float32).
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    longest = max(len(e["tokens"]) for e in examples)
    n = longest if pad_to is None else pad_to
    if n < longest:
        raise ValueError(f"pad_to = {pad_to} is shorter than the longest token row ({longest})")
    batch = {
        "tokens": torch.zeros(len(examples), n, dtype=torch.long),
        "token_kind": torch.full((len(examples), n), PAD, dtype=torch.long),
        "loss_mask": torch.zeros(len(examples), n, dtype=torch.bool),
    }
    for i, e in enumerate(examples):
        for k in TOKEN_KEYS:
            v = torch.as_tensor(np.asarray(e[k]))
            batch[k][i, : len(v)] = v
    for k in examples[0]:
        if k not in TOKEN_KEYS:
            v = torch.stack([torch.as_tensor(np.asarray(e[k])) for e in examples])
            batch[k] = v.float() if v.is_floating_point() else v  # float64 numpy -> float32
    return batch
