"""`ki-vla train` in-process on tiny synthetic data: files, formats, metrics, export, config errors."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ki_vla_ros.configio import ConfigError, from_dict, load_config
from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset
from ki_vla_ros.train.checkpoint import latest_checkpoint, optimizer_from_flat, optimizer_to_flat
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.trainer import lr_at, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    cfg = from_dict(TrainConfig, tiny_train_config(data, run_dir, ema_decay=0.9))
    torch.manual_seed(123)
    init = None
    summary = train(cfg, log=lambda *a: None)
    return run_dir, cfg, summary, init


def test_run_outputs(run):
    run_dir, cfg, summary, _ = run
    assert summary["steps"] == 6
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_000003", "step_000006"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000006"
    ck = latest_checkpoint(run_dir)
    names = {p.name for p in ck.iterdir()}
    assert {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json", "trainer.json",
            "rng_rank0.safetensors", "rng_rank0.json", "assets"} <= names
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin")]
    trainer = json.loads((ck / "trainer.json").read_text())
    assert trainer["step"] == 6 and trainer["world_size"] == 1
    opt = load_file(str(ck / "optimizer.safetensors"))
    assert any(k.endswith(".exp_avg") for k in opt)
    rows = (run_dir / "eval.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,val_loss") and [r.split(",")[0] for r in rows[1:]] == ["3", "6"]
    ev = summary["final_eval"]
    assert np.isfinite(ev["action_mse"]) and 0 <= ev["fast_token_acc"] <= 1 and 0 <= ev["vlm_token_acc"] <= 1
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert len((run_dir / "train_log.csv").read_text().strip().splitlines()) == 4  # header + steps 2, 4, 6
    report = json.loads((run_dir / "assets" / "data_report.json").read_text())
    assert report["sim"]["train_episodes"] == 3 and report["sim"]["val_episodes"] == 1


def test_training_changes_weights_and_ema_differs(run):
    run_dir, _, _, _ = run
    ck = latest_checkpoint(run_dir)
    first = load_file(str(run_dir / "checkpoints" / "step_000003" / "model.safetensors"))
    last = load_file(str(ck / "model.safetensors"))
    ema = load_file(str(ck / "ema.safetensors"))
    k = "transformer.backbone.0.q_proj.weight"
    assert not torch.equal(first[k], last[k])
    assert not torch.equal(ema[k], last[k])


def test_export_checkpoint_to_model_folder(run, tmp_path):
    from ki_vla_ros.export.cli import export_main
    from ki_vla_ros.runtime.model_dir import load_model_dir

    run_dir, _, _, _ = run
    out = tmp_path / "model"
    assert export_main(["--checkpoint", str(run_dir), "--out", str(out), "--no-onnx"]) == 0
    bundle = load_model_dir(out)
    ema = load_file(str(latest_checkpoint(run_dir) / "ema.safetensors"))
    k = "transformer.backbone.0.q_proj.weight"
    assert torch.equal(bundle.model.state_dict()[k], ema[k])  # EMA weights by default
    assert bundle.layout.camera_names == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert len(bundle.layout.action_names) == 14 and bundle.config.action_dim == 16
    assert bundle.manifest.recipe == "ki"
    from ki_vla_ros.runtime import Policy
    from ki_vla_ros.runtime.types import Observation

    policy = Policy.load(out)
    obs = Observation(images={"cam_high": np.zeros((32, 32, 3), np.uint8)}, state=np.zeros(14),
                      instruction="pick up the red cube")
    assert policy.infer(obs, seed=0).actions.shape == (10, 14)


def test_no_overwrite_without_resume(run):
    _, cfg, _, _ = run
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, log=lambda *a: None)


def test_optimizer_flatten_roundtrip():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.sum().backward()
    opt.step()
    t, meta = optimizer_to_flat(opt.state_dict())
    back = optimizer_from_flat(t, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    opt2.load_state_dict(back)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert opt2.param_groups[0]["lr"] == 0.1


def test_lr_schedule():
    cfg = from_dict(TrainConfig, {"run_dir": "x", "steps": 100, "datasets": [
        {"name": "a", "type": "rosbag", "path": "p", "embodiment": "aloha_bimanual"}],
        "optim": {"lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1}})
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)


def test_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "x", "recipe": "nope", "datasets": [
        {"name": "a", "type": "rosbag", "path": "p", "embodiment": "aloha_bimanual"}]}))
    with pytest.raises(ConfigError, match=r"bad.yaml.*recipe"):
        load_config(TrainConfig, path)
    path.write_text(yaml.safe_dump({"run_dir": "x", "datasets": [{"name": "a", "type": "rosbag", "path": "p",
                                                                  "embodiment": "e", "wieght": 2}]}))
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.wieght"):
        load_config(TrainConfig, path)


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "config/train"
    cfg = load_config(TrainConfig, root / "aloha_sim_ki.yaml")
    assert cfg.recipe == "ki" and cfg.model.preset == "small"
    for path in sorted(root.glob("*.yaml")):  # every shipped config validates (keys, recipe, paths it reads)
        load_config(TrainConfig, path)


def test_ema_warm_up_forgets_the_initialisation():
    from ki_vla_ros.train.trainer import ema_decay_at

    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 100_000) == 0.999
    # a parameter that jumps from 0 to 1 at the first step: after 300 steps the warmed-up EMA is
    # within 3 % of 1, where a plain 0.999 EMA would still be at 0.26
    ema = 0.0
    for step in range(300):
        d = ema_decay_at(0.999, step)
        ema = d * ema + (1 - d) * 1.0
    assert ema > 0.97


def test_init_from_a_folder_of_other_sizes_is_one_line(tmp_path):
    from ki_vla_ros.embodiment import load_embodiment
    from ki_vla_ros.model import KIVLA, ModelConfig
    from ki_vla_ros.runtime.init_model import init_model_dir
    from ki_vla_ros.runtime.model_dir import Layout
    from ki_vla_ros.train.trainer import init_weights

    emb = load_embodiment("aloha_bimanual")
    folder = init_model_dir(tmp_path / "m", Layout(emb.camera_names, emb.state_names, emb.action_names), "tiny")
    model = KIVLA(ModelConfig.preset("tiny", action_dim=24))
    with pytest.raises(ValueError) as info:
        init_weights(model, str(folder), "auto", log=lambda *a: None)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"model.init: {folder} has other sizes")
    assert "action_" in text and " vs " in text and "model.yaml" in text


def test_fine_tune_keeps_the_init_folders_normalisation_and_action_tokenizer(run, data, tmp_path):
    """norm_stats: init and tokenizers.action_tokenizer_path take the robot model's files as they are,
    where fitting them on this data (another FAST scale; statistics edited in the folder) would differ."""
    from ki_vla_ros.normalize import NormStats
    from ki_vla_ros.train.to_model_dir import checkpoint_to_model_dir

    run_dir, _, _, _ = run
    folder = checkpoint_to_model_dir(run_dir, tmp_path / "model")
    stats = NormStats.load(folder / "norm_stats.json")
    stats.actions.q99 = stats.actions.q99 + 0.5  # not what the data would give
    stats.save(folder / "norm_stats.json")
    fields = tiny_train_config(data, tmp_path / "ft", steps=2, eval_every=2, checkpoint_every=2,
                               model={"preset": "tiny", "overrides": {"max_target_tokens": 96}, "init": str(folder)},
                               tokenizers={"fast_vocab_size": 150, "fast_scale": 5.0, "fit_chunks": 200,
                                           "action_tokenizer_path": str(folder / "action_tokenizer.json")})
    fields["datasets"][0]["norm_stats"] = "init"
    summary = train(from_dict(TrainConfig, fields), log=lambda *a: None)
    assert summary["steps"] == 2
    assets = tmp_path / "ft" / "assets"
    assert (assets / "action_tokenizer.json").read_bytes() == (folder / "action_tokenizer.json").read_bytes()
    got = NormStats.load(assets / "norm_stats" / "sim.json")
    np.testing.assert_array_equal(got.actions.q99, stats.actions.q99)
    np.testing.assert_array_equal(got.state.q01, stats.state.q01)
    # statistics of absolute actions are not used for relative ones
    fields = tiny_train_config(data, tmp_path / "ft_delta", model={"preset": "tiny", "init": str(folder)})
    fields["datasets"][0].update(norm_stats="init", delta_actions=["left_waist"])
    with pytest.raises(ValueError, match=r"datasets 'sim': norm_stats 'init' needs the delta_actions of .* \(none\), "
                                         r"the dataset has \['left_waist'\]"):
        train(from_dict(TrainConfig, fields), log=lambda *a: None)
    # without the options the same run fits its own
    fresh = tiny_train_config(data, tmp_path / "fresh", steps=1, eval_every=1, checkpoint_every=1,
                              tokenizers={"fast_vocab_size": 150, "fast_scale": 5.0, "fit_chunks": 200})
    train(from_dict(TrainConfig, fresh), log=lambda *a: None)
    assert (tmp_path / "fresh" / "assets" / "action_tokenizer.json").read_bytes() != \
        (folder / "action_tokenizer.json").read_bytes()
    assert not np.array_equal(NormStats.load(tmp_path / "fresh" / "assets" / "norm_stats" / "sim.json").actions.q99,
                              stats.actions.q99)


def test_fine_tune_options_name_the_bad_key(data, tmp_path):
    from ki_vla_ros.tokenize.naive import NaiveTokenizer

    fields = tiny_train_config(data, tmp_path / "r")
    fields["datasets"][0]["norm_stats"] = "init"
    with pytest.raises((ValueError, ConfigError), match=r"datasets\[0\]\.norm_stats'?: 'init' reads model.init"):
        from_dict(TrainConfig, fields)
    naive = tmp_path / "naive.json"
    NaiveTokenizer(bins=32).save(naive)
    fields = tiny_train_config(data, tmp_path / "r2", tokenizers={"action_tokenizer_path": str(naive)})
    with pytest.raises(ValueError, match=r"tokenizers.action_tokenizer_path: .* is a NaiveTokenizer; recipe 'ki'"):
        train(from_dict(TrainConfig, fields), log=lambda *a: None)
    fields = tiny_train_config(data, tmp_path / "r3", tokenizers={"action_tokenizer_path": str(tmp_path / "no.json")})
    with pytest.raises((ValueError, ConfigError), match=r"tokenizers.action_tokenizer_path.: no such file"):
        from_dict(TrainConfig, fields)


def test_lr_scales_freeze_or_slow_the_tower_and_the_backbone(data, tmp_path):
    """optim.vision_lr_scale 0: the tower's weights stay those of the start while the rest trains;
    backbone_lr_scale 0: the same for the backbone group (embeddings, decoder, lm_head) while the
    projector and the expert train; 0.5 / 0.1: those groups run at that fraction of the learning
    rate; outside [0, 1] the key is named."""
    from ki_vla_ros.train.checkpoint import latest_checkpoint

    def first_and_last(run):
        return (load_file(str(tmp_path / run / "checkpoints" / "step_000002" / "model.safetensors")),
                load_file(str(latest_checkpoint(tmp_path / run) / "model.safetensors")))

    fields = tiny_train_config(data, tmp_path / "frozen", steps=4, eval_every=4, checkpoint_every=2,
                               optim={"lr": 1e-3, "warmup_steps": 2, "vision_lr_scale": 0.0})
    train(from_dict(TrainConfig, fields), log=lambda *a: None)
    first, last = first_and_last("frozen")
    vision = [k for k in last if k.startswith("vision.")]
    assert vision and all(torch.equal(first[k], last[k]) for k in vision)
    assert not torch.equal(first["image_proj.weight"], last["image_proj.weight"])  # the projector trains
    assert not torch.equal(first["transformer.backbone.0.q_proj.weight"], last["transformer.backbone.0.q_proj.weight"])

    fields = tiny_train_config(data, tmp_path / "bb", recipe="pi0", steps=4, eval_every=4, checkpoint_every=2,
                               optim={"lr": 1e-3, "warmup_steps": 2, "backbone_lr_scale": 0.0})
    train(from_dict(TrainConfig, fields), log=lambda *a: None)
    first, last = first_and_last("bb")
    backbone = [k for k in last if k.startswith(("transformer.backbone.", "embed"))]
    assert backbone and all(torch.equal(first[k], last[k]) for k in backbone)
    for k in ("image_proj.weight", "vision.patch_embed.weight", "transformer.expert.0.q_proj.weight"):
        assert not torch.equal(first[k], last[k]), k  # pi0: the expert's gradient reaches the tower

    fields = tiny_train_config(data, tmp_path / "half", steps=2, eval_every=2, checkpoint_every=2,
                               optim={"lr": 1e-3, "warmup_steps": 2, "vision_lr_scale": 0.5,
                                      "backbone_lr_scale": 0.1})
    train(from_dict(TrainConfig, fields), log=lambda *a: None)
    groups = json.loads((latest_checkpoint(tmp_path / "half") / "optimizer.json").read_text())["param_groups"]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    lr = {g["lr_scale"]: g["lr"] for g in groups}
    assert lr[0.5] == pytest.approx(0.5 * lr[1.0]) and lr[0.1] == pytest.approx(0.1 * lr[1.0]) and lr[1.0] > 0
    for key in ("vision_lr_scale", "backbone_lr_scale"):
        with pytest.raises(ConfigError, match=rf"key .optim.{key}.: expected 0 <= x <= 1, got 2"):
            from_dict(TrainConfig, {**fields, "optim": {key: 2}})
