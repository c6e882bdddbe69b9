"""Training with `rtc:` (simulated inference delays): the trainer hands the model per-example action
prefix lengths as configured, and the model folder records it, so the runtime knows the policy can
continue an action prefix."""

import pytest
import torch

from ki_vla_ros.configio import ConfigError, from_dict
from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset
from ki_vla_ros.model import KIVLA
from ki_vla_ros.runtime import Policy
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.trainer import train


def test_training_with_action_prefixes_is_recorded_in_the_model_folder(tmp_path, monkeypatch):
    from ki_vla_ros.export.cli import export_main

    data = write_tiny_dataset(tmp_path / "data")
    seen = []
    real_loss = KIVLA.compute_loss

    def recording_loss(self, batch, flow_samples=1):
        seen.append(batch.get("prefix_len"))
        return real_loss(self, batch, flow_samples)

    monkeypatch.setattr(KIVLA, "compute_loss", recording_loss)
    cfg = from_dict(TrainConfig, tiny_train_config(data, tmp_path / "run", steps=2, eval_every=0, checkpoint_every=2,
                                                   rtc={"max_delay_steps": 3, "probability": 1.0}))
    summary = train(cfg, log=lambda *a: None)
    assert summary["steps"] == 2
    assert all(x is None for x in seen[2:])  # the evaluation's val_loss: whole chunks, as before
    lengths = torch.cat(seen[:2])
    assert lengths.min() >= 1 and lengths.max() <= 3

    out = tmp_path / "model"
    assert export_main(["--checkpoint", str(tmp_path / "run"), "--out", str(out), "--no-onnx"]) == 0
    policy = Policy.load(out)
    assert policy.bundle.manifest.rtc.max_delay_steps == 3 and policy.max_action_prefix == 3


def test_rtc_off_by_default_and_checked_against_the_horizon(tmp_path):
    data = {"bags": tmp_path / "bags", "vlm": tmp_path / "vlm.jsonl"}
    cfg = from_dict(TrainConfig, tiny_train_config(data, tmp_path / "run"))
    assert not cfg.rtc.enabled
    with pytest.raises(ConfigError, match=r"key 'rtc.probability': expected 0 <= p <= 1"):
        from_dict(TrainConfig, tiny_train_config(data, tmp_path / "run", rtc={"max_delay_steps": 2, "probability": 2}),
                  where="train.yaml")
    long = from_dict(TrainConfig, tiny_train_config(write_tiny_dataset(tmp_path / "data"), tmp_path / "run",
                                                    rtc={"max_delay_steps": 10, "probability": 0.5}))
    with pytest.raises(ValueError, match="rtc.max_delay_steps: 10 must be below the action horizon 10"):
        train(long, log=lambda *a: None)
