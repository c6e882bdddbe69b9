"""Word-object binding pre-training (train/binding_pretrain.py): the readout sees exactly what the
expert's last layer reads, the prompt is the robot pipeline's, gradients reach the tower and the
backbone and nothing else, a tiny model learns to find the cube its instruction names, and the
written folder is a model `model.init` accepts."""

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch
from ros_helpers import tiny_model_dir

from ki_vla_ros.model.kivla import EXPERT_MODULES
from ki_vla_ros.model.masks import PAD, PREFIX
from ki_vla_ros.runtime.model_dir import load_model_dir
from ki_vla_ros.tokenize.prompt import PromptBuilder
from ki_vla_ros.train import binding_pretrain as BP
from ki_vla_ros.train.vision_pretrain import HELDOUT_SEED


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("bind") / "tiny")


def squares(n: int, size: int, seed: int) -> dict:
    """Scenes in the rendered format: a red and a blue square on grey in cam_high (the wrist views
    blank), their positions as table (x, y), a random arm state."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 3, size, size, 3), 90, np.uint8)
    xy = rng.uniform(0.1, 0.9, size=(n, 2, 2)).astype(np.float32)
    for i in range(n):
        for j, colour in enumerate(((230, 20, 20), (20, 20, 230))):
            col, row = (xy[i, j] * (size - 6)).astype(int)
            images[i, 0, row:row + 6, col:col + 6] = colour
    return {"images": images, "xy": xy, "visible": np.ones((n, 2), bool),
            "state": rng.uniform(-0.5, 0.5, size=(n, 14)).astype(np.float32)}


def test_readout_reads_the_last_layers_input(tiny):
    """The pooled readout depends on the layers below the last and on the last layer's input norm
    (what its keys and values are made from), not on the last layer's attention or MLP."""
    bundle = load_model_dir(tiny)
    probe = BP.BindingProbe(bundle.model).eval()
    data = squares(4, bundle.config.image_size, 0)
    batch = BP.Batcher(bundle, data)(np.arange(4), ["pick up the red cube"] * 4)
    with torch.no_grad():
        ref = probe(**batch)
        last = bundle.model.transformer.backbone[-1]
        for p in (*last.q_proj.parameters(), *last.o_proj.parameters(), *last.mlp.parameters()):
            p.add_(1.0)
        torch.testing.assert_close(probe(**batch), ref, rtol=0, atol=0)
        last.attn_norm.weight.add_(0.5)
        assert (probe(**batch) - ref).abs().max() > 1e-4
        ref = probe(**batch)
        bundle.model.transformer.backbone[0].v_proj.weight.mul_(2.0)
        assert (probe(**batch) - ref).abs().max() > 1e-4


def test_prompt_is_the_robot_pipelines(tiny):
    bundle = load_model_dir(tiny)
    data = squares(2, bundle.config.image_size, 1)
    text = "grab the blue cube with the right gripper"
    batch = BP.Batcher(bundle, data)(np.arange(2), [text] * 2)
    prompt = PromptBuilder(bundle.text_tokenizer, bundle.config)
    for i in range(2):
        ids, mask = prompt.inference_prefix(text, bundle.norm_stats.state.normalize(data["state"][i]))
        n = int(mask.sum())
        assert batch["tokens"][i, :n].tolist() == ids[:n].tolist()
        assert (batch["token_kind"][i, :n] == PREFIX).all() and (batch["token_kind"][i, n:] == PAD).all()
    assert batch["images"].shape == (2, 3, 3, bundle.config.image_size, bundle.config.image_size)
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1


def test_gradients_reach_tower_and_backbone_only(tiny):
    bundle = load_model_dir(tiny)
    probe, curve = BP.pretrain(bundle, squares(16, bundle.config.image_size, 2),
                               squares(4, bundle.config.image_size, 3), steps=1, batch_size=4,
                               precision="fp32", eval_every=1, log=lambda *_: None)
    model = probe.model
    for name, p in model.named_parameters():
        if name.startswith(("vision.", "embed_tokens.", "transformer.backbone.0.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        if name.startswith(EXPERT_MODULES + ("lm_head.",)):
            assert not p.requires_grad and p.grad is None, name
    assert len(curve) == 1 and curve[0]["cases"] == 4 * 4


def test_tiny_model_learns_which_cube_the_words_name(tmp_path):
    """Two squares per scene; the instruction's colour says which one. As in the real pipeline the
    tower first learns where things are (vision pre-training) and stays frozen; then only the words
    can say which square: a colour-blind answer is at best the midpoint (half the answers nearer the
    named square, 0.50 at the start); after training, clearly more are."""
    from ki_vla_ros.embodiment import load_embodiment
    from ki_vla_ros.runtime import Layout
    from ki_vla_ros.runtime.init_model import init_model_dir
    from ki_vla_ros.sim.tasks import phrasings
    from ki_vla_ros.train import vision_pretrain as VP

    emb = load_embodiment("aloha_bimanual")
    layout = Layout(emb.camera_names, emb.state_names, emb.action_names, emb.control_rate_hz)
    words = tuple(p for t in BP.PICKS for p in phrasings(t))  # a tokenizer with "red" and "blue" in it
    bundle = load_model_dir(init_model_dir(tmp_path / "m", layout, instructions=words, state_mode="continuous"))
    size = bundle.config.image_size
    train, held = squares(512, size, 4), squares(64, size, 5)
    view = lambda d: {**d, "images": d["images"][:, 0]}  # noqa: E731 - cam_high
    torch.manual_seed(0)
    tower, _ = VP.pretrain(bundle.config, view(train), view(held), steps=300, batch_size=32, lr=3e-3,
                           eval_every=300, log=lambda *_: None)
    bundle.model.vision.load_state_dict(tower.tower.state_dict())
    _, curve = BP.pretrain(bundle, train, held, steps=400, batch_size=32, lr=2e-3, precision="fp32",
                           eval_every=400, freeze_vision=True, log=lambda *_: None)
    assert curve[-1]["nearer_instructed_cube"] > 0.62, curve


def test_main_writes_a_model_folder_for_model_init(tiny, tmp_path, monkeypatch):
    size = load_model_dir(tiny).config.image_size
    scenes = {range(0, 16): squares(16, size, 6), range(HELDOUT_SEED, HELDOUT_SEED + 8): squares(8, size, 7)}
    monkeypatch.setattr(BP, "splits", lambda cache, size, n, m, seed, workers, log, cams: (
        scenes[range(seed, seed + n)], scenes[range(HELDOUT_SEED, HELDOUT_SEED + m)]))
    out = tmp_path / "bound"
    BP.main(["--init", str(tiny), "--out", str(out), "--train-scenes", "16", "--heldout-scenes", "8",
             "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--precision", "fp32",
             "--cache", str(tmp_path / "cache")])
    before, after = load_model_dir(tiny), load_model_dir(out)
    report = json.loads((out / BP.REPORT).read_text())
    assert report["curve"][-1]["step"] == 2 and "midpoint_median_cm" in report["references"]
    a, b = before.model.state_dict(), after.model.state_dict()
    assert not torch.equal(a["vision.patch_embed.weight"], b["vision.patch_embed.weight"])
    for name in a:  # the expert and the text head are the init's
        if name.startswith(EXPERT_MODULES + ("lm_head.",)):
            assert torch.equal(a[name], b[name]), name
    assert after.layout == before.layout and after.manifest.recipe == before.manifest.recipe
