"""`ki-vla study`: the recipe study on one pretrained vision-language base (docs/recipe_comparison.md).

    ki-vla study --config config/study/recipe_study.yaml     # rerun the same command to resume
    ki-vla study --config ... --report-only                  # table.md + plots from the results so far

For each seed, for each recipe (so the first seed of every recipe completes before the second):
train from the base (`ki-vla train`'s `train()`, resumed from the run's latest checkpoint when a
killed study left one), then at every step of `eval_steps`, from that checkpoint's model folder:
the trainer's held-out metrics, closed-loop success and instruction following with the canonical
and the held-out phrasings (`ki-vla eval`, flow policy), the same with FAST-token decoding as the
policy where the recipe trains FAST tokens, and VQA accuracy of the backbone on the base's held-out
questions. Every result goes to `<out>/results.jsonl` as it completes (`store.py`); a rerun skips
what is there (`--retry-failed`: also redo measurements that failed). After each run and at the
end, `report.py` writes `<out>/table.md` and the plots from whatever results exist.

Layout of `<out>`: ``base_run/`` (when the study made the base), ``runs/<recipe>/seed<k>/`` (the
training run: checkpoints at the evaluated steps, logs, ``models/step_N`` while it is evaluated —
the last step's folder is kept —, ``eval/step_N_<measure>/`` with each `ki-vla eval`'s results and
logs), ``results.jsonl``, ``table.md``, ``*.png``, ``study.log``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from functools import partial
from pathlib import Path

import numpy as np
import yaml

from ki_vla_ros.configio import ConfigError, from_dict, load_config, to_dict
from ki_vla_ros.model.recipes import RECIPES
from ki_vla_ros.study.config import ClosedLoopSection, StudyConfig
from ki_vla_ros.study.report import write_report
from ki_vla_ros.study.store import ResultStore

FAST_POLICY = "ki_vla_ros.runtime.fast_policy:FastTokenPolicy"
RELAXED_FAST_POLICY = "ki_vla_ros.runtime.fast_policy:RelaxedFastTokenPolicy"
# ModelConfig fields that fix the weights' shapes and the token id layout: base and study must agree
ARCH_FIELDS = ("image_size", "patch_size", "vision_width", "vision_depth", "vision_mlp_dim", "vision_heads", "width",
               "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "expert_width",
               "expert_mlp_dim", "num_fast_tokens", "state_bins", "state_mode")


class EvalFailed(RuntimeError):
    """A closed-loop evaluation that gave no results (the message says why; logs beside it)."""


class ClosedLoopEval:
    """The study's closed-loop evaluator: `ki-vla eval` through its Python API (`ros.demo.eval_main`),
    its output in `out_dir/eval.log`. Returns the parsed `results.json`."""

    def __init__(self, section: ClosedLoopSection):
        self.c = section

    def argv(self, model_dir: Path, out_dir: Path, instructions: str = "", policy_class: str = "") -> list[str]:
        c = self.c
        argv = ["--model", str(model_dir), "--out", str(out_dir), "--episodes", str(c.episodes),
                "--tasks", ",".join(c.tasks), "--seed", str(c.first_seed), "--threads", str(c.threads),
                "--real-time-factor", str(c.real_time_factor)]
        if c.duration:
            argv += ["--duration", str(c.duration)]
        if instructions:
            argv += ["--instructions", instructions]
        if policy_class:
            argv += ["--policy-class", policy_class]
        return argv

    def __call__(self, model_dir: Path, out_dir: Path, instructions: str = "", policy_class: str = "") -> dict:
        from ki_vla_ros.ros.demo import eval_main

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").unlink(missing_ok=True)  # from an attempt a kill interrupted
        log = out_dir / "eval.log"
        with open(log, "w") as f, redirect_stdout(f), redirect_stderr(f):
            try:
                code = eval_main(self.argv(model_dir, out_dir, instructions, policy_class))
            except SystemExit as exc:  # argparse refused the arguments
                code = exc.code
        if code != 0 or not (out_dir / "results.json").is_file():
            tail = " | ".join(line for line in log.read_text().splitlines()[-6:] if line.strip())
            raise EvalFailed(f"ki-vla eval exited with {code} ({log}): {tail[-600:]}")
        return json.loads((out_dir / "results.json").read_text())


def closed_loop_values(results: dict) -> dict:
    """The study's numbers from a `ki-vla eval` results.json. The chunk latency is the median over the
    episodes that published chunks of the node's per-episode median (None when no chunk came: e.g.
    every FAST decoding failed, and the node held)."""
    o, episodes = results["overall"], results["episodes"]
    lat = [e["inference_ms_p50"] for e in episodes if e.get("chunks") and e.get("inference_ms_p50") is not None]
    return {"success_rate": o["success_rate"], "instruction_following_rate": o["instruction_following_rate"],
            "episodes": o["episodes"], "inference_ms_p50": float(np.median(lat)) if lat else None,
            "chunks": int(sum(e.get("chunks", 0) for e in episodes)),
            "holds": int(sum(e.get("policy_holds", 0) for e in episodes)),
            "per_task": {t: r["success_rate"] for t, r in results["per_task"].items()}}


def measures_for(recipe: str, cfg: StudyConfig, step: int) -> list[str]:
    """What is measured at an evaluated step of a recipe's run."""
    r, c = RECIPES[recipe], cfg.closed_loop
    out = ["offline"]
    if c.episodes and r.use_flow:
        out += ["expert_canonical"] + (["expert_heldout"] if c.heldout_instructions else [])
    if c.episodes and c.fast_policy and r.use_fast:
        out += ["fast_canonical"] + (["fast_relaxed"] if step == cfg.steps else [])
    if cfg.fixed_latency.episodes and r.use_flow:
        out += ["sim_canonical"] + (["sim_heldout"] if c.heldout_instructions else [])
    if cfg.language.data and r.use_flow:
        out.append("language")
    if cfg.vqa.data:
        out.append("vqa")
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: str, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no such file {path!r}")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of training config keys")
    return data


