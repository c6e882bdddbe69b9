"""`DatasetConfig`: one entry of a training mixture (the `datasets:` list of a train config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class DatasetConfig:
    name: str
    type: Literal["rosbag", "lerobot", "vlm"]
    path: str  # bag folder / folder of bags; LeRobot root; JSONL file or folder of JSONL files
    weight: float = 1.0  # mixture weight (probability ∝ weight)
    # rosbag
    embodiment: str = ""  # embodiment name or YAML path (topics, joints, control rate)
    action_source: Literal["commanded", "measured"] = "commanded"
    instruction: str = ""  # fallback instruction (rosbag: after topic and metadata.yaml)
    instruction_topic: str = "/instruction"
    segment_by: Literal["bag", "instruction"] = "bag"
    max_age_s: float = 0.0  # a message older than this at a grid step is stale (0: half a period)
    # lerobot
    cameras: dict[str, str] = field(default_factory=dict)  # feature key -> camera name
    state_key: str = "observation.state"
    action_key: str = "action"
    # normalisation statistics: "compute" (q01/q99 of the training episodes of every "compute" dataset
    # with this one's state/action names and relative joints, min_quantile_range applied), "dataset"
    # (lerobot: the q01/q99 in the dataset's meta/stats.json, as they are) or
    # "init" (the norm_stats.json of the model.init folder, as they are: fine-tuning a robot model
    # on more data of its robot keeps the normalisation its weights were trained with)
    norm_stats: Literal["compute", "dataset", "init"] = "compute"
    # all robot datasets
    on_error: Literal["raise", "skip"] = "raise"  # a broken episode (unreadable file, wrong length): stop, or
    # skip it and count it in assets/data_report.json
    max_episodes: int = 0  # 0: all
    # rosbag: read only these folders below `path`, in this order ([]: every bag below it), so one data
    # folder serves a stage that reads part of it (the bundled model's stage 1: the first two generators)
    folders: list[str] = field(default_factory=list)
    val_episodes: int = -1  # held-out episodes (-1: 10%, at least 1 when there are >= 2 episodes)
    # normalisation statistics computed from this data: a state/action dimension whose 1st..99th
    # percentile range is narrower than this (robot units: rad, m, gripper) is widened to it around
    # its midpoint, so an idle joint's noise does not normalise to ±10 (0: plain q01/q99)
    min_quantile_range: float = 0.02
    # action names learned as offsets from the state of the same name at the observation
    # (delta_actions.py; openpi's ALOHA rule: the arm joints, not the grippers); [] = absolute
    delta_actions: list[str] = field(default_factory=list)
    # training samples at the first `start_steps` steps of every episode appear `start_repeat` times
    # per epoch (1: once, like every other step): with the arms still at home only the images and the
    # words tell where to go, later the state and the arm's motion give the target away
    start_steps: int = 0
    start_repeat: int = 1
    # vlm
    val_fraction: float = 0.1  # held-out share of images

    def validate(self) -> None:
        if not self.name:
            raise ValueError("name: must not be empty")
        if self.weight < 0:
            raise ValueError(f"weight: must be >= 0, got {self.weight}")
        if self.type == "rosbag" and not self.embodiment:
            raise ValueError("embodiment: a rosbag dataset needs an embodiment (name or YAML path)")
        if self.norm_stats == "dataset" and self.type != "lerobot":
            raise ValueError(f"norm_stats: 'dataset' reads a LeRobot dataset's meta/stats.json; {self.type} "
                             f"datasets use 'compute'")
        if self.delta_actions and self.norm_stats == "dataset":
            raise ValueError("delta_actions: the dataset's meta/stats.json describes absolute actions; use "
                             "norm_stats: compute (statistics of the relative chunks)")
        if self.norm_stats == "init" and self.type == "vlm":
            raise ValueError("norm_stats: 'init' is for robot datasets; a vlm dataset has no actions")
        if self.delta_actions and self.type == "vlm":
            raise ValueError("delta_actions: only robot datasets have actions")
        if self.min_quantile_range < 0:
            raise ValueError(f"min_quantile_range: must be >= 0, got {self.min_quantile_range}")
        if self.start_steps < 0:
            raise ValueError(f"start_steps: must be >= 0, got {self.start_steps}")
        if self.start_repeat < 1:
            raise ValueError(f"start_repeat: must be >= 1 (1: no oversampling), got {self.start_repeat}")
        if self.start_repeat > 1 and (self.type == "vlm" or not self.start_steps):
            raise ValueError("start_repeat: oversamples the first start_steps steps of a robot dataset's episodes; "
                             + ("a vlm dataset has none" if self.type == "vlm" else "set start_steps > 0"))
        if self.folders and self.type != "rosbag":
            raise ValueError(f"folders: selects bag folders below path; a {self.type} dataset has none")
        for f in self.folders:
            if not f or Path(f).is_absolute() or ".." in Path(f).parts:
                raise ValueError(f"folders: {f!r} is not a folder below path (relative, no '..')")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction: expected 0 <= x < 1, got {self.val_fraction}")
