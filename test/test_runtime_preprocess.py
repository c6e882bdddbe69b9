"""Normalisation statistics and image preprocessing against hand-computed references."""

import json

import numpy as np
import pytest

from ki_vla_ros.normalize import NormStats, QuantileStats
from ki_vla_ros.runtime.preprocess import images_to_model, resize_with_pad


def test_quantile_normalisation_maps_percentiles_and_round_trips():
    rng = np.random.default_rng(0)
    values = np.stack([rng.uniform(-2, 4, 1000), rng.normal(10, 1, 1000), np.full(1000, 0.5)], 1)
    stats = QuantileStats.compute(values)
    np.testing.assert_allclose(stats.q01, np.quantile(values, 0.01, axis=0))
    norm = stats.normalize(np.stack([stats.q01, stats.q99]))
    np.testing.assert_allclose(norm[:, :2], [[-1, -1], [1, 1]], atol=1e-12)
    assert (norm[:, 2] == 0).all(), "a constant dimension must normalise to 0, not divide by zero"
    x = values[:5]
    np.testing.assert_allclose(stats.denormalize(stats.normalize(x)), x, atol=1e-9)


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
    assert out.shape == (50, 50, 3)
    assert (out[:12] == 0).all() and (out[-13:] == 0).all()
    assert (out[13:37] == 200).all()


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
