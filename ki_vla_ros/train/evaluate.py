"""Held-out evaluation and the learning-curve plot.

Metrics (all on a fixed held-out set, with fixed noise and flow times, so numbers are comparable
between evaluations and the training RNG is never touched):

* ``val_loss``, ``val_flow_loss``, ``val_fast_loss``, ``val_text_loss`` — `compute_loss` terms;
* ``action_mse`` — MSE of actions sampled from the inference prefix (`num_flow_steps` Euler
  steps, fixed noise) against the ground-truth chunk, normalised units, real dims only;
* ``fast_token_acc`` — teacher-forced argmax accuracy on the discrete action targets;
* ``vlm_token_acc`` — teacher-forced argmax accuracy on VLM answer tokens, and
  ``vlm_answer_acc`` — share of answers whose every token is right (teacher-forced).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.model.masks import FAST, TEXT
from ki_vla_ros.tokenize.prompt import collate

EVAL_KEYS = ("val_loss", "val_flow_loss", "val_fast_loss", "val_text_loss", "action_mse", "fast_token_acc",
             "vlm_token_acc", "vlm_answer_acc")


@torch.no_grad()
def evaluate(model, examples: list[dict], batch_size: int, num_steps: int, device, seed: int = 0) -> dict:
    was_training = model.training
    model.eval()
    c = model.config
    g = torch.Generator().manual_seed(seed)
    sums = {k: 0.0 for k in EVAL_KEYS}
    counts = {k: 0 for k in EVAL_KEYS}
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size])
        b = batch["tokens"].shape[0]
        batch["noise"] = torch.randn(b, c.action_horizon, c.action_dim, generator=g)
        batch["time"] = torch.rand(b, generator=g) * 0.998 + 0.001
        batch = {k: v.to(device) for k, v in batch.items()}
        losses = model.compute_loss(batch)
        act = batch["action_mask"]
        tgt_kind, tgt_lm = batch["token_kind"][:, 1:], batch["loss_mask"][:, 1:]
        weights = {"loss": b, "flow_loss": int(act.sum()), "fast_loss": int((tgt_lm & (tgt_kind == FAST)).sum()),
                   "text_loss": int((tgt_lm & (tgt_kind == TEXT)).sum())}
        for k, w in weights.items():  # each term averaged over what it is a mean of
            sums[f"val_{k}"] += float(losses[k]) * w
            counts[f"val_{k}"] += w
        if act.any():
            pred = model.sample_actions(batch["images"][act], batch["image_mask"][act], batch["prefix_tokens"][act],
                                        batch["prefix_mask"][act], batch["state"][act], batch["noise"][act],
                                        num_steps)
            dm = batch["action_dim_mask"][act].float()[:, None, :]
            err = ((pred - batch["actions"][act]) ** 2 * dm).sum((1, 2)) / (dm.sum((1, 2)) * 1).clamp(min=1)
            err = err / c.action_horizon
            sums["action_mse"] += float(err.sum())
            counts["action_mse"] += int(act.sum())
        logits, _ = model.outputs(batch["images"], batch["image_mask"], batch["tokens"], batch["token_kind"],
                                  batch["state"])
        pred_tok = logits[:, :-1].argmax(-1)
        tgt, kind, lm = batch["tokens"][:, 1:], batch["token_kind"][:, 1:], batch["loss_mask"][:, 1:]
        right = pred_tok == tgt
        fast = lm & (kind == FAST)
        text = lm & (kind == TEXT)
        sums["fast_token_acc"] += float((right & fast).sum())
        counts["fast_token_acc"] += int(fast.sum())
        sums["vlm_token_acc"] += float((right & text).sum())
        counts["vlm_token_acc"] += int(text.sum())
        has_text = text.any(1)
        all_right = ((right | ~text).all(1) & has_text)
        sums["vlm_answer_acc"] += float(all_right.sum())
        counts["vlm_answer_acc"] += int(has_text.sum())
    model.train(was_training)
    return {k: (sums[k] / counts[k] if counts[k] else float("nan")) for k in EVAL_KEYS}


class CsvLog:
    """Append-only CSV with a fixed header; on resume rows after the resumed step are dropped."""

    def __init__(self, path: Path, fields: list[str], truncate_after: int | None = None):
        self.path, self.fields = Path(path), ["step", *fields]
        rows = []
        if self.path.is_file() and truncate_after is not None:
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= truncate_after]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)

    def write(self, step: int, values: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({"step": step, **{k: values.get(k, "") for k in self.fields[1:]}})


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]}


def plot_curves(run_dir: Path) -> Path | None:
    """<run_dir>/curves.png: training loss terms and the held-out metrics against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = read_csv(run_dir / "train_log.csv") if (run_dir / "train_log.csv").is_file() else {}
    ev = read_csv(run_dir / "eval.csv") if (run_dir / "eval.csv").is_file() else {}
    if not train and not ev:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k in ("loss", "flow_loss", "fast_loss", "text_loss"):
        if k in train and np.isfinite(train[k]).any():
            axes[0].plot(train["step"], train[k], label=k)
    for k in ("val_loss", "val_flow_loss", "action_mse"):
        if k in ev and np.isfinite(ev[k]).any():
            axes[1].plot(ev["step"], ev[k], marker="o", label=k)
    for k in ("fast_token_acc", "vlm_token_acc", "vlm_answer_acc"):
        if k in ev and np.isfinite(ev[k]).any():
            axes[2].plot(ev["step"], ev[k], marker="o", label=k)
    for ax, title in zip(axes, ("training losses", "held-out losses / action MSE", "held-out accuracy")):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
