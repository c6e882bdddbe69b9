"""`StudyConfig`: what `ki-vla study` reads (config/study/*.yaml, loaded with `configio.load_config`).

Relative paths are relative to the working directory. Every run of the study starts from the one
vision-language base `base.model_dir`, whose size is `model` (preset + overrides); the study makes
that base first when the folder does not exist and `base.train_config` (a `vlm_pretrain` config)
is given. Robot training reads `train_config` (datasets, optimiser, batch size, EMA, ...) with
`train_overrides` merged over it; the study sets recipe, seed, steps, run folder, model and the
checkpoint schedule itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from ki_vla_ros.model.config import PRESETS, ModelConfig
from ki_vla_ros.model.recipes import RECIPES

STUDY_RECIPES = ("ki", "pi0", "joint", "pi0_fast", "frozen_backbone", "ki_no_vlm", "joint_no_vlm")
PICK_TASKS = ("pick_red_left", "pick_red_right", "pick_blue_left", "pick_blue_right")
# TrainConfig keys the study sets for every run (recipe, seed, steps, run folder, start weights,
# and the checkpoints it evaluates)
STUDY_KEYS = ("run_dir", "recipe", "seed", "steps", "model", "eval_every", "checkpoint_every", "keep_checkpoints")


@dataclass
class ModelSize:
    preset: str = "small"
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields (width, depth, ...)

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset: unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        self.config()

    def config(self) -> ModelConfig:
        try:
            return ModelConfig.preset(self.preset, **self.overrides)
        except TypeError as exc:
            raise ValueError(f"overrides: not ModelConfig fields ({exc})") from None


@dataclass
class BaseSection:
    model_dir: str  # the pretrained vision-language base every run starts from (model.init)
    train_config: str = ""  # a vlm_pretrain config that makes model_dir when it is missing ('': it must exist)
    steps: int = 0  # steps of that base run (0: its config's)

    def validate(self) -> None:
        if not self.model_dir:
            raise ValueError("model_dir: must not be empty")
        if self.steps < 0:
            raise ValueError(f"steps: must be >= 0, got {self.steps}")


@dataclass
class ClosedLoopSection:
    episodes: int = 1  # `ki-vla eval` episodes per task, per phrasing set and policy (0: no closed loop)
    tasks: list[str] = field(default_factory=lambda: list(PICK_TASKS))
    first_seed: int = 900000  # scene seeds first_seed .. first_seed + episodes - 1 (not in the training data)
    heldout_instructions: str = "config/eval/heldout_phrasings.json"  # '': canonical instructions only
    fast_policy: bool = True  # also FAST-token decoding as the policy, for recipes that train FAST tokens
    # (exact decoding at every evaluated step; the reference implementations' relaxed decoding at the last)
    duration: float = 0.0  # sim seconds per episode (0: ki-vla eval's default per task kind)
    real_time_factor: float = 1.0  # the sim's speed bound (x real time)
    threads: int = 1  # inference threads of the policy node (the sim has the other core)

    def validate(self) -> None:
        from ki_vla_ros.sim.tasks import TASK_NAMES

        if self.episodes < 0:
            raise ValueError(f"episodes: must be >= 0, got {self.episodes}")
        bad = [t for t in self.tasks if t not in TASK_NAMES]
        if bad or not self.tasks:
            raise ValueError(f"tasks: unknown tasks {bad}; choose from {list(TASK_NAMES)}" if bad
                             else "tasks: at least one task")
        if self.duration < 0 or self.real_time_factor < 0 or self.threads < 0:
            raise ValueError("duration: duration, real_time_factor and threads must be >= 0")


@dataclass
class VqaSection:
    data: str = ""  # the base's held-out VQA JSONL ('': no VQA retention measure)
    train_data: str = ""  # the base's training VQA JSONL, for the majority-answer baseline
    limit: int = 0  # questions scored per measurement, drawn evenly with a fixed seed (0: all)
    batch_size: int = 32

    def validate(self) -> None:
        if self.limit < 0 or self.batch_size < 1:
            raise ValueError(f"limit: limit must be >= 0 and batch_size >= 1, got {self.limit}, {self.batch_size}")


@dataclass
class FixedLatencySection:
    """The closed loop in one process at a fixed latency (sim/fixed_latency.py), on the closed loop's
    tasks, scene seeds and held-out phrasings: many more episodes than real time affords, the same
    for every run whatever the machine's load."""

    episodes: int = 0  # per task and phrasing set (0: not measured)
    latency_steps: int = 4  # inference time in control steps (4 = 80 ms, as the node measures here)
    duration: float = 8.0  # sim seconds per episode

    def validate(self) -> None:
        if self.episodes < 0 or self.latency_steps < 0 or self.duration <= 0:
            raise ValueError(f"episodes: episodes and latency_steps must be >= 0 and duration > 0, got "
                             f"{self.episodes}, {self.latency_steps}, {self.duration}")


