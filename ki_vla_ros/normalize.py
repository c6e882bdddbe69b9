"""Quantile normalisation of robot states and actions (the statistics stored with a model).

x_norm = 2 (x - q01) / (q99 - q01) - 1, so the 1st and 99th percentiles map to -1 and 1.
Values outside are not clipped. Both directions are LeRobot's π0.5 QUANTILES rule, also for a
dimension whose q01 == q99: its divisor becomes 1e-8, so the value q01 itself maps to -1 (and
-1 back to q01); anything else maps far outside [-1, 1], as in LeRobot.

Statistics computed here from the project's own data (`QuantileStats.compute(values, min_range)`)
widen a range narrower than `min_range` symmetrically around its midpoint: a joint that barely
moves in the demonstrations (an idle arm: q01..q99 of 1e-6..4e-3 rad) would otherwise normalise
its sensor noise to ±10 and more. The stored file keeps plain q01/q99 (the widened values), so
the runtime and imported π0.5 statistics are read unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ZERO_RANGE_DIVISOR = 1e-8  # LeRobot's normaliser eps, used where q99 == q01


@dataclass
class QuantileStats:
    q01: np.ndarray  # [D]
    q99: np.ndarray  # [D]

    @classmethod
    def compute(cls, values: np.ndarray, min_range: float = 0.0) -> QuantileStats:
        """Per-dimension 1st/99th percentiles of `values` [N, D] (NaN rows are an error); a range
        q99 - q01 below `min_range` is widened to `min_range` around its midpoint."""
        values = np.asarray(values, np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError(f"expected values of shape [N, D] with N > 0, got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("cannot compute normalisation statistics: values contain NaN or inf")
        if min_range < 0:
            raise ValueError(f"min_range must be >= 0, got {min_range}")
        q01, q99 = np.quantile(values, 0.01, axis=0), np.quantile(values, 0.99, axis=0)
        narrow = q99 - q01 < min_range
        mid = 0.5 * (q01 + q99)
        return cls(np.where(narrow, mid - 0.5 * min_range, q01), np.where(narrow, mid + 0.5 * min_range, q99))

    @property
    def dim(self) -> int:
        return len(self.q01)

    def _divisor(self) -> np.ndarray:
        span = self.q99 - self.q01
        return np.where(span == 0, ZERO_RANGE_DIVISOR, span)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return 2.0 * (np.asarray(x, np.float64) - self.q01) / self._divisor() - 1.0

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) + 1.0) * 0.5 * self._divisor() + self.q01

    def to_dict(self) -> dict:
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist()}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> QuantileStats:
        try:
            q01 = np.asarray(data["q01"], np.float64)
            q99 = np.asarray(data["q99"], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: expected 'q01' and 'q99' lists of numbers ({exc})") from None
        if q01.shape != q99.shape or q01.ndim != 1:
            raise ValueError(f"{where}: q01 and q99 must be equal-length lists, got {q01.shape}, {q99.shape}")
        if not (np.isfinite(q01).all() and np.isfinite(q99).all()):
            raise ValueError(f"{where}: statistics contain NaN or inf")
        if (q99 < q01).any():
            raise ValueError(f"{where}: q99 is below q01 in dimension {int(np.argmax(q99 < q01))}")
        return cls(q01, q99)


@dataclass
class NormStats:
    state: QuantileStats
    actions: QuantileStats

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"state": self.state.to_dict(), "actions": self.actions.to_dict()}))

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read normalisation statistics ({exc})") from None
        if not isinstance(data, dict) or set(data) != {"state", "actions"}:
            raise ValueError(f"{path}: expected keys 'state' and 'actions'")
        return cls(QuantileStats.from_dict(data["state"], f"{path}: state"),
                   QuantileStats.from_dict(data["actions"], f"{path}: actions"))
