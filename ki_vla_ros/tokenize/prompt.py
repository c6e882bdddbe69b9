"""The prompt builder: the ONE place that turns an example into the model's token arrays.

Layout of one token row (kinds from `ki_vla_ros.model.masks`)::

    PREFIX  <bos> "Task: {instruction}, State: {s};\\nAction: "   (bidirectional, no loss)
    TEXT    {answer} <eos>                                      (optional language target, loss)
    FAST    {action tokens} <eos>                               (optional; loss on all of them)

A robot example's prefix ends with "Action: " exactly as LeRobot's / openpi's π0.5 prompt does
("Task: …, State: …;\\nAction: "), at inference and in training alike, so the FAST target is only
the action tokens (the marker appears once). A VLM example (`state=None`) has no marker:
"Task: {prompt};\\n" then its answer.

State (normalised to [-1, 1]) per `config.state_mode`:
* ``text``       — 256 bins written as numbers: "State: 12 200 …;" (π0.5, §C "text state");
* ``tokens``     — one reserved id per dimension: state_token_base + bin (§C "special token state");
* ``continuous`` — not in the text ("Task: {instruction};\\nAction: "); the model projects `state`.
As in LeRobot's π0.5, the state is first zero-padded to the model's padded width `state_dim`
(LeRobot's `max_state_dim`, 32 for π0.5 checkpoints), so padding dims appear as bin 128. Bins
follow LeRobot's rule exactly (`discretize_state`): a value below -1 is bin -1 (written "-1" in
text mode), a value at or above 1 - 2/256 is bin 255; in ``tokens`` mode the bin is clipped to
[0, 255] so the id stays in the reserved range.
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
    """Normalised state [s] -> bin indices [s] in [-1, bins), LeRobot's π0.5 rule: the bins+1 edges
    from -1 to 1 without the last, `np.digitize - 1`. So x < -1 gives -1, x >= 1 - 2/bins gives
    bins - 1 (values above 1 included); nothing is clipped. The state is taken as float32, as
    LeRobot's tensors are, so a value next to an edge falls into the same bin."""
    edges = np.linspace(-1.0, 1.0, bins + 1)[:-1]
    return np.digitize(np.asarray(state, dtype=np.float32), edges) - 1


PROBE = "Task: pick up the red cube, State: -1 0 128 255;\nAction: "


class PromptBuilder:
    def __init__(self, text_tokenizer: TextTokenizer, config: ModelConfig):
        self.tok, self.cfg = text_tokenizer, config
        self._encode(PROBE)
        self._check([text_tokenizer.bos_id, text_tokenizer.eos_id], "<bos>/<eos>")

    def _check(self, ids: list[int], text: str) -> list[int]:
        """Text ids must lie below the ranges reserved for state bins and action tokens. The check
        is on the ids a prompt produces, not on the tokenizer's size: a published tokenizer (Gemma's
        257152 pieces for π0.5) spans the whole vocabulary, but prompts use only its text ids."""
        bad = [i for i in ids if not 0 <= i < self.cfg.text_vocab_limit]
        if bad:
            raise ValueError(
                f"the text tokenizer gives id {bad[0]} for {text!r}, but the model reserves ids from "
                f"{self.cfg.text_vocab_limit} for state bins and action tokens (vocab_size {self.cfg.vocab_size})"
            )
        return ids

    def _encode(self, text: str) -> list[int]:
        return self._check(self.tok.encode(text), text)

    # ---- pieces ---------------------------------------------------------------------------------
    def prefix(self, instruction: str, state: np.ndarray | None = None) -> list[int]:
        """<bos> Task: …, State: …;\\nAction: as model ids (length ≤ max_prefix_tokens); without a
        state (VLM data) <bos> Task: …;\\n."""
        c = self.cfg
        instruction = instruction.strip().replace("_", " ").replace("\n", " ")
        head = [self.tok.bos_id, *self._encode(f"Task: {instruction}")]
        if state is None:
            tail = self._encode(";\n")
        elif c.state_mode == "continuous":
            tail = self._encode(";\nAction: ")
        elif c.state_mode == "text":
            bins = discretize_state(self._pad(state), c.state_bins)
            tail = self._encode(", State: " + " ".join(str(int(b)) for b in bins) + ";\nAction: ")
        else:  # tokens: the bin's reserved id (clipped so that -1 stays in the range)
            bins = discretize_state(self._pad(state), c.state_bins).clip(0, c.state_bins - 1)
            tail = [
                *self._encode(", State: "),
                *(c.state_token_base + bins).tolist(),
                *self._encode(";\nAction: "),
            ]
        room = c.max_prefix_tokens - len(tail)
        if room < 2:
            raise ValueError(
                f"state takes {len(tail)} tokens; max_prefix_tokens = {c.max_prefix_tokens} is too small"
            )
        return head[:room] + tail

    def _pad(self, state: np.ndarray) -> np.ndarray:
        """State [s] -> [max(s, state_dim)], zeros appended (LeRobot's `pad_vector(state, max_state_dim)`)."""
        s = np.asarray(state, np.float64).ravel()
        return np.concatenate([s, np.zeros(max(0, self.cfg.state_dim - len(s)))])

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
            ans = [*self._encode(answer), self.tok.eos_id]
            tokens += ans
            kinds += [TEXT] * len(ans)
            loss += [True] * len(ans)
        if action_tokens is not None:
            if state is None:
                raise ValueError("action tokens need a robot example (a state); the prompt's 'Action: ' "
                                 "marker ends a robot prefix")
            act = [*self.action_ids(action_tokens), self.tok.eos_id]
            tokens += act
            kinds += [FAST] * len(act)
            loss += [True] * len(act)
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
    Without `pad_to`, camera slots that no example fills (`image_mask` all False: e.g. the wrist
    slots in a batch of single-image VLM examples) are dropped from `images` / `image_mask`: their
    tokens are PAD, which nothing attends to and which take no RoPE position, so the result is the
    same, without running the vision tower and the backbone over them.
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
    if pad_to is None and "images" in batch and "image_mask" in batch:
        used = batch["image_mask"].any(0)
        if used.any() and not used.all():
            batch["images"], batch["image_mask"] = batch["images"][:, used], batch["image_mask"][:, used]
    return batch
