"""FAST and naive action tokenizers: round-trip error bounds, compression, errors, persistence."""

import json

import numpy as np
import pytest
from scipy.fft import dct

from ki_vla_ros.tokenize import FastDecodeError, FastTokenizer, NaiveTokenizer, load_action_tokenizer

H, D = 50, 7


def smooth_chunks(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth normalised chunks in [-1, 1]: random low-frequency sinusoids + offsets."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, H)[:, None]
    out = []
    for _ in range(n):
        freq, phase = rng.uniform(0.2, 1.5, D), rng.uniform(0, 2 * np.pi, D)
        amp, off = rng.uniform(0.1, 0.5, D), rng.uniform(-0.4, 0.4, D)
        out.append(off + amp * np.sin(2 * np.pi * freq * t + phase))
    return out


@pytest.fixture(scope="module")
def fitted():
    return FastTokenizer(scale=10.0, vocab_size=1024).fit(smooth_chunks(300))


def test_round_trip_within_bound_and_compression(fitted):
    chunks = smooth_chunks(50, seed=1)
    max_err, sq, lengths = 0.0, [], []
    for c in chunks:
        ids = fitted.encode(c)
        lengths.append(len(ids))
        rec = fitted.decode(ids, H, D)
        # rounding each orthonormal-DCT coefficient to 1/scale: Frobenius error ≤ 0.5/scale·√(HD)
        assert np.linalg.norm(rec - c) <= 0.5 / fitted.scale * np.sqrt(H * D) + 1e-9
        # the exact reference: inverse DCT of the rounded coefficients
        ref = np.rint(dct(c, norm="ortho", axis=0) * 10) / 10
        assert np.linalg.norm(dct(rec, norm="ortho", axis=0) - ref) < 1e-9
        max_err = max(max_err, np.abs(rec - c).max())
        sq.append(((rec - c) ** 2).mean())
    rms = float(np.sqrt(np.mean(sq)))
    assert rms < 0.035  # uniform rounding: 1/(scale·√12) ≈ 0.029
    assert max_err < 1.0 / fitted.scale  # stated per-entry bound on smooth chunks
    ratio = np.mean(lengths) / (H * D)
    print(f"FAST: {np.mean(lengths):.1f} tokens per {H}x{D} chunk ({H * D} values): "
          f"compression {1 / ratio:.1f}x, rms error {rms:.4f}, max abs error {max_err:.4f}")
    assert ratio < 0.25  # a real compression (naive tokens: H·D)
    assert all(0 <= i < fitted.vocab_size <= 1024 for c in chunks for i in fitted.encode(c))


def test_undecodable_sequences_raise(fitted):
    ids = fitted.encode(smooth_chunks(1, seed=2)[0])
    with pytest.raises(FastDecodeError, match="expected horizon"):
        fitted.decode(ids[:-3], H, D)  # truncated
    with pytest.raises(FastDecodeError, match="expected horizon"):
        fitted.decode(ids + ids[:2], H, D)  # too long
    with pytest.raises(FastDecodeError, match="not in the vocabulary"):
        fitted.decode([*ids[:-1], 5000], H, D)
    with pytest.raises(FastDecodeError):
        fitted.decode([], H, D)  # never silent zeros
    with pytest.raises(FastDecodeError):
        fitted.decode(ids, H, D + 1)


def test_relaxed_decoding_cuts_or_pads_the_highest_frequencies(fitted):
    """relaxed=True (LeRobot's and openpi's rule): a sequence short of H·D coefficients is padded
    with zero coefficients at the end of the frequency-major order, a long one cut there; the
    result is the inverse DCT of exactly those coefficients. Unknown ids and less than one
    frequency row still raise."""
    chunk = smooth_chunks(1, seed=3)[0]
    ids = fitted.encode(chunk)
    full = fitted.decode(ids, H, D)
    coeffs = np.rint(dct(chunk, norm="ortho", axis=0) * 10).reshape(-1)  # [H·D], frequency-major
    short = ids[:-2]
    n = fitted.count(short)
    assert D <= n < H * D and fitted.count(ids) == H * D
    expected = coeffs.copy()
    expected[n:] = 0.0
    got = fitted.decode(short, H, D, relaxed=True)
    np.testing.assert_allclose(dct(got, norm="ortho", axis=0).reshape(-1) * 10, expected, atol=1e-9)
    assert np.abs(got - full).max() > 0  # not the full chunk: its tail coefficients were cut ...
    tail = coeffs[n:]
    np.testing.assert_allclose(np.linalg.norm(got - full), np.linalg.norm(tail) / 10, rtol=1e-9)  # ... by exactly them
    long = ids + ids[:3]
    np.testing.assert_allclose(fitted.decode(long, H, D, relaxed=True), full, atol=1e-12)
    np.testing.assert_array_equal(fitted.decode(ids, H, D, relaxed=True), full)
    with pytest.raises(FastDecodeError, match="expected at least 7 .*one frequency row"):
        fitted.decode([], H, D, relaxed=True)
    one_row = next(k for k in range(1, len(ids) + 1) if fitted.count(ids[:k]) >= D)
    fitted.decode(ids[:one_row], H, D, relaxed=True)  # one full row: every dimension's mean is there
    with pytest.raises(FastDecodeError, match="not in the vocabulary"):
        fitted.decode([*ids[:-1], 5000], H, D, relaxed=True)
    with pytest.raises(FastDecodeError, match="expected horizon"):
        fitted.decode(short, H, D)  # the default stays exact


def test_save_load_identical(fitted, tmp_path):
    path = tmp_path / "fast.json"
    fitted.save(path)
    assert json.loads(path.read_text())["type"] == "fast"
    loaded = load_action_tokenizer(path)
    c = smooth_chunks(3, seed=3)
    for x in c:
        assert loaded.encode(x) == fitted.encode(x)
        np.testing.assert_array_equal(loaded.decode(fitted.encode(x), H, D), fitted.decode(fitted.encode(x), H, D))


def test_unfitted_and_bad_shapes():
    with pytest.raises(RuntimeError, match="not fitted"):
        FastTokenizer().encode(np.zeros((H, D)))
    with pytest.raises(ValueError, match=r"\[H, D\]"):
        FastTokenizer().fit([np.zeros(H)])
    with pytest.raises(ValueError, match="vocab_size"):
        FastTokenizer(scale=1000.0, vocab_size=64).fit(smooth_chunks(5))


def test_out_of_range_values_are_clipped_not_dropped(fitted):
    big = smooth_chunks(1, seed=4)[0] * 10  # far outside the fitted range
    rec = fitted.decode(fitted.encode(big), H, D)
    assert rec.shape == (H, D) and np.isfinite(rec).all()


@pytest.mark.parametrize("stride", [1, 5])
def test_naive_tokenizer(stride, tmp_path):
    tok = NaiveTokenizer(bins=256, stride=stride)
    c = smooth_chunks(1, seed=5)[0]
    ids = tok.encode(c)
    assert len(ids) == -(-H // stride) * D and min(ids) >= 0 and max(ids) < 256
    rec = tok.decode(ids, H, D)
    if stride == 1:
        assert np.abs(rec - c).max() <= 1.0 / 256 + 1e-12  # half a bin width (bins are 2/256 wide)
    else:
        assert np.abs(rec - c).max() < 0.1  # linear interpolation of a smooth chunk
    with pytest.raises(FastDecodeError):
        tok.decode(ids[:-1], H, D)
    with pytest.raises(FastDecodeError):
        tok.decode([*ids[:-1], 256], H, D)
    with pytest.raises(FastDecodeError, match="no relaxed decoding"):
        tok.decode(ids, H, D, relaxed=True)
    tok.save(tmp_path / "naive.json")
    assert load_action_tokenizer(tmp_path / "naive.json").encode(c) == ids
