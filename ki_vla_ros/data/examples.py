"""Raw samples -> model examples (the `Batch` format of `model/batch.py`), via the prompt builder.

Robot sample: images into the model's camera slots by name (a camera the slot list lacks is
dropped, a slot the sample lacks is an all −1 image with its mask off); state and action chunk
normalised with that dataset's quantile statistics (no clipping) and zero-padded to the model's
`state_dim` / `action_dim` (`action_dim_mask` marks the real dims — cross-embodiment training);
tokens = ``PromptBuilder.build(instruction, state, action_tokens)`` with the recipe's discrete
action targets (FAST or naive) when the recipe uses them.

VLM sample: its images fill the first slots, ``build(prompt, None, answer=answer)``, no actions
(`action_mask` False).

Every example also carries the inference prefix (`prefix_tokens`, `prefix_mask`, padded to
`max_prefix_tokens`) so the evaluation can sample actions exactly as the runtime does.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.normalize import NormStats
from ki_vla_ros.tokenize.prompt import PromptBuilder


def images_to_slots(images: np.ndarray, image_mask: np.ndarray, names: list[str], slots: list[str]):
    """uint8 [V, S, S, 3] in the order of `names` -> float32 [len(slots), 3, S, S] in [-1, 1] and mask."""
    s = images.shape[1]
    out = np.full((len(slots), 3, s, s), -1.0, np.float32)
    mask = np.zeros(len(slots), bool)
    for i, name in enumerate(names):
        if name in slots and image_mask[i]:
            j = slots.index(name)
            out[j] = images[i].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
            mask[j] = True
    return out, mask


class ExampleBuilder:
    def __init__(self, config: ModelConfig, prompt: PromptBuilder, camera_slots: list[str],
                 norm_stats: dict[str, NormStats], action_tokenizer=None):
        self.cfg, self.prompt, self.slots = config, prompt, list(camera_slots)
        self.norm, self.action_tok = norm_stats, action_tokenizer
        self.counts = Counter()  # e.g. targets dropped because they were too long

    def _prefix(self, text: str, state) -> dict:
        tokens, mask = self.prompt.inference_prefix(text, state)
        return {"prefix_tokens": tokens, "prefix_mask": mask}

    def robot(self, raw: dict, dataset: str) -> dict:
        c, stats = self.cfg, self.norm[dataset]
        pixels, mask = images_to_slots(raw["images"], raw["image_mask"], raw["camera_names"], self.slots)
        s = stats.state.normalize(raw["state"])
        a = stats.actions.normalize(raw["chunk"])  # [H, Da]
        if len(s) > c.state_dim or a.shape[1] > c.action_dim:
            raise ValueError(f"{dataset}: state/action dims {len(s)}/{a.shape[1]} exceed the model's "
                             f"state_dim/action_dim {c.state_dim}/{c.action_dim}")
        state = np.zeros(c.state_dim, np.float32)
        state[: len(s)] = s
        actions = np.zeros((c.action_horizon, c.action_dim), np.float32)
        actions[:, : a.shape[1]] = a
        dim_mask = np.arange(c.action_dim) < a.shape[1]
        action_tokens = None
        if self.action_tok is not None:
            action_tokens = self.action_tok.encode(a)
            if len(action_tokens) + 8 > c.max_target_tokens or max(action_tokens, default=0) >= c.num_fast_tokens:
                self.counts["action tokens too long (flow target only)"] += 1
                action_tokens = None
        try:
            tok = self.prompt.build(raw["instruction"], s, action_tokens=action_tokens)
        except ValueError:
            self.counts["action tokens too long (flow target only)"] += 1
            tok = self.prompt.build(raw["instruction"], s)
        return {**tok, **self._prefix(raw["instruction"], s), "images": pixels, "image_mask": mask,
                "state": state, "actions": actions, "action_mask": np.bool_(True), "action_dim_mask": dim_mask}

    def vlm(self, images: list[np.ndarray], prompt: str, answer: str) -> dict:
        c = self.cfg
        v, s = len(self.slots), c.image_size
        pixels = np.full((v, 3, s, s), -1.0, np.float32)
        mask = np.zeros(v, bool)
        for i, img in enumerate(images[:v]):
            pixels[i] = img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
            mask[i] = True
        try:
            tok = self.prompt.build(prompt, None, answer=answer)
        except ValueError:
            self.counts["answers too long (truncated)"] += 1
            words = answer.split()
            while words:
                words = words[:-1]
                try:
                    tok = self.prompt.build(prompt, None, answer=" ".join(words))
                    break
                except ValueError:
                    continue
        return {**tok, **self._prefix(prompt, None), "images": pixels, "image_mask": mask,
                "state": np.zeros(c.state_dim, np.float32),
                "actions": np.zeros((c.action_horizon, c.action_dim), np.float32),
                "action_mask": np.bool_(False), "action_dim_mask": np.zeros(c.action_dim, bool)}
