"""The study's results: `<out>/results.jsonl`, one JSON object per completed measurement.

A row is ``{"recipe", "seed", "step", "measure", "seconds", ...values}`` (or ``"error"`` instead of
the values when the measurement failed), appended and flushed to disk the moment it completes, so
a killed study keeps everything it finished and a rerun skips it. Measures:

* ``train``    — at the last step: ``ms_per_step`` (median over the training log), ``precision``;
* ``offline``  — the trainer's held-out metrics at that step (`train/evaluate.py`: action_mse, ...);
* ``expert_canonical`` / ``expert_heldout`` — `ki-vla eval` of the flow policy with the canonical /
  held-out phrasings: ``success_rate``, ``instruction_following_rate``, ``episodes``,
  ``inference_ms_p50`` (median over episodes of the node's per-episode median), ``holds``, ``per_task``;
* ``fast_canonical`` — the same for FAST-token decoding as the policy (`runtime/fast_policy.py`);
* ``fast_relaxed`` — the same with the reference implementations' relaxed FAST decoding
  (`RelaxedFastTokenPolicy`), at the last step only;
* ``sim_canonical`` / ``sim_heldout`` — the flow policy's closed loop in one process at a fixed latency
  (`sim/fixed_latency.py`), the same tasks, scenes and phrasings: ``success_rate``,
  ``instruction_following_rate``, ``episodes``, ``per_task``;
* ``language`` — the instruction-swap probe of the flow expert on held-out episodes
  (`sim/instruction_swap.py`): ``episodes``, the first-chunk arm error with the own / colour-swapped /
  arm-swapped words, ``colour_read`` and ``arm_read`` (share of episodes the own words did better);
* ``vqa``      — VQA exact match of the backbone on the base's held-out questions (`train/vqa_eval.py`):
  ``accuracy``, ``mean_over_kinds``, ``majority_baseline``, ``n``, ``per_kind``.

The base itself is recipe ``base`` (seed null, step 0). When a key appears twice the later row counts.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

MEASURES = ("train", "offline", "expert_canonical", "expert_heldout", "fast_canonical", "fast_relaxed", "sim_canonical",
            "sim_heldout", "language", "vqa")


def _plain(v):
    """JSON-safe values: NaN / inf -> None (JSON has no NaN), numpy scalars -> Python numbers."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows: dict[tuple, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill mid-write: that measurement is redone
                    continue
                self._rows[self.key(row)] = row

    @staticmethod
    def key(row: dict) -> tuple:
        return row["recipe"], row["seed"], row["step"], row["measure"]

    def get(self, recipe: str, seed: int | None, step: int, measure: str) -> dict | None:
        return self._rows.get((recipe, seed, step, measure))

    def done(self, recipe: str, seed: int | None, step: int, measure: str, retry_failed: bool = False) -> bool:
        row = self.get(recipe, seed, step, measure)
        return row is not None and not (retry_failed and "error" in row)

    def add(self, recipe: str, seed: int | None, step: int, measure: str, values: dict) -> dict:
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; known: {MEASURES}")
        row = _plain({"recipe": recipe, "seed": seed, "step": int(step), "measure": measure, **values})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._rows[self.key(row)] = row
        return row

    def rows(self) -> list[dict]:
        return list(self._rows.values())
