"""Named training recipes: the paper's variants (§5, §6) as switches on one model.

| recipe            | insulate | FAST CE | flow | VLM co-train | trains                 | action tokens |
|-------------------|----------|---------|------|--------------|------------------------|---------------|
| `ki`              | yes      | yes     | yes  | yes          | all                    | FAST          |
| `joint`           | no       | yes     | yes  | yes          | all                    | FAST          |
| `pi0`             | no       | no      | yes  | no           | all                    | —             |
| `pi0_fast`        | —        | yes     | no   | no           | vision + backbone      | FAST          |
| `frozen_backbone` | yes      | no      | yes  | no           | expert only            | —             |
| `naive_tokens`    | yes      | yes     | yes  | yes          | all                    | naive bins    |
| `ki_no_vlm`       | yes      | yes     | yes  | no           | all                    | FAST          |
| `joint_no_vlm`    | no       | yes     | yes  | no           | all                    | FAST          |
| `pi0_vlm`         | no       | no      | yes  | yes          | all                    | —             |
| `vlm_pretrain`    | —        | no      | no   | yes          | vision + backbone      | —             |

`vlm_cotrain` and `action_tokenizer` are read by the data pipeline (mix VLM examples in; which
tokenizer writes the discrete action targets); `use_fast=False` recipes need no discrete action
targets in the batch (any present are ignored by `loss`).

`vlm_pretrain` makes the vision-language base that robot training starts from (`model.init`; the
paper's PaliGemma stage in miniature): the loss is the text cross-entropy on VLM answers only, the
expert gets no gradient and is not trained. Its robot datasets only fix the layout and dims: give
them weight 0 (config/train/vlm_base.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from ki_vla_ros.model.config import ModelConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    insulate: bool
    use_fast: bool
    use_flow: bool
    vlm_cotrain: bool
    freeze_backbone: bool = False  # vision tower + backbone frozen; only the expert trains
    action_tokenizer: Literal["fast", "naive"] | None = "fast"
    alpha: float = 1.0

    def apply(self, cfg: ModelConfig) -> ModelConfig:
        """The model config with this recipe's objective switches."""
        return cfg.replace(
            insulate=self.insulate, use_fast=self.use_fast, use_flow=self.use_flow, alpha=self.alpha
        )

    def configure(self, model: nn.Module) -> list[nn.Parameter]:
        """Set the model's objective switches and `requires_grad`; return the parameters to train."""
        model.config = self.apply(model.config)
        groups = model.param_groups()
        train = {
            "vision": not self.freeze_backbone,
            "backbone": not self.freeze_backbone,
            "expert": self.use_flow,
        }
        params = []
        for group, named in groups.items():
            for _, p in named:
                p.requires_grad_(train[group])
                if train[group]:
                    params.append(p)
        return params


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("ki", insulate=True, use_fast=True, use_flow=True, vlm_cotrain=True),
        Recipe("joint", insulate=False, use_fast=True, use_flow=True, vlm_cotrain=True),
        Recipe(
            "pi0", insulate=False, use_fast=False, use_flow=True, vlm_cotrain=False, action_tokenizer=None
        ),
        Recipe("pi0_fast", insulate=True, use_fast=True, use_flow=False, vlm_cotrain=False),
        Recipe(
            "frozen_backbone",
            insulate=True,
            use_fast=False,
            use_flow=True,
            vlm_cotrain=False,
            freeze_backbone=True,
            action_tokenizer=None,
        ),
        Recipe(
            "naive_tokens",
            insulate=True,
            use_fast=True,
            use_flow=True,
            vlm_cotrain=True,
            action_tokenizer="naive",
        ),
        # the co-training ablations of the recipe comparison (§6: "joint-training w/o VLM data")
        Recipe("ki_no_vlm", insulate=True, use_fast=True, use_flow=True, vlm_cotrain=False),
        Recipe("joint_no_vlm", insulate=False, use_fast=True, use_flow=True, vlm_cotrain=False),
        Recipe("pi0_vlm", insulate=False, use_fast=False, use_flow=True, vlm_cotrain=True, action_tokenizer=None),
        # the vision-language base: text loss on VLM answers only, no expert, no actions
        Recipe("vlm_pretrain", insulate=True, use_fast=False, use_flow=False, vlm_cotrain=True, action_tokenizer=None),
    )
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[name]
