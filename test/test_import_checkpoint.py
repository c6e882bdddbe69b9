"""`ki-vla import` on small synthetic π0.5 checkpoints in LeRobot's and openpi's folder layouts."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train_import_pi05 import expected_value, synthetic_pi05

from ki_vla_ros.cli import main
from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.runtime.model_dir import load_model_dir
from ki_vla_ros.runtime.policy import Policy
from ki_vla_ros.runtime.types import Observation
from ki_vla_ros.tokenize.text import TextTokenizer
from ki_vla_ros.train.import_checkpoint import ImportCheckpointError, import_checkpoint
from ki_vla_ros.train.import_pi05 import load_pi05_into

HEADS = {"num_heads": 2, "num_kv_heads": 1, "head_dim": 32, "vision_heads": 2}  # the tiny preset's
CFG = ModelConfig.preset("tiny", vision_depth=2, max_prefix_tokens=48)
Q01S, Q99S = [0.0, -1.0, 0.5], [2.0, 1.0, 0.5]  # state: third joint constant (q01 == q99)
Q01A, Q99A = [-1.0, 0.0, 0.0, 10.0], [1.0, 4.0, 1.0, 20.0]


def _tokenizer(path):
    texts = ["Task: pick up the red cube, State: -1 0 1 2 128 200 255;\nAction: "] * 20
    TextTokenizer.train(texts, vocab_size=300).save(path)
    return path


def _stats(prefix_state, prefix_action):
    out = {}
    for key, q01, q99 in ((prefix_state, Q01S, Q99S), (prefix_action, Q01A, Q99A)):
        out[f"{key}.q01"], out[f"{key}.q99"] = torch.tensor(q01), torch.tensor(q99)
        out[f"{key}.mean"] = torch.tensor(q01) * 0 + 0.5  # LeRobot stores every statistic
    return out


def lerobot_checkpoint(root, sd):
    """A folder as LeRobot saves a π0.5 policy: config.json, model.safetensors, processor files."""
    root.mkdir(parents=True)
    save_file(sd, str(root / "model.safetensors"))
    feats = {"observation.images.base_0_rgb": {"type": "VISUAL", "shape": [3, 32, 32]},
             "observation.images.left_wrist_0_rgb": {"type": "VISUAL", "shape": [3, 32, 32]},
             "observation.state": {"type": "STATE", "shape": [3]}}
    (root / "config.json").write_text(json.dumps({
        "type": "pi05", "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m",
        "chunk_size": CFG.action_horizon, "n_action_steps": CFG.action_horizon, "max_state_dim": 8,
        "max_action_dim": 8, "num_inference_steps": 4, "min_period": 4e-3, "max_period": 4.0,
        "image_resolution": [32, 32], "tokenizer_max_length": 48, "input_features": feats, "empty_cameras": 1,
        "output_features": {"action": {"type": "ACTION", "shape": [4]}},
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"}}))
    pre = "policy_preprocessor_step_2_normalizer_processor.safetensors"
    post = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    save_file(_stats("observation.state", "action"), str(root / pre))
    save_file(_stats("observation.state", "action"), str(root / post))
    (root / "policy_preprocessor.json").write_text(json.dumps({"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "normalizer_processor", "config": {"eps": 1e-8}, "state_file": pre},
        {"registry_name": "pi05_prepare_state_tokenizer_processor_step", "config": {"max_state_dim": 8}}]}))
    (root / "policy_postprocessor.json").write_text(json.dumps({"name": "policy_postprocessor", "steps": [
        {"registry_name": "unnormalizer_processor", "config": {"eps": 1e-8}, "state_file": post},
        {"registry_name": "device_processor", "config": {"device": "cpu"}}]}))
    return root


@pytest.fixture(scope="module")
def lerobot(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("import")
    sd = synthetic_pi05(CFG)
    root = lerobot_checkpoint(tmp / "pretrained_model", sd)
    tok = _tokenizer(tmp / "tokenizer.json")
    out = import_checkpoint(root, tmp / "model", tokenizer=str(tok), log=lambda *a: None, **HEADS)
    return sd, root, out


def test_lerobot_folder_becomes_a_model_folder(lerobot):
    sd, root, out = lerobot
    bundle = load_model_dir(out)
    c = bundle.config
    # sizes from the tensor shapes and config.json
    for key in ("image_size", "patch_size", "vision_width", "vision_depth", "vision_mlp_dim", "width", "depth",
                "mlp_dim", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "expert_width", "expert_mlp_dim",
                "action_horizon", "action_dim"):
        assert getattr(c, key) == getattr(CFG, key), key
    assert (c.state_dim, c.max_prefix_tokens, c.state_mode, bundle.manifest.num_flow_steps) == (8, 48, "text", 4)
    # weights: every parameter from its source tensor
    for name, value in bundle.model.state_dict().items():
        assert torch.equal(value, expected_value(name, sd).float()), name
    # statistics from the processor files, layout from the VISUAL features
    np.testing.assert_array_equal(bundle.norm_stats.state.q01, Q01S)
    np.testing.assert_array_equal(bundle.norm_stats.actions.q99, Q99A)
    assert bundle.layout.camera_names == ["base_0_rgb", "left_wrist_0_rgb", "empty_camera_0"]
    assert len(bundle.layout.state_names) == 3 and len(bundle.layout.action_names) == 4


def test_imported_policy_prompts_and_denormalises_with_the_checkpoint_stats(lerobot):
    _, _, out = lerobot
    policy = Policy.load(out)
    img = np.full((24, 40, 3), 100, np.uint8)
    obs = Observation(images={"base_0_rgb": img}, state=np.array([1.0, 2.0, 0.5]), instruction="pick up the red cube")
    images, image_mask, tokens, token_mask, _ = policy.model_inputs(obs)
    # state 1.0 in [0, 2] -> 0 -> bin 128; 2.0 in [-1, 1] -> 2 -> bin 255; 0.5 == q01 == q99 -> -1 -> bin 0;
    # then zeros up to max_state_dim 8, as LeRobot pads: bin 128
    text = policy.prompt.tok.decode(tokens[0][token_mask[0]][1:])
    assert text == "Task: pick up the red cube, State: 128 255 0 128 128 128 128 128;\nAction: "
    assert image_mask[0].tolist() == [True, False, False]
    noise = np.random.default_rng(0).standard_normal((1, CFG.action_horizon, CFG.action_dim)).astype(np.float32)
    raw = policy.backend.flow(policy.backend.prefix(images, image_mask, tokens, token_mask, _), noise)[0][:, :4]
    actions = policy.infer(obs, noise=noise).actions
    q01, q99 = np.array(Q01A), np.array(Q99A)
    np.testing.assert_allclose(actions, (raw + 1) / 2 * (q99 - q01) + q01, rtol=1e-5, atol=1e-5)


def test_processor_files_are_not_unknown_keys(lerobot):
    """`model.init` of a training config reads the same folder: the processor statistics are skipped."""
    sd, root, _ = lerobot
    model = KIVLA(CFG)
    load_pi05_into(model, root)
    assert torch.equal(model.state_dict()["action_in_proj.weight"], sd["model.action_in_proj.weight"].float())


def test_openpi_layout_with_embodiment_and_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    c = CFG.replace(action_dim=16, state_dim=16)
    root = tmp_path / "pi05_aloha_pytorch"
    root.mkdir()
    sd = {k.removeprefix("model."): v for k, v in synthetic_pi05(c, seed=1).items()}  # openpi: no prefix
    save_file(sd, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"action_dim": 16, "action_horizon": c.action_horizon,
                                                  "paligemma_variant": "gemma_2b",
                                                  "action_expert_variant": "gemma_300m", "precision": "float32"}))
    (root / "assets" / "trossen").mkdir(parents=True)
    q = {"q01": (-np.ones(14)).tolist(), "q99": np.ones(14).tolist(), "mean": np.zeros(14).tolist()}
    (root / "assets" / "trossen" / "norm_stats.json").write_text(json.dumps({"norm_stats": {"state": q, "actions": q}}))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Task: pick up the red cube, State: -1 0 128 255;\nAction: \n" * 50)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "tokenizer"), vocab_size=40,
                                   pad_id=0, eos_id=1, bos_id=2, unk_id=3, model_type="bpe")
    out = import_checkpoint(root, tmp_path / "model", embodiment="aloha_bimanual", log=lambda *a: None, **HEADS)
    assert (out / "text_tokenizer.model").is_file() and not (out / "text_tokenizer.json").exists()
    policy = Policy.load(out)
    assert policy.layout.camera_names == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert policy.layout.state_names[0] == "left_waist" and policy.control_rate_hz == 50.0
    assert policy.config.state_dim == 16 and policy.config.action_horizon == c.action_horizon
    assert torch.equal(load_file(str(out / "weights.safetensors"))["time_mlp_in.bias"], sd["time_mlp_in.bias"].float())
    obs = Observation(images={}, state=np.zeros(14), instruction="pick up the red cube")
    assert policy.infer(obs, seed=0).actions.shape == (c.action_horizon, 14)


def test_errors_name_the_file_and_the_problem(lerobot, tmp_path, capsys):
    sd, root, _ = lerobot
    with pytest.raises(ImportCheckpointError, match=r"do not fit 8 heads, 1 KV heads of width 256 .* --num-heads"):
        import_checkpoint(root, tmp_path / "a", tokenizer=str(_tokenizer(tmp_path / "t.json")))
    with pytest.raises(ImportCheckpointError, match=r"no tokenizer.json / tokenizer.model; .* --tokenizer"):
        import_checkpoint(root, tmp_path / "b", **HEADS)
    with pytest.raises(ImportCheckpointError, match=r"embodiment 'aloha_bimanual' has 14 state / 14 action dims, "
                                                    r"the checkpoint's statistics 3 / 4"):
        import_checkpoint(root, tmp_path / "c", embodiment="aloha_bimanual", tokenizer=str(tmp_path / "t.json"),
                          **HEADS)
    cfg = json.loads((root / "config.json").read_text())
    bad = lerobot_checkpoint(tmp_path / "meanstd", sd)
    (bad / "config.json").write_text(json.dumps(cfg | {"normalization_mapping": {"STATE": "MEAN_STD"}}))
    with pytest.raises(ImportCheckpointError, match=r"config.json: normalization_mapping.STATE is MEAN_STD"):
        import_checkpoint(bad, tmp_path / "d", tokenizer=str(tmp_path / "t.json"), **HEADS)
    # the command: exit code 1, one line naming the problem, nothing written
    assert main(["import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nowhere: not a folder" in err and not (tmp_path / "e").exists()
    assert main(["import", str(root), "--out", str(tmp_path / "f"), "--tokenizer", str(tmp_path / "t.json"),
                 "--num-heads", "2", "--num-kv-heads", "1", "--head-dim", "32", "--vision-heads", "2"]) == 0
    assert (tmp_path / "f" / "weights.safetensors").is_file()