@dataclass
class LanguageSection:
    """The instruction-swap probe (sim/instruction_swap.py) on held-out episodes: does the flow expert's
    first chunk follow the words, or would the colour or arm swapped give the same chunk?"""

    data: list[str] = field(default_factory=list)  # sim dataset folders not trained on ([]: no probe)
    every: int = 1  # every k-th episode of each folder

    def validate(self) -> None:
        if self.every < 1:
            raise ValueError(f"every: must be >= 1, got {self.every}")


@dataclass
class StudyConfig:
    out: str  # the study folder: runs, results.jsonl, table.md, plots
    base: BaseSection
    train_config: str  # robot training config the runs share (config/train/*.yaml)
    model: ModelSize = field(default_factory=ModelSize)
    recipes: list[str] = field(default_factory=lambda: list(STUDY_RECIPES))
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # training seeds, the same for every recipe
    steps: int = 1000
    eval_steps: list[int] = field(default_factory=lambda: [250, 500, 1000])  # checkpoints evaluated; last = steps
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys over train_config
    closed_loop: ClosedLoopSection = field(default_factory=ClosedLoopSection)
    fixed_latency: FixedLatencySection = field(default_factory=FixedLatencySection)
    vqa: VqaSection = field(default_factory=VqaSection)
    language: LanguageSection = field(default_factory=LanguageSection)
    success_threshold: float = 0.5  # "steps to reach" this closed-loop success rate (canonical phrasings)
    threads: int = 0  # torch threads for training and VQA scoring (0: torch's default)

    def validate(self) -> None:
        bad = [r for r in self.recipes if r not in RECIPES or r == "vlm_pretrain"]
        if bad or not self.recipes or len(set(self.recipes)) != len(self.recipes):
            raise ValueError(f"recipes: unknown recipes {bad}; choose from {list(STUDY_RECIPES)}" if bad
                             else f"recipes: a non-empty list without repeats, got {self.recipes}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: a non-empty list without repeats, got {self.seeds}")
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        s = self.eval_steps
        if not s or any(x < 1 for x in s) or any(b <= a for a, b in zip(s, s[1:])) or s[-1] != self.steps:
            raise ValueError(f"eval_steps: increasing positive steps ending at steps ({self.steps}), got {s}")
        clash = sorted(set(self.train_overrides) & set(STUDY_KEYS))
        if clash:
            raise ValueError(f"train_overrides: {clash[0]!r} is set by the study (top-level recipes, seeds, "
                             f"steps, eval_steps, model, out)")
        if not 0 < self.success_threshold <= 1:
            raise ValueError(f"success_threshold: expected 0 < x <= 1, got {self.success_threshold}")

    @property
    def checkpoint_every(self) -> int:
        """Every evaluated step is a checkpoint: their greatest common divisor."""
        return reduce(math.gcd, self.eval_steps)
