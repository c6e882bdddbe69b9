"""Image augmentation of robot training examples (data/augment.py): the crop lands where its drawn
centre says, colour changes keep what they must, wrist cameras / VLM examples / empty slots are
left alone bit for bit, and the trainer applies it to what the model sees."""

import math

import pytest
import torch

from ki_vla_ros.configio import ConfigError, from_dict
from ki_vla_ros.data.augment import AugmentConfig, augment_images
from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset
from ki_vla_ros.model import KIVLA
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.trainer import train

OPENPI = AugmentConfig(crop_scale=0.95, rotate_deg=5.0, brightness=0.3, contrast=0.4, saturation=0.5)


def _blob_images(b: int, v: int, s: int = 32) -> torch.Tensor:
    """A bright 4x4 square on black at rows/cols 10..13 of every image."""
    x = torch.full((b, v, 3, s, s), -1.0)
    x[..., 10:14, 10:14] = 1.0
    return x


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    w = (img[0] + 1.0).clamp(min=0)
    s = img.shape[-1]
    idx = torch.arange(s, dtype=torch.float32)
    return float((w.sum(1) * idx).sum() / w.sum()), float((w.sum(0) * idx).sum() / w.sum())  # row, col


def test_default_is_off_and_openpi_values_validate():
    assert not AugmentConfig().enabled
    assert OPENPI.geometric and OPENPI.colour
    assert OPENPI.geometric_cameras(["cam_high", "cam_left_wrist", "cam_low"]) == [True, False, True]
    assert AugmentConfig(colour_only_substring="").geometric_cameras(["cam_left_wrist"]) == [True]


def test_crop_moves_the_scene_by_the_drawn_centre_and_scale():
    s, scale = 32, 0.7
    images = _blob_images(4, 1, s)
    cfg = AugmentConfig(crop_scale=scale)
    torch.manual_seed(3)
    out = augment_images(images, torch.ones(4, 1, dtype=torch.bool), torch.ones(4, dtype=torch.bool), [True], cfg)
    torch.manual_seed(3)  # the same draws: rotation (0 here), then the crop centres
    torch.rand(4)
    shift = ((torch.rand(8) * 2 - 1) * (1 - scale)).reshape(4, 2)  # (x, y) normalised
    blob = (11.5 + 0.5) / s * 2 - 1  # blob centre, normalised (align_corners=False pixel centres)
    for i in range(4):
        row, col = _centroid(out[i, 0])
        want_col = ((blob - shift[i, 0].item()) / scale + 1) / 2 * s - 0.5
        want_row = ((blob - shift[i, 1].item()) / scale + 1) / 2 * s - 0.5
        assert abs(col - want_col) < 0.3 and abs(row - want_row) < 0.3, (i, row, col, want_row, want_col)


def test_rotation_turns_about_the_centre():
    s = 33
    x = torch.full((1, 1, 3, s, s), -1.0)
    x[..., 16, 16:30] = 1.0  # a horizontal bar from the centre to the right
    cfg = AugmentConfig(rotate_deg=40.0)
    seed = next(k for k in range(100) if abs(torch.manual_seed(k) and torch.rand(1).item() - 0.5) > 0.3)
    torch.manual_seed(seed)  # a draw of more than 16 degrees
    out = augment_images(x, torch.ones(1, 1, dtype=torch.bool), torch.ones(1, dtype=torch.bool), [True], cfg)
    torch.manual_seed(seed)
    angle = (torch.rand(1) * 2 - 1) * math.radians(40.0)
    row, col = _centroid(out[0, 0])
    # output = R(-angle) · input about the centre (affine_grid maps output to input by R(angle))
    r, c0 = 16.0, 16.0 + (29 - 16) / 2
    want_col = 16 + (c0 - 16) * math.cos(angle.item())
    want_row = r - (c0 - 16) * math.sin(angle.item())
    assert abs(angle.item()) > math.radians(16)
    assert abs(col - want_col) < 0.6 and abs(row - want_row) < 0.6


