"""Everything the trainer needs from the data: datasets, normalisation statistics, tokenizers, the
mixture, the example builder and the fixed held-out set.

Assets (fitted once, at the start of a fresh run, by rank 0, then read by every rank and on
``--resume``) live in ``<run_dir>/assets/``: ``text_tokenizer.json`` (or
``text_tokenizer.model``: a published SentencePiece model), ``action_tokenizer.json``,
``norm_stats/<dataset>.json`` (1st/99th percentiles of the training episodes, robot units),
``model.yaml`` (the final ModelConfig), ``layout.yaml`` (the export dataset's cameras, state and
action names, control rate), ``data_report.json`` (what reading found: counts and problems).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ki_vla_ros.configio import dump_config, load_config
from ki_vla_ros.data.errors import DatasetError
from ki_vla_ros.data.examples import ExampleBuilder
from ki_vla_ros.data.lerobot import dataset_norm_stats
from ki_vla_ros.data.mixture import MixtureSampler
from ki_vla_ros.data.robot import RobotDataset, load_robot_episodes, split_episodes
from ki_vla_ros.data.vlm import load_vlm_jsonl, read_image, split_by_image
from ki_vla_ros.delta_actions import DeltaActions
from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.model.recipes import get_recipe
from ki_vla_ros.normalize import NormStats, QuantileStats
from ki_vla_ros.runtime.model_dir import Layout, load_manifest, text_tokenizer_path
from ki_vla_ros.tokenize.fast import FastTokenizer
from ki_vla_ros.tokenize.naive import NaiveTokenizer, load_action_tokenizer
from ki_vla_ros.tokenize.prompt import PromptBuilder
from ki_vla_ros.tokenize.text import TextTokenizer
from ki_vla_ros.train.config import TrainConfig


class VLMDataset:
    def __init__(self, records, indices, image_size: int):
        self.records, self.indices, self.size = records, list(indices), image_size

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, i: int):
        r = self.records[self.indices[i]]
        return [read_image(p, self.size) for p in r.images], r.prompt, r.answer


@dataclass
class TrainData:
    config: ModelConfig
    names: list[str]
    kinds: list[str]
    train: list  # RobotDataset | VLMDataset per dataset
    val: list
    sampler: MixtureSampler
    builder: ExampleBuilder
    layout: Layout
    text_tokenizer: TextTokenizer
    action_tokenizer: object
    norm_stats: dict[str, NormStats]
    export_dataset: str
    report: dict

    def example(self, d: int, i: int, split: str = "train") -> dict:
        ds = (self.train if split == "train" else self.val)[d]
        if self.kinds[d] == "vlm":
            return self.builder.vlm(*ds.raw(i))
        return self.builder.robot(ds.raw(i), self.names[d])

    def eval_examples(self, n: int, seed: int) -> list[dict]:
        """A fixed held-out set: up to n robot and n VLM examples, spread evenly over the held-out data."""
        out = []
        for want in ("robot", "vlm"):
            pool = [(d, i) for d, ds in enumerate(self.val) if (self.kinds[d] == "vlm") == (want == "vlm")
                    for i in range(len(ds))]
            if pool:
                pick = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
                out += [self.example(*pool[j], split="val") for j in sorted(pick)]
        return out


def _derived_config(cfg: TrainConfig, state_dims: list[int], action_dims: list[int]) -> ModelConfig:
    """Preset + overrides; widths padded to cover every robot dataset (multiple of 8; a text/tokens
    state exactly that, a continuous one at least the preset's) and a text prefix long enough for
    the padded state, unless the overrides set them."""
    base = ModelConfig.preset(cfg.model.preset)
    o = dict(cfg.model.overrides)

    def pad8(n):
        return max(8, -(-n // 8) * 8)

    mode = o.get("state_mode", base.state_mode)
    # the prompt writes the state padded to state_dim (LeRobot's rule), so a text/tokens state from
    # scratch keeps state_dim tight; a continuous state's projection, and fine-tuning from a π0.5
    # checkpoint (it saw its state padded to 32 numbers), keep at least the preset's width; a model
    # folder's own width is kept when it covers the data (a base: no longer prompt than needed)
    init_dir = Path(cfg.model.init) if cfg.model.init and cfg.model.init_format != "pi05" else None
    if init_dir is not None and (init_dir / "model.yaml").is_file():
        o.setdefault("state_dim", max(load_manifest(init_dir).model.state_dim, pad8(max(state_dims))))
    tight = mode != "continuous" and not cfg.model.init
    o.setdefault("state_dim", pad8(max(state_dims)) if tight else max(base.state_dim, pad8(max(state_dims))))
    o.setdefault("action_dim", max(base.action_dim, pad8(max(action_dims))))
    if mode != "continuous":  # BOS, "Task: …" (~24), ", State: " + numbers, ";\nAction: " (~8)
        o.setdefault("max_prefix_tokens", max(base.max_prefix_tokens, (2 if mode == "text" else 1)
                                              * o["state_dim"] + 40))
    return get_recipe(cfg.recipe).apply(ModelConfig.preset(cfg.model.preset, **o))


def prepare_data(cfg: TrainConfig, rank: int = 0, fit_assets: bool = True, barrier=lambda: None,
                 log=print) -> TrainData:
    """Load the datasets and (fresh run, rank 0) fit and write the assets, then load them."""
    run_dir = Path(cfg.run_dir)
    assets = run_dir / "assets"
    cache = cfg.cache_dir or str(run_dir / "cache")
    recipe = get_recipe(cfg.recipe)
    image_size = ModelConfig.preset(cfg.model.preset, **{k: v for k, v in cfg.model.overrides.items()
                                                         if k in ("image_size", "patch_size")}).image_size
    # 1. read datasets (rank 0 first, so the cache is written once)
    names, kinds, trains, vals, weights, reports = [], [], [], [], [], {}
    robot_eps: dict[str, tuple] = {}

    def read_all():
        for d in cfg.datasets:
            if d.type == "vlm":
                continue
            eps, rep = load_robot_episodes(d, image_size, cache, log=log)
            if not eps:
                raise DatasetError(d.path, f"dataset '{d.name}': no episodes ({rep.summary()})")
            robot_eps[d.name] = (eps, rep)

    if rank == 0:
        read_all()
    barrier()
    if rank != 0:
        read_all()

    for d in cfg.datasets:
        if d.type == "vlm":
            if not recipe.vlm_cotrain:
                log(f"[data] recipe '{recipe.name}' does not co-train on VLM data: skipping '{d.name}'")
                continue
            records = load_vlm_jsonl(d.path)
            tr, va = split_by_image(records, d.val_fraction, cfg.seed)
            trains.append(VLMDataset(records, tr, image_size))
            vals.append(VLMDataset(records, va, image_size))
            reports[d.name] = {"records": len(records), "train": len(tr), "val": len(va)}
        else:
            eps, rep = robot_eps[d.name]
            tr_eps, va_eps = split_episodes(eps, d.val_episodes, cfg.seed)
            horizon = _horizon(cfg)
            delta = DeltaActions.from_names(d.delta_actions, eps[0].action_names, eps[0].state_names,
                                            f"datasets '{d.name}': delta_actions")
            trains.append(RobotDataset(tr_eps, horizon, delta, d.start_steps, d.start_repeat))
            vals.append(RobotDataset(va_eps, horizon, delta))
            if not len(trains[-1]):
                raise DatasetError(d.path, no_samples_problem(d, rep, horizon, held_out=len(vals[-1])))
            rep.samples = trains[-1].distinct + vals[-1].distinct  # oversampled starts counted once
            rep_d = rep.to_dict()
            rep_d.update(train_episodes=len(tr_eps), val_episodes=len(va_eps), train_samples=len(trains[-1]),
                         val_samples=len(vals[-1]))
            reports[d.name] = rep_d
            log(f"[data] {d.name}: {rep.summary()}; train {len(tr_eps)} episodes / {len(trains[-1])} samples, "
                f"held out {len(va_eps)} / {len(vals[-1])}"
                + (f" (the first {d.start_steps} steps of each episode {d.start_repeat}× in the training samples)"
                   if d.start_repeat > 1 else ""))
        names.append(d.name)
        kinds.append(d.type)
        weights.append(d.weight)

    robot_names = [n for n, k in zip(names, kinds) if k != "vlm"]
    export = cfg.export_dataset or robot_names[0]

    # 2. assets: fit (fresh run, rank 0) or load
    if fit_assets and rank == 0:
        _fit_assets(cfg, assets, names, kinds, trains, export, reports, log)
    barrier()
    model_cfg = load_config(ModelConfig, assets / "model.yaml")
    layout = load_config(Layout, assets / "layout.yaml")
    text_tok = load_text_tokenizer(assets)
    action_tok = load_action_tokenizer(assets / "action_tokenizer.json")
    norm = {n: NormStats.load(assets / "norm_stats" / f"{n}.json") for n in robot_names}
    builder = ExampleBuilder(model_cfg, PromptBuilder(text_tok, model_cfg), layout.camera_names, norm,
                             action_tok if (recipe.use_fast and recipe.action_tokenizer) else None)
    sampler = MixtureSampler([len(t) for t in trains], weights, cfg.seed)
    return TrainData(model_cfg, names, kinds, trains, vals, sampler, builder, layout, text_tok, action_tok, norm,
                     export, reports)


def no_samples_problem(d, rep, horizon: int, held_out: int = 0) -> str:
    """Why a robot dataset gave no training sample, and the setting that changes it."""
    kinds = {}
    for key, n in rep.problems.items():
        kinds[key.split(":")[0]] = kinds.get(key.split(":")[0], 0) + n
    worst = ", ".join(f"{k} x{v}" for k, v in sorted(rep.problems.items(), key=lambda kv: -kv[1])[:3])
    text = (f"dataset '{d.name}': no usable training samples ({rep.episodes} episodes, {rep.steps} steps read"
            f"{f', {held_out} held-out samples' if held_out else ''}; a sample needs a valid step and "
            f"{horizon - 1} valid steps after it)")
    if worst:
        text += f"; most common problems: {worst}"
    if kinds.get("stale"):
        age = f"{d.max_age_s} s" if d.max_age_s else "0 = half a control period"
        text += (f". Stale steps: a topic's latest message is older than max_age_s ({age}) at a control step; "
                 f"raise max_age_s in the dataset config for cameras slower than the control rate")
    elif kinds.get("missing topic") or kinds.get("no usable messages"):
        text += f". Check the embodiment's topics ('{d.embodiment}') against the bag (ros2 bag info)"
    elif kinds.get("missing"):
        text += ". Messages or video frames are missing at the control steps"
    elif rep.skipped:
        text += f"; {len(rep.skipped)} broken episode(s) were skipped (on_error: skip): {rep.skipped[0]}"
    return text


def text_tokenizer_file(assets: Path) -> Path:
    """The run's text tokenizer: `text_tokenizer.json`, or `text_tokenizer.model` (a published SentencePiece model)."""
    sp = Path(assets) / "text_tokenizer.model"
    return sp if sp.is_file() and not (Path(assets) / "text_tokenizer.json").is_file() else \
        Path(assets) / "text_tokenizer.json"


def load_text_tokenizer(assets: Path) -> TextTokenizer:
    return TextTokenizer.load(text_tokenizer_file(assets))


def load_published_text_tokenizer(path: str, model_cfg: ModelConfig, texts=()) -> TextTokenizer:
    """`tokenizers.text_tokenizer_path`, checked against the model: real pad/bos/eos ids, and every id
    of the run's `texts` (the prompt layout, instructions, VLM prompts and answers) below
    `text_vocab_limit` — a published tokenizer may be larger than the text range (Gemma's: the model
    puts action and state ids over its rarely used tail, as π0.5 does) as long as the run's text
    never produces one of those ids. Errors name the key."""
    key = "tokenizers.text_tokenizer_path"
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}: no such file {path!r}")
    try:
        tok = TextTokenizer.load(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the key
        raise ValueError(f"{key}: cannot load {path!r} as a tokenizer.json or SentencePiece .model: {exc}") from exc
    for name in ("pad_id", "bos_id", "eos_id"):
        v = getattr(tok, name)
        if not 0 <= v < tok.vocab_size:
            raise ValueError(f"{key}: {path!r} has no {name.removesuffix('_id')} token (id {v}); the prompt builder "
                             f"needs pad, bos and eos")
    limit = model_cfg.text_vocab_limit
    if tok.vocab_size > limit:
        for text in [prompt_layout_text(model_cfg), *texts]:
            high = [i for i in tok.encode(text) if i >= limit]
            if high:
                raise ValueError(f"{key}: {path!r} encodes {text[:60]!r} with id {high[0]}, inside the model's state/"
                                 f"action id range (text ids must be < {limit}, ModelConfig.text_vocab_limit); use a "
                                 f"preset with a larger vocab_size (model.overrides) or another tokenizer")
    return tok


def _init_text_tokenizer(cfg: TrainConfig) -> str:
    """The text tokenizer of `model.init` when that is a model folder, else ''."""
    init = Path(cfg.model.init) if cfg.model.init else None
    if init is None or cfg.model.init_format == "pi05" or not (init / "model.yaml").is_file():
        return ""
    return str(text_tokenizer_path(init))  # .json, or a published SentencePiece .model


def _horizon(cfg: TrainConfig) -> int:
    return int(cfg.model.overrides.get("action_horizon", ModelConfig.preset(cfg.model.preset).action_horizon))


def _fit_assets(cfg, assets: Path, names, kinds, trains, export, reports, log) -> None:
    recipe = get_recipe(cfg.recipe)
    (assets / "norm_stats").mkdir(parents=True, exist_ok=True)
    dcfg = {d.name: d for d in cfg.datasets}
    sdims, adims, norm = [], [], {}
    rows = {n: ds.state_action_rows() for n, k, ds in zip(names, kinds, trains) if k != "vlm"}
    pooled = _pooled_rows(rows, names, trains, dcfg)
    for n, k in zip(names, kinds):
        if k == "vlm":
            continue
        s, a = rows[n]
        d = dcfg[n]
        if d.norm_stats in ("dataset", "init"):  # given statistics, used as they are
            if d.norm_stats == "dataset":
                src = Path(d.path) / "meta" / "stats.json"
                norm[n] = dataset_norm_stats(d.path, d.state_key, d.action_key)
            else:
                src = Path(cfg.model.init) / "norm_stats.json"
                norm[n] = NormStats.load(src)
                init_delta = list(load_manifest(cfg.model.init).layout.delta_actions)
                if sorted(init_delta) != sorted(d.delta_actions):
                    raise ValueError(f"datasets '{n}': norm_stats 'init' needs the delta_actions of "
                                     f"{cfg.model.init} ({init_delta or 'none'}), the dataset has "
                                     f"{list(d.delta_actions) or 'none'}: its statistics describe those relative "
                                     f"(or absolute) actions")
            if (norm[n].state.dim, norm[n].actions.dim) != (s.shape[1], a.shape[1]):
                raise DatasetError(src, f"statistics for {norm[n].state.dim} state / {norm[n].actions.dim} action "
                                        f"dims, the data has {s.shape[1]} / {a.shape[1]}")
            log(f"[data] {n}: normalisation statistics from {src}")
        else:  # computed over every dataset of the same robot layout (one normalisation per robot)
            ps, pa, group = pooled[n]
            norm[n] = NormStats(QuantileStats.compute(ps, d.min_quantile_range),
                                QuantileStats.compute(pa, d.min_quantile_range))
            if len(group) > 1:
                log(f"[data] {n}: normalisation statistics computed over {'+'.join(group)} (same robot layout)")
        norm[n].save(assets / "norm_stats" / f"{n}.json")
        sdims.append(s.shape[1])
        adims.append(a.shape[1])
    model_cfg = _derived_config(cfg, sdims, adims)
    dump_config(model_cfg, assets / "model.yaml")

    ei = names.index(export)
    ep0 = trains[ei].episodes[0]
    dump_config(Layout(list(ep0.camera_names), list(ep0.state_names), list(ep0.action_names),
                       float(ep0.control_rate_hz), list(dcfg[export].delta_actions)), assets / "layout.yaml")

    # a published tokenizer, or the one of the model folder training starts from (its embeddings
    # were trained with those ids), copied as it is
    src = cfg.tokenizers.text_tokenizer_path or _init_text_tokenizer(cfg)
    if src:
        src = Path(src)
        load_published_text_tokenizer(str(src), model_cfg, _run_texts(kinds, trains))
        shutil.copyfile(src, assets / ("text_tokenizer.model" if src.suffix == ".model" else "text_tokenizer.json"))
        log(f"[data] text tokenizer: {src}")
    else:
        _train_text_tokenizer(cfg, assets, kinds, trains, model_cfg)
    _fit_action_tokenizer(cfg, assets, names, kinds, trains, norm, model_cfg, recipe)
    (assets / "data_report.json").write_text(json.dumps(reports, indent=1))
    log(f"[data] assets written to {assets}")


def _pooled_rows(rows, names, trains, dcfg) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """State/action `rows` of every `norm_stats: compute` robot dataset, pooled over the datasets that
    share its layout (state and action names, relative joints). The exported model keeps one dataset's
    statistics: datasets of one robot normalised apart would train the expert in another unit."""
    groups: dict[tuple, list[str]] = {}
    for n, ds in zip(names, trains):
        if n not in rows or dcfg[n].norm_stats != "compute":
            continue
        ep = ds.episodes[0]
        key = (tuple(ep.state_names), tuple(ep.action_names), tuple(sorted(dcfg[n].delta_actions)))
        groups.setdefault(key, []).append(n)
    out = {}
    for group in groups.values():
        s = np.concatenate([rows[n][0] for n in group])
        a = np.concatenate([rows[n][1] for n in group])
        out.update({n: (s, a, group) for n in group})
    return out


def prompt_layout_text(model_cfg: ModelConfig) -> str:
    """The prompt's fixed words and every state number it can write (-1: below the range)."""
    numbers = " ".join(str(b) for b in range(-1, model_cfg.state_bins))
    return f"Task: , State: {numbers};\nAction: "


def _run_texts(kinds, trains) -> list[str]:
    """The run's text: robot instructions and VLM prompt + answer per record."""
    texts = []
    for k, ds in zip(kinds, trains):
        if k == "vlm":
            texts += [f"{r.prompt} {r.answer}" for r in (ds.records[i] for i in ds.indices)]
        else:
            texts += sorted({e.instruction for e in ds.episodes})
    return texts


def _train_text_tokenizer(cfg, assets: Path, kinds, trains, model_cfg) -> None:
    # text tokenizer: instructions, VLM prompts/answers and the state numbers
    texts = _run_texts(kinds, trains)
    texts += [prompt_layout_text(model_cfg)] * 8
    vocab = cfg.tokenizers.text_vocab_size or min(2048, model_cfg.text_vocab_limit)
    if vocab > model_cfg.text_vocab_limit:
        raise ValueError(f"tokenizers.text_vocab_size {vocab} exceeds the model's text id range "
                         f"{model_cfg.text_vocab_limit}")
    TextTokenizer.train(texts, vocab_size=vocab).save(assets / "text_tokenizer.json")


def _fit_action_tokenizer(cfg, assets: Path, names, kinds, trains, norm, model_cfg, recipe) -> None:
    # action tokenizer: FAST fitted on normalised chunks of the training data (or naive bins), or a
    # fitted one used as it is
    src = cfg.tokenizers.action_tokenizer_path
    if src:
        tok = load_action_tokenizer(src)
        want = NaiveTokenizer if recipe.action_tokenizer == "naive" else FastTokenizer
        if not isinstance(tok, want):
            raise ValueError(f"tokenizers.action_tokenizer_path: {src!r} is a {type(tok).__name__}; recipe "
                             f"{cfg.recipe!r} trains with a {want.__name__}")
        if tok.vocab_size > model_cfg.num_fast_tokens:
            raise ValueError(f"tokenizers.action_tokenizer_path: {src!r} has {tok.vocab_size} tokens, the model "
                             f"{model_cfg.num_fast_tokens} action token ids (ModelConfig.num_fast_tokens)")
        shutil.copyfile(src, assets / "action_tokenizer.json")
        return
    if recipe.action_tokenizer == "naive":
        NaiveTokenizer(bins=cfg.tokenizers.naive_bins or min(256, model_cfg.num_fast_tokens)).save(
            assets / "action_tokenizer.json")
    else:
        rng = np.random.default_rng(cfg.seed)
        chunks = []
        for n, k, ds in zip(names, kinds, trains):
            if k == "vlm" or not len(ds):
                continue
            pick = rng.choice(len(ds), size=min(cfg.tokenizers.fit_chunks, len(ds)), replace=False)
            chunks += [norm[n].actions.normalize(ds.raw(int(i))["chunk"]) for i in pick]
        fast_vocab = cfg.tokenizers.fast_vocab_size or min(1024, model_cfg.num_fast_tokens)
        FastTokenizer(scale=cfg.tokenizers.fast_scale, vocab_size=fast_vocab).fit(chunks).save(
            assets / "action_tokenizer.json")
