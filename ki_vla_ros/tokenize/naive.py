"""Naive per-dimension binning of action chunks (the paper's "naive tokens" baseline, §6).

Every `stride`-th action of a normalised chunk [H, D] is clipped to [-1, 1] and each dimension is
binned uniformly into `bins` bins: ceil(H/stride)·D tokens, time-major (action by action). Decoding
returns bin centres (error ≤ 1/bins per entry) and, for stride > 1, interpolates linearly in
time. A sequence of the wrong length or with an out-of-range id raises `FastDecodeError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ki_vla_ros.tokenize.fast import FastDecodeError


class NaiveTokenizer:
    kind = "naive"

    def __init__(self, bins: int = 256, stride: int = 1):
        self.bins, self.stride = int(bins), int(stride)

    @property
    def vocab_size(self) -> int:
        return self.bins

    def fit(self, chunks=None) -> NaiveTokenizer:  # nothing to learn; same interface as FAST
        return self

    def encode(self, chunk: np.ndarray) -> list[int]:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2:
            raise ValueError(f"expected an action chunk [H, D], got shape {chunk.shape}")
        x = np.clip(chunk[:: self.stride], -1.0, 1.0)
        ids = np.floor((x + 1.0) / 2.0 * self.bins).astype(np.int64).clip(0, self.bins - 1)
        return ids.reshape(-1).tolist()

    def decode(self, tokens: Sequence[int], horizon: int, dim: int, relaxed: bool = False) -> np.ndarray:
        if relaxed:  # bins in time order: nothing that may be cut or padded without inventing actions
            raise FastDecodeError("naive action tokens have no relaxed decoding (FAST tokens do)")
        kept = -(-horizon // self.stride)
        ids = np.asarray(list(tokens), dtype=np.int64)
        if ids.size != kept * dim:
            raise FastDecodeError(
                f"naive tokens: got {ids.size}, expected ceil({horizon}/{self.stride})·{dim} = {kept * dim}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.bins):
            raise FastDecodeError(f"naive token id out of range [0, {self.bins})")
        x = (ids.reshape(kept, dim) + 0.5) / self.bins * 2.0 - 1.0  # bin centres
        if self.stride == 1:
            return x
        t_kept = np.arange(kept) * self.stride
        return np.stack([np.interp(np.arange(horizon), t_kept, x[:, d]) for d in range(dim)], axis=1)

    def to_dict(self) -> dict:
        return {"type": self.kind, "bins": self.bins, "stride": self.stride}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> NaiveTokenizer:
        d = json.loads(Path(path).read_text())
        if d.get("type") != cls.kind:
            raise ValueError(f"not a naive action tokenizer file (type {d.get('type')!r})")
        return cls(bins=d["bins"], stride=d["stride"])


def load_action_tokenizer(path: str | Path):
    """A FastTokenizer or NaiveTokenizer from its JSON file (dispatch on "type")."""
    from ki_vla_ros.tokenize.fast import FastTokenizer

    kind = json.loads(Path(path).read_text()).get("type")
    if kind == "fast":
        return FastTokenizer.load(path)
    if kind == "naive":
        return NaiveTokenizer.load(path)
    raise ValueError(f"{path}: unknown action tokenizer type {kind!r} (expected 'fast' or 'naive')")
