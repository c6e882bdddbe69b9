"""The study's table and plots, from whatever `<out>/results.jsonl` holds (`store.py`).

`<out>/table.md`: (1) one row per recipe at its last evaluated step: closed-loop success and
instruction following with canonical and held-out phrasings (`ki-vla eval` at real speed, and in
one process at a fixed 80 ms with more episodes), the instruction-swap probe (the flow
expert's first-chunk error with its own words, and how often the colour / arm word was read),
VQA accuracy (beside the base's),
steps to reach the success threshold, wall time per training step, FAST-token decoding's success
and chunk latency beside the flow expert's (exact decoding, and at the last step the reference
implementations' relaxed decoding: success, followed, chunks published), the held-out action MSE; (2) the curves: every
recipe at every evaluated step. A cell is the mean over the seeds measured there, the seeds'
own values in brackets; "—" where nothing was measured, "failed" where every seed's measurement
failed. `<out>/curves.png` (in-process success with canonical and held-out phrasings, FAST success, VQA,
words read against the step) and
`<out>/timing.png` (ms per training step; chunk latency of the expert and of FAST decoding).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ki_vla_ros.study.store import ResultStore

CLOSED = ("expert_canonical", "expert_heldout", "fast_canonical", "fast_relaxed")


class Results:
    """Rows indexed by (recipe, seed, step, measure), with the helpers the table and plots share."""

    def __init__(self, rows: list[dict], recipes: list[str] | None = None):
        self.rows = {ResultStore.key(r): r for r in rows}
        seen = list(dict.fromkeys(r["recipe"] for r in rows if r["recipe"] != "base"))
        self.recipes = [r for r in (recipes or []) if r in seen] + [r for r in seen if r not in (recipes or [])]

    def seeds(self, recipe: str) -> list[int]:
        return sorted({k[1] for k in self.rows if k[0] == recipe})

    def steps(self, recipe: str) -> list[int]:
        return sorted({k[2] for k in self.rows if k[0] == recipe and k[3] != "train"})

    def value(self, recipe: str, seed, step: int, measure: str, key: str):
        """The value, None when not measured, "failed" when the measurement failed."""
        row = self.rows.get((recipe, seed, step, measure))
        if row is None:
            return None
        return "failed" if "error" in row else row.get(key)

    def per_seed(self, recipe: str, step: int, measure: str, key: str) -> dict:
        out = {s: self.value(recipe, s, step, measure, key) for s in self.seeds(recipe)}
        return {s: v for s, v in out.items() if v is not None}

    def mean(self, recipe: str, step: int, measure: str, key: str) -> float | None:
        vals = [v for v in self.per_seed(recipe, step, measure, key).values() if v != "failed"]
        return float(np.mean(vals)) if vals else None

    def steps_to(self, recipe: str, seed, threshold: float) -> int | None:
        """First evaluated step whose canonical closed-loop success reaches `threshold`: the flow
        expert in process at a fixed latency where measured (most episodes), else at real speed;
        FAST decoding for recipes without an expert."""
        for step in self.steps(recipe):
            for m in ("sim_canonical", "expert_canonical", "fast_canonical"):
                v = self.value(recipe, seed, step, m, "success_rate")
                if v is not None:
                    if v != "failed" and v >= threshold:
                        return step
                    break
        return None

    def train_ms(self, recipe: str) -> dict:
        """{seed: ms per training step} of the recipe's finished runs."""
        return {k[1]: row["ms_per_step"] for k, row in self.rows.items()
                if k[0] == recipe and k[3] == "train" and row.get("ms_per_step") is not None}

    @property
    def base_vqa(self) -> float | None:
        row = self.rows.get(("base", None, 0, "vqa"))
        return None if row is None or "error" in row else row["accuracy"]


def _num(v, fmt: str) -> str:
    return "failed" if v == "failed" else format(v, fmt)


def cell(per_seed: dict, fmt: str = ".0%") -> str:
    """mean [seed values] over the seeds measured; "—" / "failed" when none / all failed."""
    if not per_seed:
        return "—"
    ok = [v for v in per_seed.values() if v != "failed"]
    if not ok:
        return "failed"
    mean = format(float(np.mean(ok)), fmt)
    return mean if len(per_seed) == 1 else f"{mean} [{', '.join(_num(v, fmt) for v in per_seed.values())}]"


# (measurement, metric, format) per table column, after the recipe / seeds / step columns
SIM_COLUMNS = [("sim_canonical", "success_rate", ".0%"), ("sim_heldout", "success_rate", ".0%"),
               ("sim_canonical", "instruction_following_rate", ".0%")]
LANGUAGE_COLUMNS = [("language", "own_first_chunk_arm_mae_rad", ".3f"), ("language", "colour_read", ".0%"),
                    ("language", "arm_read", ".0%")]
# the summary's measured columns before and after "steps to the threshold" and "ms / step"
SUMMARY_BEFORE = [("expert_canonical", "success_rate", ".0%"), ("expert_heldout", "success_rate", ".0%"),
                  ("expert_canonical", "instruction_following_rate", ".0%"),
                  ("expert_heldout", "instruction_following_rate", ".0%"), *SIM_COLUMNS, *LANGUAGE_COLUMNS,
                  ("vqa", "accuracy", ".2f")]
SUMMARY_AFTER = [("fast_canonical", "success_rate", ".0%"), ("fast_canonical", "inference_ms_p50", ".0f"),
                 ("fast_relaxed", "success_rate", ".0%"), ("fast_relaxed", "instruction_following_rate", ".0%"),
                 ("fast_relaxed", "chunks", ".0f"), ("fast_relaxed", "inference_ms_p50", ".0f"),
                 ("expert_canonical", "inference_ms_p50", ".0f"), ("offline", "action_mse", ".3f")]
