"""Normalisation statistics and image preprocessing against hand-computed references."""

import json

import numpy as np
import pytest

from ki_vla_ros.normalize import NormStats, QuantileStats
from ki_vla_ros.runtime.preprocess import images_to_model, resize_with_pad, resize_with_pad_uint8


def test_quantile_normalisation_maps_percentiles_and_round_trips():
    rng = np.random.default_rng(0)
    values = np.stack([rng.uniform(-2, 4, 1000), rng.normal(10, 1, 1000)], 1)
    stats = QuantileStats.compute(values)
    np.testing.assert_allclose(stats.q01, np.quantile(values, 0.01, axis=0))
    norm = stats.normalize(np.stack([stats.q01, stats.q99]))
    np.testing.assert_allclose(norm, [[-1, -1], [1, 1]], atol=1e-12)
    x = values[:5]
    np.testing.assert_allclose(stats.denormalize(stats.normalize(x)), x, atol=1e-9)


def test_equal_quantiles_normalise_like_lerobot():
    """q01 == q99 = 0.3: LeRobot divides by 1e-8 instead of 0, so 0.3 -> 2 * 0 / 1e-8 - 1 = -1,
    0.3 + 5e-9 -> 2 * 5e-9 / 1e-8 - 1 = 0, and -1 de-normalises to (−1 + 1) * 1e-8 / 2 + 0.3 = 0.3."""
    stats = QuantileStats(np.array([0.3, 0.0]), np.array([0.3, 2.0]))
    np.testing.assert_allclose(stats.normalize(np.array([0.3, 0.0])), [-1.0, -1.0])
    np.testing.assert_allclose(stats.normalize(np.array([0.3 + 5e-9, 1.0]))[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(stats.denormalize(np.array([-1.0, 1.0])), [0.3, 2.0])


def test_min_range_widens_narrow_quantiles_around_their_midpoint():
    """Column 0: 0..1 in steps of 0.01 (q01 = 0.01, q99 = 0.99, range 0.98 >= 0.02: kept).
    Column 1: 0.1 .. 0.105 (q01 = 0.10005, q99 = 0.10495, range 0.0049 < 0.02): widened to
    midpoint 0.1025 ± 0.01. Column 2: constant 0.5: 0.49 .. 0.51."""
    values = np.stack([np.linspace(0, 1, 101), np.linspace(0.1, 0.105, 101), np.full(101, 0.5)], 1)
    plain = QuantileStats.compute(values)
    np.testing.assert_allclose(plain.q01, [0.01, 0.10005, 0.5])
    np.testing.assert_allclose(plain.q99, [0.99, 0.10495, 0.5])
    wide = QuantileStats.compute(values, min_range=0.02)
    np.testing.assert_allclose(wide.q01, [0.01, 0.0925, 0.49])
    np.testing.assert_allclose(wide.q99, [0.99, 0.1125, 0.51])
    np.testing.assert_allclose(wide.normalize(np.array([0.5, 0.1125, 0.5])), [0.0, 1.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="min_range"):
        QuantileStats.compute(values, min_range=-1)


def test_norm_stats_file_errors_name_the_problem(tmp_path):
    stats = NormStats(QuantileStats(np.zeros(2), np.ones(2)), QuantileStats(np.zeros(3), np.ones(3)))
    path = tmp_path / "norm_stats.json"
    stats.save(path)
    loaded = NormStats.load(path)
    np.testing.assert_array_equal(loaded.actions.q99, np.ones(3))
    bad = {"state": {"q01": [0, 1], "q99": [1, 0]}, "actions": {"q01": [0], "q99": [1]}}
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"norm_stats.json: state: q99 is below q01 in dimension 1"):
        NormStats.load(path)
    with pytest.raises(ValueError, match="NaN or inf"):
        QuantileStats.compute(np.array([[np.nan, 1.0]]))


def test_resize_with_pad_keeps_aspect_and_centres():
    image = np.full((100, 200, 3), 200, np.uint8)  # wide image: bars top and bottom
    out = resize_with_pad(image, 50)
    assert out.shape == (50, 50, 3) and out.dtype == np.float32
    assert (out[:12] == 0).all() and (out[-13:] == 0).all()
    np.testing.assert_allclose(out[12:37], 200 / 255, atol=1e-6)
    np.testing.assert_array_equal(resize_with_pad_uint8(image, 50)[12:37], 200)


def test_resize_is_float_with_int_sizes_like_lerobot():
    """7 x 8 image to 4: scale max(8/4, 7/4) = 2, size int(3.5) x int(4) = 3 x 4 (round() would give
    4 rows), one bar row at the bottom ((4 - 3) // 2 = 0 on top). Columns alternate 0, 255, so
    each output pixel is the half/half bilinear mix of columns 2j, 2j+1 (source x = 2j + 0.5):
    exactly 0.5 in float, i.e. 0.0 for the model; a uint8 round trip would give 128 -> 0.0039."""
    image = np.zeros((7, 8, 3), np.uint8)
    image[:, 1::2] = 255
    pixels, mask = images_to_model({"cam": image}, ["cam"], 4)
    assert mask.tolist() == [True]
    np.testing.assert_allclose(pixels[0, :, :3], 0.0, atol=1e-6)
    np.testing.assert_array_equal(pixels[0, :, 3], -1.0)


def test_images_to_model_scales_and_masks_missing_cameras():
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = 255
    pixels, mask = images_to_model({"a": img}, ["a", "b"], 8)
    assert pixels.shape == (2, 3, 8, 8) and pixels.dtype == np.float32
    assert mask.tolist() == [True, False]
    np.testing.assert_allclose(pixels[0, 0], 1.0)
    np.testing.assert_allclose(pixels[0, 1:], -1.0)
    np.testing.assert_allclose(pixels[1], -1.0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        images_to_model({"a": img.astype(np.float32)}, ["a"], 8)


def test_images_to_model_is_resize_with_pad_per_camera_scaled():
    """The policy's path (`images_to_model`) gives exactly `resize_with_pad` per camera, scaled to
    [-1, 1] and channels first, whatever each camera's size (down 2x, down 5.7x with bars, up, as is)."""
    rng = np.random.default_rng(3)
    images = {"a": rng.integers(0, 256, (224, 224, 3), np.uint8), "b": rng.integers(0, 256, (480, 640, 3), np.uint8),
              "c": rng.integers(0, 256, (50, 37, 3), np.uint8), "d": rng.integers(0, 256, (112, 112, 3), np.uint8)}
    pixels, mask = images_to_model(images, ["a", "b", "missing", "c", "d"], 112)
    assert mask.tolist() == [True, True, False, True, True]
    for i, name in zip((0, 1, 3, 4), "abcd"):
        expected = resize_with_pad(images[name], 112).transpose(2, 0, 1) * np.float32(2.0) - np.float32(1.0)
        np.testing.assert_array_equal(pixels[i], expected)
    np.testing.assert_array_equal(pixels[2], -1.0)
    assert (pixels[1, :, :14] == -1).all() and (pixels[1, :, 14:98] > -1).any()  # 640 x 480 -> 112 x 84: bars
