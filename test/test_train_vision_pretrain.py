"""Vision pre-training (train/vision_pretrain.py) and `model.init_vision`: the sine-cosine position
code, the rendered scenes' targets, a position-blind head that still learns where an object is, and
the tower's weights landing in a model (and nothing else)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch

from ki_vla_ros.configio import from_dict
from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.vision import sincos_2d
from ki_vla_ros.train import vision_pretrain as VP
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.trainer import init_vision


def test_sincos_code_reads_back_row_and_column():
    grid, width = 8, 32
    code = sincos_2d(grid, width)
    assert code.shape == (grid * grid, width)
    q = width // 4
    for patch in (0, 5, 9, 63):
        r, c = divmod(patch, grid)  # row-major, as the patch embedding flattens
        # the lowest frequency is 1: the first channel of each quarter is sin/cos of the index itself
        assert code[patch, 0] == pytest.approx(np.sin(c), abs=1e-6)
        assert code[patch, q] == pytest.approx(np.cos(c), abs=1e-6)
        assert code[patch, 2 * q] == pytest.approx(np.sin(r), abs=1e-6)
        assert code[patch, 3 * q] == pytest.approx(np.cos(r), abs=1e-6)
    assert torch.cdist(code, code).add(torch.eye(grid * grid)).min() > 0.1  # every patch has its own code
    with pytest.raises(ValueError, match="vision_width 30"):
        sincos_2d(grid, 30)


def test_probe_learns_position_through_a_position_blind_head():
    """A white square at a random place on grey: the pooled head can only answer from positions the
    tower put into its features; after training, the error falls well below the mean's."""
    cfg = ModelConfig.preset("tiny")
    rng = np.random.default_rng(0)

    def squares(n):
        images = np.full((n, cfg.image_size, cfg.image_size, 3), 100, np.uint8)
        xy = rng.uniform(0.1, 0.9, size=(n, 2, 2)).astype(np.float32)  # 2 objects as the probe expects
        for i in range(n):
            for j, value in enumerate((255, 0)):
                col, row = (xy[i, j] * (cfg.image_size - 6)).astype(int)
                images[i, row:row + 6, col:col + 6] = value
        return {"images": images, "xy": xy, "visible": np.ones((n, 2), bool)}

    train, held = squares(512), squares(64)
    probe, curve = VP.pretrain(cfg, train, held, steps=300, batch_size=32, lr=3e-3, pos_init="sincos",
                               eval_every=300, log=lambda *_: None)
    base = VP.mean_position_baseline_cm(train, held)["mean"]
    assert curve[-1]["heldout_mean_cm"] < 0.35 * base, (curve, base)


def test_rendered_scenes_hold_the_cube_positions(tmp_path):
    from ki_vla_ros.sim.vlm_data import SceneMaker

    d = VP.scenes(tmp_path, range(3, 5), 32, workers=1, log=lambda *_: None)
    assert d["images"].shape == (2, 32, 32, 3) and d["images"].dtype == np.uint8
    with SceneMaker(32) as maker:
        scene, images = maker.make(4)
    np.testing.assert_array_equal(d["images"][1], images["cam_high"])
    np.testing.assert_allclose(d["xy"][1], [scene.get(n).pos[:2] for n in VP.CUBES], rtol=1e-6)
    assert (tmp_path / "scenes_3_2_32.npz").is_file()  # cached: a second call renders nothing
    again = VP.scenes(tmp_path, range(3, 5), 32, workers=1, log=lambda *_: pytest.fail("rendered again"))
    np.testing.assert_array_equal(again["xy"], d["xy"])
    # the robot's three views (binding pre-training) and the arms' joint state, in a cache of their own
    cams = ("cam_high", "cam_left_wrist", "cam_right_wrist")
    three = VP.scenes(tmp_path, range(3, 5), 32, workers=1, log=lambda *_: None, cameras=cams)
    with SceneMaker(32, cams) as maker:
        scene, images = maker.make(4)
        state = maker.sim.joint_positions()
    assert three["images"].shape == (2, 3, 32, 32, 3)
    for v, cam in enumerate(cams):
        np.testing.assert_array_equal(three["images"][1, v], images[cam])
    np.testing.assert_allclose(three["state"][1], state, rtol=1e-6)
    np.testing.assert_array_equal(three["xy"], d["xy"])
    assert (tmp_path / "scenes_3_2_32_cam_high-cam_left_wrist-cam_right_wrist.npz").is_file()


def test_init_vision_loads_the_tower_and_nothing_else(tmp_path):
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(1)
    tower = VP.LocaliseProbe(cfg, "sincos").tower
    with torch.no_grad():
        for p in tower.parameters():  # no tensor left at a value a fresh model also has (LayerNorm ones)
            p.add_(torch.randn_like(p) * 0.1)
    VP.save_tower(tower, tmp_path / VP.VISION_FILE)
    torch.manual_seed(2)
    model = KIVLA(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_vision(model, str(tmp_path), log=lambda *_: None)  # a folder, or the file itself
    after = model.state_dict()
    for k, v in tower.state_dict().items():
        assert torch.equal(after[f"vision.{k}"], v)
        assert not torch.equal(before[f"vision.{k}"], v)
    for k, v in before.items():
        if not k.startswith("vision."):
            assert torch.equal(after[k], v), k


def test_init_vision_errors_name_the_key(tmp_path):
    model = KIVLA(ModelConfig.preset("tiny"))
    with pytest.raises(ValueError, match="model.init_vision: .*not found"):
        init_vision(model, str(tmp_path / "nowhere"))
    other = VP.LocaliseProbe(ModelConfig.preset("tiny").replace(vision_width=48, vision_heads=2)).tower
    VP.save_tower(other, tmp_path / VP.VISION_FILE)
    with pytest.raises(ValueError, match="model.init_vision: .*other shapes"):
        init_vision(model, str(tmp_path))


def test_train_config_takes_init_vision():
    cfg = from_dict(TrainConfig, {"run_dir": "r", "datasets": [{"name": "d", "type": "rosbag", "path": "p",
                                                               "embodiment": "aloha_bimanual"}],
                                 "model": {"preset": "tiny", "init_vision": "models/vision_loc"}})
    assert cfg.model.init_vision == "models/vision_loc"