CURVE_COLUMNS = [("expert_canonical", "success_rate", ".0%"), ("expert_heldout", "success_rate", ".0%"),
                 ("expert_canonical", "instruction_following_rate", ".0%"), *SIM_COLUMNS[:2], *LANGUAGE_COLUMNS[1:],
                 ("fast_canonical", "success_rate", ".0%"),
                 ("vqa", "accuracy", ".2f"), ("offline", "action_mse", ".3f"), ("offline", "fast_token_acc", ".2f")]


def _cells(res: Results, recipe: str, step: int, columns) -> list[str]:
    return [cell(res.per_seed(recipe, step, measure, metric), fmt) for measure, metric, fmt in columns]


def summary_table(res: Results, threshold: float) -> str:
    head = ["recipe", "seeds", "step", "success", "success held-out", "followed", "followed held-out",
            "success 80 ms", "success 80 ms held-out", "followed 80 ms", "first chunk err (rad)", "colour read",
            "arm read",
            "VQA acc" + (f" (base {res.base_vqa:.2f})" if res.base_vqa is not None else ""),
            f"steps to {threshold:.0%}", "ms / step", "FAST success", "FAST chunk ms", "FAST relaxed success",
            "FAST relaxed followed", "FAST relaxed chunks", "FAST relaxed chunk ms", "expert chunk ms", "action MSE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res.recipes:
        steps = res.steps(r)
        if not steps:
            continue
        last, seeds = steps[-1], res.seeds(r)
        reached = [res.steps_to(r, s, threshold) for s in seeds]
        lines.append("| " + " | ".join([
            f"`{r}`", str(len(seeds)), str(last),
            *_cells(res, r, last, SUMMARY_BEFORE),
            ", ".join("—" if x is None else str(x) for x in reached),
            cell(res.train_ms(r), ".0f"),
            *_cells(res, r, last, SUMMARY_AFTER),
        ]) + " |")
    return "\n".join(lines)


def curves_table(res: Results) -> str:
    head = ["recipe", "step", "seeds", "success", "success held-out", "followed", "success 80 ms",
            "success 80 ms held-out", "colour read", "arm read",
            "FAST success", "VQA acc", "action MSE", "FAST token acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res.recipes:
        for step in res.steps(r):
            n = len({k[1] for k in res.rows if k[0] == r and k[2] == step})
            lines.append("| " + " | ".join([f"`{r}`", str(step), str(n), *_cells(res, r, step, CURVE_COLUMNS)]) + " |")
    return "\n".join(lines)


def _episodes(res: Results) -> str:
    n = defaultdict(set)
    for (_, _, _, m), row in res.rows.items():
        if m in CLOSED and "episodes" in row:
            n[m].add(row["episodes"])
    return "; ".join(f"{m}: {', '.join(map(str, sorted(v)))} episodes" for m, v in n.items()) or "no closed loop"


def plot_study(res: Results, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(res.recipes)}
    panels = (("sim_canonical", "success_rate", "closed-loop success at 80 ms, in process (canonical)"),
              ("sim_heldout", "success_rate", "closed-loop success at 80 ms, in process (held-out phrasings)"),
              ("language", "colour_read", "colour word read (instruction swap; 0.5 = ignored)"),
              ("fast_canonical", "success_rate", "FAST decoding as the policy: success"),
              ("vqa", "accuracy", "VQA accuracy (base's held-out questions)"),
              ("language", "arm_read", "arm word read (instruction swap; 0.5 = ignored)"))
    fig, axes = plt.subplots(2, 3, figsize=(17, 8))
    for ax, (m, key, title) in zip(axes.flat, panels):
        for r in res.recipes:
            pts = [(s, res.mean(r, s, m, key)) for s in res.steps(r)]
            pts = [(s, v) for s, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colours[r], label=r)
        if m == "vqa" and res.base_vqa is not None:
            ax.axhline(res.base_vqa, color="k", linestyle=":", label="base")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylim(-0.05, 1.05)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "curves.png"]
    fig.savefig(paths[0], dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(res.recipes))
    train_ms = [float(np.mean(list(v.values()))) if (v := res.train_ms(r)) else np.nan for r in res.recipes]
    axes[0].bar(x, train_ms, color=[colours[r] for r in res.recipes])
    axes[0].set_title("wall time per training step (ms)", fontsize=10)
    for i, m in enumerate(("expert_canonical", "fast_canonical")):
        lat = [np.nan if (v := res.mean(r, max(res.steps(r) or [0]), m, "inference_ms_p50")) is None else v
               for r in res.recipes]
        axes[1].bar(x + (i - 0.5) * 0.4, lat, width=0.4, label=("flow expert", "FAST decoding")[i])
    axes[1].set_title("chunk latency in closed loop, median (ms)", fontsize=10)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x, res.recipes, rotation=30, fontsize=8)
    fig.tight_layout()
    paths.append(out / "timing.png")
    fig.savefig(paths[1], dpi=80)
    plt.close(fig)
    return paths


def write_report(out: str | Path, threshold: float = 0.5, recipes: list[str] | None = None) -> Path:
    """table.md, curves.png and timing.png in `out` from its results.jsonl."""
    out = Path(out)
    res = Results(ResultStore(out / "results.jsonl").rows(), recipes)
    text = [f"# Recipe study: {out}", "",
            f"{len(res.rows)} results; {_episodes(res)}. Cells: mean over seeds [per seed].", "",
            "## At the last evaluated step", "", summary_table(res, threshold), "",
            "## Over training", "", curves_table(res), ""]
    path = out / "table.md"
    path.write_text("\n".join(text))
    plot_study(res, out)
    return path