def test_colour_changes_keep_range_grey_and_mean():
    torch.manual_seed(0)
    grey = torch.rand(6, 1, 1, 16, 16).expand(6, 1, 3, 16, 16) * 1.2 - 0.6  # grey values in [-0.6, 0.6]
    ones = torch.ones(6, 1, dtype=torch.bool), torch.ones(6, dtype=torch.bool)
    out = augment_images(grey, *ones, [True], AugmentConfig(saturation=0.9))
    torch.testing.assert_close(out, grey, atol=1e-6, rtol=0)  # grey has no saturation to change
    out = augment_images(grey, *ones, [True], AugmentConfig(contrast=0.9))
    torch.testing.assert_close(out.mean((2, 3, 4)), grey.mean((2, 3, 4)), atol=1e-5, rtol=0)  # about the mean
    assert (out.std((2, 3, 4)) - grey.std((2, 3, 4))).abs().max() > 0.01
    torch.manual_seed(1)
    out = augment_images(grey, *ones, [True], AugmentConfig(brightness=0.2))
    torch.manual_seed(1)
    delta = (torch.rand(6) * 2 - 1) * 0.2 * 2  # [0, 1] units -> [-1, 1] units
    torch.testing.assert_close(out.mean((1, 2, 3, 4)), grey.mean((1, 2, 3, 4)) + delta, atol=1e-5, rtol=0)
    big = augment_images(torch.rand(8, 2, 3, 16, 16) * 2 - 1, torch.ones(8, 2, dtype=torch.bool),
                         torch.ones(8, dtype=torch.bool), [True, True], OPENPI)
    assert big.min() >= -1.0 and big.max() <= 1.0


def test_what_must_not_change_is_bit_identical():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 3, 16, 16) * 2 - 1
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[1, 2] = False  # an empty slot
    apply = torch.tensor([True, True, False, True])  # example 2: a VLM question
    out = augment_images(images, mask, apply, OPENPI.geometric_cameras(["cam_high", "cam_left_wrist", "x"]), OPENPI)
    assert torch.equal(out[2], images[2]) and torch.equal(out[1, 2], images[1, 2])
    for b in (0, 1, 3):
        assert not torch.equal(out[b, 0], images[b, 0])
    geo_only = AugmentConfig(crop_scale=0.8, rotate_deg=10)
    out = augment_images(images, mask, torch.ones(4, dtype=torch.bool), [True, False, True], geo_only)
    assert torch.equal(out[:, 1], images[:, 1])  # the wrist camera keeps its geometry
    assert not torch.equal(out[:, 0], images[:, 0])


@pytest.mark.parametrize("data, match", [
    ({"crop_scale": 0.2}, r"key 'augment.crop_scale': expected 0.5 <= x <= 1"),
    ({"rotate_deg": -1}, r"key 'augment.rotate_deg': expected 0 <= x <= 45"),
    ({"saturation": 1.5}, r"key 'augment.saturation': expected 0 <= x < 1"),
    ({"hue": 0.1}, r"augment.*hue"),
])
def test_config_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(AugmentConfig, data, where="train.yaml", key="augment")


def test_trainer_feeds_augmented_robot_images(tmp_path, monkeypatch):
    data = write_tiny_dataset(tmp_path / "data")
    seen = []
    real_loss = KIVLA.compute_loss

    def recording_loss(self, batch, flow_samples=1):
        seen.append(batch["images"].clone())
        return real_loss(self, batch, flow_samples)

    monkeypatch.setattr(KIVLA, "compute_loss", recording_loss)
    runs = {}
    for name, aug in (("plain", {}), ("aug", {"crop_scale": 0.9, "brightness": 0.2})):
        seen.clear()
        cfg = from_dict(TrainConfig, tiny_train_config(data, tmp_path / name, steps=1, eval_every=0,
                                                       checkpoint_every=1, augment=aug))
        train(cfg, log=lambda *a: None)
        runs[name] = seen[0]
    assert runs["plain"].shape == runs["aug"].shape
    assert (runs["plain"] - runs["aug"]).abs().max() > 0.05  # same seed, same draws: only the augmentation differs
