"""The knowledge-insulated VLA model: config, masks, model, training recipes."""

from ki_vla_ros.model.batch import Batch
from ki_vla_ros.model.config import PRESETS, ModelConfig
from ki_vla_ros.model.kivla import KIVLA
from ki_vla_ros.model.masks import ACTION, FAST, PAD, PREFIX, TEXT, attention_mask
from ki_vla_ros.model.recipes import RECIPES, Recipe

__all__ = [
    "ACTION",
    "Batch",
    "FAST",
    "KIVLA",
    "ModelConfig",
    "PAD",
    "PREFIX",
    "PRESETS",
    "RECIPES",
    "Recipe",
    "TEXT",
    "attention_mask",
]