def _ms_per_step(run_dir: Path) -> float | None:
    """Median wall time of a training step (ms) over the training log's intervals."""
    from ki_vla_ros.train.evaluate import read_csv

    log = read_csv(run_dir / "train_log.csv") if (run_dir / "train_log.csv").is_file() else {}
    rate = log.get("steps_per_s", np.array([]))
    rate = rate[np.isfinite(rate) & (rate > 0)]
    return float(1000.0 / np.median(rate)) if len(rate) else None


class Study:
    def __init__(self, cfg: StudyConfig, evaluate=None, log=print, retry_failed: bool = False, probe=None,
                 simulate=None):
        """`evaluate` (closed loop, `ClosedLoopEval`), `probe` (instruction swap, `Study.language`) and
        `simulate` (closed loop at a fixed latency, `Study.fixed_latency`): what measures a model
        folder; tests pass doubles."""
        self.cfg, self.log, self.retry_failed = cfg, log, retry_failed
        self.evaluate = evaluate if evaluate is not None else ClosedLoopEval(cfg.closed_loop)
        self.probe = probe if probe is not None else self.language
        self.simulate = simulate if simulate is not None else self.fixed_latency
        self.out = Path(cfg.out)
        self.store = ResultStore(self.out / "results.jsonl")

    # ---- training configs ------------------------------------------------------------------------
    def run_dir(self, recipe: str, seed: int) -> Path:
        return self.out / "runs" / recipe / f"seed{seed}"

    def train_config(self, recipe: str, seed: int):
        """The robot run's TrainConfig: `train_config` + `train_overrides` + the study's keys."""
        from ki_vla_ros.train.config import TrainConfig

        cfg, every = self.cfg, self.cfg.checkpoint_every
        data = _merge(_read_yaml(cfg.train_config, "train_config"), cfg.train_overrides)
        data.update(run_dir=str(self.run_dir(recipe, seed)), recipe=recipe, seed=seed, steps=cfg.steps,
                    model={"preset": cfg.model.preset, "overrides": dict(cfg.model.overrides),
                           "init": cfg.base.model_dir, "init_format": "model_dir"},
                    eval_every=every, checkpoint_every=every, keep_checkpoints=cfg.steps // every, progress=False)
        if cfg.threads:
            data["threads"] = cfg.threads
        return from_dict(TrainConfig, data, where=f"{cfg.train_config} (with the study's train_overrides and keys)")

    def base_train_config(self):
        from ki_vla_ros.train.config import TrainConfig

        b = self.cfg.base
        data = _read_yaml(b.train_config, "base.train_config")
        if data.get("recipe") != "vlm_pretrain":
            raise ConfigError(f"{b.train_config}: base.train_config must use recipe vlm_pretrain, "
                              f"not {data.get('recipe')!r}")
        data.update(run_dir=str(self.out / "base_run"), progress=False,
                    model={"preset": self.cfg.model.preset, "overrides": dict(self.cfg.model.overrides)})
        if b.steps:
            data["steps"] = b.steps
        if self.cfg.threads:
            data["threads"] = self.cfg.threads
        return from_dict(TrainConfig, data, where=f"{b.train_config} (with the study's model)")

    def train(self, tcfg) -> None:
        """Train, resume a run a kill interrupted, or nothing when its last checkpoint is there. A run
        folder made with other settings is refused (a resume would mix two schedules)."""
        from ki_vla_ros.train import checkpoint as ckpt
        from ki_vla_ros.train.trainer import train

        run_dir = Path(tcfg.run_dir)
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is not None:
            old = yaml.safe_load((run_dir / "train_config.yaml").read_text())
            new = to_dict(tcfg)
            diff = sorted(k for k in set(old) | set(new)
                          if k not in ("progress", "threads") and old.get(k) != new.get(k))
            if diff:
                raise ValueError(f"{run_dir} was trained with other settings ({diff[0]}: {old.get(diff[0])!r}, now "
                                 f"{new.get(diff[0])!r}); use a new study folder (out) or remove that run")
            if int(json.loads((latest / "trainer.json").read_text())["step"]) >= tcfg.steps:
                return
            self.log(f"[study] resuming {run_dir} from {latest.name}")
        else:
            self.log(f"[study] training {run_dir} ({tcfg.recipe}, seed {tcfg.seed}, {tcfg.steps} steps)")
        train(tcfg, resume=latest is not None, log=self.log)

    # ---- the base ----------------------------------------------------------------------------------
    def ensure_base(self) -> Path:
        """The base folder: made (vlm_pretrain, then exported) when missing and base.train_config is
        set; its architecture checked against the study's model."""
        from ki_vla_ros.runtime.model_dir import load_manifest
        from ki_vla_ros.train.to_model_dir import checkpoint_to_model_dir

        b = self.cfg.base
        path = Path(b.model_dir)
        if not (path / "model.yaml").is_file():
            if not b.train_config:
                raise FileNotFoundError(f"base.model_dir: {path} is not a model folder; make the base "
                                        f"(config/train/vlm_base.yaml) or set base.train_config")
            tcfg = self.base_train_config()
            self.train(tcfg)
            checkpoint_to_model_dir(tcfg.run_dir, path)
            self.log(f"[study] base exported to {path}")
        have, want = load_manifest(path).model, self.cfg.model.config()
        for f in ARCH_FIELDS:
            if getattr(have, f) != getattr(want, f):
                raise ValueError(f"base.model_dir: {path} has {f} = {getattr(have, f)!r}, the study's model "
                                 f"(preset {self.cfg.model.preset!r} + overrides) {getattr(want, f)!r}; set model "
                                 f"to the base's size or make a base of this size")
        return path

    # ---- measurements ------------------------------------------------------------------------------
    def _record(self, recipe, seed, step, measure, fn) -> None:
        if self.store.done(recipe, seed, step, measure, self.retry_failed):
            return
        t0 = time.perf_counter()
        try:
            values = fn()
        except EvalFailed as exc:
            values = {"error": str(exc)}
        values["seconds"] = round(time.perf_counter() - t0, 1)
        row = self.store.add(recipe, seed, step, measure, values)
        shown = {k: v for k, v in row.items() if k in ("success_rate", "instruction_following_rate", "accuracy",
                                                         "colour_read", "arm_read", "action_mse", "ms_per_step",
                                                         "error", "seconds")}
        self.log(f"[study] {recipe} seed {seed} step {step} {measure}: {json.dumps(shown)}")

    def vqa(self, model_dir: Path) -> dict:
        from ki_vla_ros.train.vqa_eval import evaluate_vqa

        v = self.cfg.vqa
        res = evaluate_vqa(model_dir, v.data, v.train_data or None, limit=v.limit, batch_size=v.batch_size,
                           threads=self.cfg.threads)
        o = res["overall"]
        return {"accuracy": o["accuracy"], "mean_over_kinds": o["mean_over_kinds"],
                "majority_baseline": o["majority_baseline"], "n": o["n"],
                "per_kind": {k: r["accuracy"] for k, r in res["per_kind"].items()}}

    def language(self, model_dir: Path) -> dict:
        """The instruction-swap probe of the flow expert on `language.data`; `colour_read` / `arm_read`:
        the share of episodes whose own words put the arm nearer the demonstration than the swapped
        colour / arm did (0.5: the word is ignored)."""
        from ki_vla_ros.runtime import Policy
        from ki_vla_ros.sim.instruction_swap import instruction_swap

        res = instruction_swap(Policy.load(model_dir), self.cfg.language.data, self.cfg.language.every)
        n = res["episodes"]
        return {**res, "colour_read": res["own_closer_than_colour_swapped"] / n,
                "arm_read": res["own_closer_than_arm_swapped"] / n}

    def fixed_latency(self, model_dir: Path, heldout: bool) -> dict:
        """The flow policy (ONNX Runtime, fp32, as `ki-vla eval` runs it) in one process at a fixed
        latency on the closed loop's tasks and scene seeds, canonical or held-out phrasings."""
        from ki_vla_ros.export.cli import ensure_export
        from ki_vla_ros.runtime import Policy
        from ki_vla_ros.sim.fixed_latency import evaluate_fixed_latency

        c, f = self.cfg.closed_loop, self.cfg.fixed_latency
        ensure_export(model_dir)
        policy = Policy.load(model_dir, backend="onnxruntime", threads=c.threads or None)
        said = json.loads(Path(c.heldout_instructions).read_text()) if heldout else None
        return evaluate_fixed_latency(policy, list(c.tasks), f.episodes, c.first_seed, f.latency_steps, said,
                                      f.duration)

    def closed_loop(self, model_dir: Path, out_dir: Path, measure: str) -> dict:
        heldout = measure.endswith("heldout")
        policy_class = {"fast_canonical": FAST_POLICY, "fast_relaxed": RELAXED_FAST_POLICY}.get(measure, "")
        return closed_loop_values(self.evaluate(model_dir, out_dir, self.cfg.closed_loop.heldout_instructions
                                                if heldout else "", policy_class))

    def measure(self, measure: str, run_dir: Path, step: int, model_dir: Path, offline: dict) -> dict:
        """One measurement of the model folder of `run_dir` at `step` (offline: its eval.csv rows)."""
        from ki_vla_ros.train.checkpoint import step_name

        if measure == "offline":
            i = np.flatnonzero(offline.get("step", np.array([])) == step)
            if not len(i):
                return {"error": f"{run_dir / 'eval.csv'} has no row for step {step}"}
            return {k: float(v[i[-1]]) for k, v in offline.items() if k != "step"}
        if measure == "vqa":
            return self.vqa(model_dir)
        if measure == "language":
            return self.probe(model_dir)
        if measure.startswith("sim_"):
            return self.simulate(model_dir, measure == "sim_heldout")
        return self.closed_loop(model_dir, run_dir / "eval" / f"{step_name(step)}_{measure}", measure)

    def evaluate_run(self, recipe: str, seed: int) -> None:
        from ki_vla_ros.train import checkpoint as ckpt
        from ki_vla_ros.train.evaluate import read_csv
        from ki_vla_ros.train.to_model_dir import checkpoint_to_model_dir

        cfg, run_dir = self.cfg, self.run_dir(recipe, seed)
        self._record(recipe, seed, cfg.steps, "train", lambda: {
            "ms_per_step": _ms_per_step(run_dir),
            "precision": json.loads((ckpt.latest_checkpoint(run_dir) / "trainer.json").read_text())["precision"]})
        offline = read_csv(run_dir / "eval.csv") if (run_dir / "eval.csv").is_file() else {}
        for step in cfg.eval_steps:
            todo = [m for m in measures_for(recipe, cfg, step) if not self.store.done(recipe, seed, step, m,
                                                                                  self.retry_failed)]
            if not todo:
                continue
            model_dir = run_dir / "models" / ckpt.step_name(step)
            if not (model_dir / "model.yaml").is_file():
                checkpoint_to_model_dir(ckpt.checkpoint_dir(run_dir) / ckpt.step_name(step), model_dir)
            for m in todo:
                self._record(recipe, seed, step, m, partial(self.measure, m, run_dir, step, model_dir, offline))
            if step != cfg.steps:
                shutil.rmtree(model_dir)

    def prune(self, recipe: str, seed: int) -> None:
        """After training: only the evaluated checkpoints stay (the trainer keeps every checkpoint)."""
        from ki_vla_ros.train import checkpoint as ckpt

        for p in ckpt.list_checkpoints(self.run_dir(recipe, seed)):
            if int(p.name.removeprefix("step_")) not in self.cfg.eval_steps:
                shutil.rmtree(p)

    # ---- the study ---------------------------------------------------------------------------------
    def complete(self, recipe: str, seed: int) -> bool:
        """Every measurement of the run is stored: nothing to train or measure, even with no run folder."""
        done = partial(self.store.done, recipe, seed, retry_failed=self.retry_failed)
        return done(self.cfg.steps, "train") and all(done(step, m) for step in self.cfg.eval_steps
                                                      for m in measures_for(recipe, self.cfg, step))

    def run(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        base = self.ensure_base()
        if cfg.vqa.data:
            self._record("base", None, 0, "vqa", lambda: self.vqa(base))
        for seed in cfg.seeds:
            for recipe in cfg.recipes:
                if self.complete(recipe, seed):  # e.g. a results record carried from another machine
                    continue
                self.train(self.train_config(recipe, seed))
                self.prune(recipe, seed)
                self.evaluate_run(recipe, seed)
                self.report()
        return self.report()

    def report(self) -> Path:
        return write_report(self.out, self.cfg.success_threshold, self.cfg.recipes)


def study_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ki-vla study", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--config", required=True, help="study config YAML (config/study/*.yaml)")
    ap.add_argument("--out", default="", help="override the config's out folder")
    ap.add_argument("--retry-failed", action="store_true", help="redo measurements stored with an error")
    ap.add_argument("--report-only", action="store_true", help="only write table.md and the plots from results.jsonl")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(StudyConfig, a.config)
        if a.out:
            cfg = dataclasses.replace(cfg, out=a.out)
    except ConfigError as exc:
        print(f"ki-vla study: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.config, out / "study_config.yaml")  # the settings of the latest invocation

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(out / "study.log", "a") as f:
            f.write(msg + "\n")

    study = Study(cfg, log=log, retry_failed=a.retry_failed)
    try:
        path = study.report() if a.report_only else study.run()
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"ki-vla study: {exc}", file=sys.stderr)
        return 1
    print(f"ki-vla study: {path} ({len(study.store.rows())} results in {study.store.path})")
    return 0
