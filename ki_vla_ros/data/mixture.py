"""A weighted mixture of datasets with a fixed seed, resumable exactly.

Each draw picks a dataset with probability weight / sum(weights) (numpy PCG64 seeded with `seed`),
then the next item of that dataset's current epoch (a permutation seeded with (seed, dataset,
epoch), so every item is seen once per epoch). `state_dict()` is plain JSON (generator state and
per-dataset epoch / position); `load_state_dict` continues the identical sequence.

For data parallelism every rank runs the same sampler and draws the *global* batch, then keeps its
own slice (`draw(n_global)[rank::world]` style slicing is done by the trainer), so the union of
the ranks' data is the same as for one process with the global batch.
"""

from __future__ import annotations

import numpy as np


class MixtureSampler:
    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("MixtureSampler: need one weight per dataset and at least one dataset")
        w = np.asarray(weights, np.float64)
        if (w < 0).any() or not np.isfinite(w).all():
            raise ValueError(f"MixtureSampler: weights must be finite and >= 0, got {list(weights)}")
        w = np.where(np.asarray(sizes) > 0, w, 0.0)
        if w.sum() <= 0:
            raise ValueError("MixtureSampler: no dataset with a positive weight has any samples")
        self.sizes, self.p, self.seed = [int(s) for s in sizes], w / w.sum(), int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.epoch = [0] * len(sizes)
        self.pos = [0] * len(sizes)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, d: int, epoch: int) -> np.ndarray:
        key = (d, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.sizes):
                self._perms.clear()
            self._perms[key] = np.random.default_rng([self.seed, d, epoch]).permutation(self.sizes[d])
        return self._perms[key]

    def draw(self, n: int) -> list[tuple[int, int]]:
        """The next n (dataset, item) pairs."""
        out = []
        for d in self.rng.choice(len(self.sizes), size=n, p=self.p):
            d = int(d)
            out.append((d, int(self._perm(d, self.epoch[d])[self.pos[d]])))
            self.pos[d] += 1
            if self.pos[d] == self.sizes[d]:
                self.pos[d], self.epoch[d] = 0, self.epoch[d] + 1
        return out

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "epoch": list(self.epoch), "pos": list(self.pos),
                "sizes": list(self.sizes)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["sizes"]) != self.sizes:
            raise ValueError(f"sampler state is for dataset sizes {state['sizes']}, the data now has {self.sizes} "
                             f"(the data changed since the checkpoint)")
        self.rng.bit_generator.state = state["rng"]
        self.epoch, self.pos = list(state["epoch"]), list(state["pos"])
