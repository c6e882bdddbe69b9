"""FAST action tokenizer (Pertsch et al. 2025): DCT → scale → round → BPE.

A normalised action chunk [H, D] is transformed with an orthonormal DCT-II along time for each
dimension, multiplied by `scale` and rounded to integers. The integer matrix [H (frequency), D]
is flattened low frequencies first, interleaved across dimensions (index k·D + d), each integer
becomes one character, and a byte-pair encoding (the `tokenizers` library, vocabulary ≤
`vocab_size`) compresses the string. Token ids are 0 … vocab_size-1; the prompt builder maps them
into the reserved range at the end of the model vocabulary.

Rounding error per DCT coefficient is ≤ 0.5/scale and the DCT is orthonormal, so the round-trip
error of a chunk is ≤ 0.5/scale·√(H·D) in Frobenius norm; its RMS is ≈ 1/(scale·√12) ≈ 0.029 and
the largest entry error on smooth chunks stays below 1/scale = 0.1 (test_tokenize_fast.py).
Coefficients outside the range seen at `fit` (widened by a margin) are clipped on `encode`.
`decode` raises `FastDecodeError` for any sequence that does not decode to exactly H·D
coefficients (unknown ids, a truncated or over-long sequence) — it never pads with zeros.
`decode(..., relaxed=True)` is the reference implementations' rule instead (LeRobot's π0-FAST and
openpi decode with `relaxed_decoding=True`): a sequence of the wrong length is cut or padded on the
right to H·D coefficients, the padding being zero coefficients. In the frequency-major order that
is the highest frequencies — what rounding already sets to zero in most chunks, and what BPE packs
into long runs of one character, so a token for a slightly shorter run, or an <eos> one token
early, loses only them. Unlike the references it still raises for unknown ids and for fewer than
one frequency row (D coefficients: every dimension's mean over the chunk), so no chunk is made
from nothing; `count(tokens)` tells how far a sequence is from H·D.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.fft import dct, idct
from tokenizers import Tokenizer, models, trainers

CHAR_BASE = 0x100  # integer c -> chr(CHAR_BASE + c - min_coeff): printable, no whitespace/control chars


class FastDecodeError(ValueError):
    """A token sequence that is not the FAST encoding of an [H, D] chunk."""


class FastTokenizer:
    kind = "fast"

    def __init__(self, scale: float = 10.0, vocab_size: int = 1024):
        self.scale = float(scale)
        self.requested_vocab_size = int(vocab_size)
        self.min_coeff: int | None = None
        self.max_coeff: int | None = None
        self._bpe: Tokenizer | None = None

    # ---- helpers --------------------------------------------------------------------------------
    def _coeffs(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2:
            raise ValueError(f"FAST expects an action chunk [H, D], got shape {chunk.shape}")
        return np.rint(dct(chunk, type=2, norm="ortho", axis=0) * self.scale).astype(np.int64)  # [H, D]

    def _to_string(self, coeffs: np.ndarray) -> str:
        c = np.clip(coeffs.reshape(-1), self.min_coeff, self.max_coeff) - self.min_coeff  # frequency-major
        return "".join(chr(CHAR_BASE + int(x)) for x in c)

    @property
    def fitted(self) -> bool:
        return self._bpe is not None

    @property
    def vocab_size(self) -> int:
        self._check_fitted()
        return self._bpe.get_vocab_size()

    def _check_fitted(self):
        if self._bpe is None:
            raise RuntimeError("FastTokenizer is not fitted: call fit(chunks) or FastTokenizer.load(path)")

    # ---- API ------------------------------------------------------------------------------------
    def fit(self, chunks: Iterable[np.ndarray], margin: float = 0.1) -> FastTokenizer:
        """Learn the coefficient range and the BPE merges from normalised chunks [H, D]."""
        coeffs = [self._coeffs(c) for c in chunks]
        if not coeffs:
            raise ValueError("FastTokenizer.fit needs at least one chunk")
        lo = min(int(c.min()) for c in coeffs)
        hi = max(int(c.max()) for c in coeffs)
        pad = int(np.ceil(margin * max(hi - lo, 1))) + 1
        self.min_coeff, self.max_coeff = lo - pad, hi + pad
        alphabet = [chr(CHAR_BASE + i) for i in range(self.max_coeff - self.min_coeff + 1)]
        if len(alphabet) > self.requested_vocab_size:
            raise ValueError(
                f"FAST alphabet has {len(alphabet)} symbols "
                f"(coefficients {self.min_coeff}..{self.max_coeff}) "
                f"but vocab_size is {self.requested_vocab_size}: lower `scale` or raise `vocab_size`"
            )
        bpe = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=self.requested_vocab_size,
            initial_alphabet=alphabet,
            special_tokens=[],
            show_progress=False,
            min_frequency=2,
        )
        bpe.train_from_iterator([self._to_string(c) for c in coeffs], trainer)
        self._bpe = bpe
        return self

    def encode(self, chunk: np.ndarray) -> list[int]:
        """chunk [H, D] (normalised) -> token ids in [0, vocab_size)."""
        self._check_fitted()
        return list(self._bpe.encode(self._to_string(self._coeffs(chunk))).ids)

    def _text(self, tokens: Sequence[int]) -> str:
        self._check_fitted()
        chars = []
        for t in tokens:
            piece = self._bpe.id_to_token(int(t)) if 0 <= int(t) < self.vocab_size else None
            if piece is None:
                raise FastDecodeError(
                    f"FAST token id {int(t)} is not in the vocabulary (size {self.vocab_size})"
                )
            chars.append(piece)
        return "".join(chars)

    def count(self, tokens: Sequence[int]) -> int:
        """How many DCT coefficients the token ids decode to (FastDecodeError for unknown ids)."""
        return len(self._text(tokens))

    def decode(self, tokens: Sequence[int], horizon: int, dim: int, relaxed: bool = False) -> np.ndarray:
        """Token ids -> chunk [horizon, dim] (float64). Raises FastDecodeError if undecodable: any
        length but horizon·dim, or with `relaxed` (module doc) fewer than `dim` coefficients."""
        text, n = self._text(tokens), horizon * dim
        if len(text) != n and not (relaxed and len(text) >= dim):
            need = f"at least {dim} (one frequency row) with relaxed decoding" if relaxed else \
                f"horizon·dim = {horizon}·{dim} = {n}"
            raise FastDecodeError(f"FAST tokens decode to {len(text)} coefficients, expected {need} "
                                  f"({len(tokens)} tokens)")
        coeffs = np.zeros(n, dtype=np.float64)  # relaxed: the missing highest frequencies stay 0
        kept = text[:n]
        coeffs[: len(kept)] = [ord(ch) - CHAR_BASE + self.min_coeff for ch in kept]
        return idct(coeffs.reshape(horizon, dim) / self.scale, type=2, norm="ortho", axis=0)

    def to_dict(self) -> dict:
        self._check_fitted()
        return {
            "type": self.kind,
            "scale": self.scale,
            "vocab_size": self.requested_vocab_size,
            "min_coeff": self.min_coeff,
            "max_coeff": self.max_coeff,
            "bpe": json.loads(self._bpe.to_str()),
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, d: dict) -> FastTokenizer:
        if d.get("type") != cls.kind:
            raise ValueError(f"not a FAST tokenizer file (type {d.get('type')!r})")
        tok = cls(scale=d["scale"], vocab_size=d["vocab_size"])
        tok.min_coeff, tok.max_coeff = int(d["min_coeff"]), int(d["max_coeff"])
        tok._bpe = Tokenizer.from_str(json.dumps(d["bpe"]))
        return tok

    @classmethod
    def load(cls, path: str | Path) -> FastTokenizer:
        return cls.from_dict(json.loads(Path(path).read_text()))
