"""The training loop behind `ki-vla train`.

One process, or one per device under ``torchrun --nproc_per_node N`` (DDP, or FSDP2 with
``parallel: fsdp``: see train/fsdp.py; gloo on CPU, nccl on GPUs). Every rank draws the same
global batch from the seeded mixture and keeps its slice.
Per step: `grad_accum` micro-batches (gradient sync on the last only), global-norm clipping,
AdamW with linear warm-up and cosine decay (lr set from the step, no scheduler state), optional
EMA of the trained parameters. `precision` (train/precision.py): bf16 autocast on CUDA and on CPUs
with native bf16 (auto), fp32 otherwise; parameters, gradients and optimiser state stay fp32.

Exact resume: a checkpoint holds the parameters, the AdamW state, the EMA, every rank's torch /
numpy / python generator states and the mixture sampler's state; the learning rate is a function
of the step and the evaluation never draws from the training generators, so a resumed run repeats
the uninterrupted one's steps.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ki_vla_ros.configio import dump_config, to_dict
from ki_vla_ros.data.augment import augment_images
from ki_vla_ros.model import KIVLA
from ki_vla_ros.model.kivla import EXPERT_MODULES, VISION_MODULES
from ki_vla_ros.model.recipes import get_recipe
from ki_vla_ros.model.rtc import sample_prefix_len
from ki_vla_ros.tokenize.prompt import collate
from ki_vla_ros.train import checkpoint as ckpt
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.data_setup import prepare_data
from ki_vla_ros.train.evaluate import EVAL_KEYS, CsvLog, evaluate, plot_curves
from ki_vla_ros.train.precision import autocast, resolve_precision

LOSS_KEYS = ("loss", "flow_loss", "fast_loss", "text_loss")


class _LossModule(nn.Module):
    """forward(batch) -> losses, so DDP sees a forward() (its reducer is prepared there)."""

    def __init__(self, model: KIVLA, flow_samples: int = 1):
        super().__init__()
        self.model = model
        self.flow_samples = flow_samples

    def forward(self, batch):
        return self.model.compute_loss(batch, flow_samples=self.flow_samples)


def lr_at(step: int, cfg: TrainConfig) -> float:
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, cfg.steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code may use the global one
    torch.manual_seed(seed)


def init_weights(model: KIVLA, init: str, fmt: str, log=print) -> None:
    if not init:
        return
    path = Path(init)
    if fmt == "auto":
        fmt = "model_dir" if (path / "model.yaml").is_file() else "pi05"
    if fmt == "model_dir":
        from safetensors.torch import load_file

        tensors = load_file(str(path / "weights.safetensors"))
        own = model.state_dict()
        wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in tensors.items()
                 if k in own and v.shape != own[k].shape]
        if wrong:
            raise ValueError(f"model.init: {path} has other sizes than this run's model ({len(wrong)} tensors, "
                             f"e.g. {wrong[0]}, the folder's vs this run's); use the preset and overrides it was "
                             f"made with (its model.yaml)")
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    else:
        from ki_vla_ros.train.import_pi05 import load_pi05_into

        load_pi05_into(model, path)
    log(f"[train] initialised from {path} ({fmt})")


def init_vision(model: KIVLA, init: str, log=print) -> None:
    """Overwrite the vision tower with a vision pre-training run's weights (`vision.*` names only)."""
    if not init:
        return
    from safetensors.torch import load_file

    from ki_vla_ros.train.vision_pretrain import VISION_FILE

    path = Path(init)
    path = path / VISION_FILE if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"model.init_vision: {path} not found (make it with python -m "
                         f"ki_vla_ros.train.vision_pretrain --out DIR)")
    tensors = load_file(str(path))
    own = model.vision.state_dict()
    names = {f"vision.{k}" for k in own}
    other = sorted(set(tensors) ^ names)
    wrong = [k for k in names & set(tensors) if tensors[k].shape != own[k[len("vision."):]].shape]
    if other or wrong:
        raise ValueError(f"model.init_vision: {path} does not hold this model's vision tower "
                         f"(names not shared: {other[:3]}, other shapes: {wrong[:3]}); use the preset it was made with")
    model.vision.load_state_dict({k[len("vision."):]: v for k, v in tensors.items()})
    log(f"[train] vision tower from {path}")


def lr_scale_of(name: str, o) -> float:
    """The learning-rate fraction of a parameter: `o.vision_lr_scale` for the tower (`vision.*`; its
    projector trains at lr), `o.backbone_lr_scale` for the backbone group of `KIVLA.param_groups`,
    1 for the expert."""
    if name.startswith("vision."):
        return o.vision_lr_scale
    if not name.startswith(EXPERT_MODULES + VISION_MODULES):
        return o.backbone_lr_scale
    return 1.0


def make_optimizer(params: list[nn.Parameter], names: dict[int, str], o, fused: bool) -> torch.optim.AdamW:
    """AdamW over the trained parameters: weight decay on matrices except embeddings. Each group keeps
    its `lr_scale` (`lr_scale_of`; the training loop sets lr·lr_scale); the groups at scale 1 come
    first, so a run without scales has the same two groups as before scales existed.
    fused: one kernel for all parameters per step (CPU and CUDA; single-process runs), else torch's
    foreach kernels (what DDP / FSDP runs use, so their results stay comparable)."""
    scale = {id(p): lr_scale_of(names[id(p)], o) for p in params}
    groups = []
    for s in sorted(set(scale.values()) | {1.0}, key=lambda v: (v != 1.0, -v)):
        members = [p for p in params if scale[id(p)] == s]
        decay = [p for p in members if p.ndim >= 2 and "embed" not in names[id(p)]]
        no_decay = [p for p in members if not (p.ndim >= 2 and "embed" not in names[id(p)])]
        groups += [{"params": ps, "weight_decay": wd, "lr_scale": s}
                   for ps, wd in ((decay, o.weight_decay), (no_decay, 0.0)) if ps or s == 1.0]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused or None)


def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·param, for all tensors in one foreach kernel."""
    with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)


def ema_decay_at(decay: float, step: int) -> float:
    """EMA decay after `step` optimiser steps, warmed up as (1 + step) / (10 + step) so the
    average forgets the random initialisation quickly (a plain 0.999 EMA still holds 0.999^N of
    the init after N steps: 7 % after 2700)."""
    return min(decay, (1 + step) / (10 + step))


def train(cfg: TrainConfig, resume: bool = False, log=print) -> dict:
    rank, world, local_rank = _dist_env()
    distributed = world > 1
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if distributed:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        barrier = dist.barrier
    else:
        def barrier():
            return None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    is_main = rank == 0
    say = log if is_main else (lambda *a, **k: None)
    run_dir = Path(cfg.run_dir)
    start_ckpt = None
    if resume:
        start_ckpt = ckpt.latest_checkpoint(run_dir)
        if start_ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt.checkpoint_dir(run_dir)}")
    elif ckpt.list_checkpoints(run_dir):
        raise FileExistsError(f"{run_dir} already has checkpoints: pass --resume to continue it, or use a new run_dir")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "train_config.yaml")
    barrier()

    data = prepare_data(cfg, rank, fit_assets=not resume, barrier=barrier, log=say)
    recipe = get_recipe(cfg.recipe)
    cfg.rtc.check_horizon(data.config.action_horizon)
    _seed_all(cfg.seed)  # identical initial weights on every rank
    model = KIVLA(data.config)
    init_weights(model, cfg.model.init, cfg.model.init_format, log=say)
    init_vision(model, cfg.model.init_vision, log=say)
    params = recipe.configure(model)
    frozen = {n for n, p in model.named_parameters() if p.requires_grad and lr_scale_of(n, cfg.optim) == 0}
    if frozen:  # a group at lr scale 0: not trained, not in the optimiser
        for n, p in model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        params = [p for p in params if p.requires_grad]
        say(f"[train] frozen by optim.vision_lr_scale / backbone_lr_scale 0: {len(frozen)} tensors")
    model.to(device).train()
    use_fsdp = distributed and cfg.parallel == "fsdp"
    if cfg.parallel == "fsdp" and not distributed:
        say("[train] parallel: fsdp needs torchrun with more than one process; training unsharded")
    state = ckpt.load_checkpoint(start_ckpt, rank) if start_ckpt is not None else None
    loss_module = _LossModule(model, cfg.flow_samples)
    if use_fsdp:
        from ki_vla_ros.train import fsdp

        if state is not None:  # full weights into the unsharded model, then shard
            model.load_state_dict(state["model"])
        name_of = {id(p): n for n, p in model.named_parameters()}
        trained_names = [name_of[id(p)] for p in params]  # the recipe's order (= optimiser indices)
        fsdp.shard(loss_module, model, device, world)  # parameters become DTensors (sharded in place)
        named = dict(model.named_parameters())
        params = [named[n] for n in trained_names]
        say(f"[train] FSDP2: {world} shards (vision, backbone and expert blocks, then the root)")
    names = {id(p): n for n, p in model.named_parameters()}
    o = cfg.optim
    optimizer = make_optimizer(params, names, o, fused=not distributed and device.type in ("cpu", "cuda"))
    trained = {names[id(p)]: p for p in params}
    ema = {k: p.detach().clone() for k, p in trained.items()} if cfg.ema_decay > 0 else None
    _seed_all(cfg.seed * 1000 + rank + 1)  # per-rank noise / flow times

    step = 0
    if start_ckpt is not None:
        if use_fsdp:
            fsdp.load_optimizer_state(loss_module, optimizer, names, state["optimizer"])
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            if state["ema"] is None:
                raise ValueError(f"{start_ckpt}: no ema.safetensors but ema_decay > 0")
            if use_fsdp:
                ema = {k: fsdp.shard_like(state["ema"][k], p) for k, p in trained.items()}
            else:
                ema = {k: v.to(device) for k, v in state["ema"].items()}
        tr = state["trainer"]
        if tr["world_size"] != world:
            raise ValueError(f"{start_ckpt} was written by {tr['world_size']} processes, this run has {world}: "
                             f"an exact resume needs the same number")
        data.sampler.load_state_dict(tr["sampler"])
        if state["rng"] is None:
            raise ValueError(f"{start_ckpt}: no generator state for rank {rank}")
        ckpt.set_rng_state(*state["rng"])
        step = int(tr["step"])
        say(f"[train] resumed from {start_ckpt} at step {step}")

    state = None
    net = loss_module
    if distributed and not use_fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    precision, why = resolve_precision(cfg.precision, device)
    say(f"[train] {precision} ({why})")

    eval_set = data.eval_examples(cfg.eval_samples, cfg.seed) if is_main else []
    train_log = CsvLog(run_dir / "train_log.csv", [*LOSS_KEYS, "lr", "grad_norm", "steps_per_s"],
                       truncate_after=step) if is_main else None
    eval_log = CsvLog(run_dir / "eval.csv", list(EVAL_KEYS), truncate_after=step) if is_main else None
    assets = run_dir / "assets"

    geometric = cfg.augment.geometric_cameras(data.layout.camera_names)

    def next_batch():
        draws = data.sampler.draw(cfg.batch_size * world)
        mine = draws[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
        batch = collate([data.example(d, i) for d, i in mine])
        if cfg.rtc.enabled:  # simulated inference delays: action prefixes (model/rtc.py)
            batch["prefix_len"] = sample_prefix_len(cfg.rtc, len(mine))
        if cfg.augment.enabled:  # robot examples only (data/augment.py)
            batch["images"] = augment_images(batch["images"], batch["image_mask"], batch["action_mask"], geometric,
                                             cfg.augment)
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def save(step_now: int) -> None:
        tmp = ckpt.begin_checkpoint(run_dir, step_now) if is_main else None
        barrier()
        tmp = ckpt.checkpoint_dir(run_dir) / f".{ckpt.step_name(step_now)}.tmp"
        ckpt.write_rank_rng(tmp, rank)
        model_out, optim_out, ema_out = model, optimizer, ema
        if use_fsdp:  # gather the full states (collectives: every rank takes part), rank 0 writes
            model_out = fsdp.full_model_state(loss_module)
            optim_out = fsdp.full_optimizer_state(loss_module, optimizer, names)
            ema_out = None if ema is None else {k: fsdp.full(v).cpu() for k, v in ema.items()}
        barrier()
        if is_main:
            trainer_state = {"step": step_now, "world_size": world, "sampler": data.sampler.state_dict(),
                             "recipe": cfg.recipe, "precision": precision, "config": to_dict(cfg),
                             "time": time.time()}
            ckpt.write_main(tmp, model_out, optim_out, ema_out, trainer_state, assets)
            ckpt.commit_checkpoint(run_dir, tmp, step_now, cfg.keep_checkpoints)
        barrier()

    eval_copy: list = []  # FSDP: an unsharded copy of the model on rank 0 for the evaluation

    def run_eval(step_now: int) -> dict:
        if use_fsdp:
            return run_eval_fsdp(step_now)
        if not is_main or not eval_set:
            return {}
        target = model
        backup = None
        if ema is not None:
            backup = {k: p.detach().clone() for k, p in trained.items()}
            with torch.no_grad():
                for k, p in trained.items():
                    p.copy_(ema[k])
        metrics = evaluate(target, eval_set, cfg.batch_size, cfg.num_flow_steps, device, seed=cfg.seed)
        if backup is not None:
            with torch.no_grad():
                for k, p in trained.items():
                    p.copy_(backup[k])
        eval_log.write(step_now, metrics)
        plot_curves(run_dir)
        say(f"[eval] step {step_now}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics

    def run_eval_fsdp(step_now: int) -> dict:
        if not (cfg.eval_samples > 0 and any(len(v) for v in data.val)):  # the same answer on every rank
            return {}
        full_sd = fsdp.full_model_state(loss_module)  # collectives on every rank
        full_ema = None if ema is None else {k: fsdp.full(v) for k, v in ema.items()}
        if not is_main:
            return {}
        if not eval_copy:
            with torch.random.fork_rng(devices=[]):  # its random init must not move the training generators
                eval_copy.append(KIVLA(data.config).to(device))
        target = eval_copy[0]
        target.load_state_dict(full_sd)
        if full_ema is not None:
            target.load_state_dict(full_ema, strict=False)
        metrics = evaluate(target, eval_set, cfg.batch_size, cfg.num_flow_steps, device, seed=cfg.seed)
        eval_log.write(step_now, metrics)
        plot_curves(run_dir)
        say(f"[eval] step {step_now}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics

    bar = None
    if is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.recipe}", dynamic_ncols=True)
    acc = {k: 0.0 for k in LOSS_KEYS}
    acc_n, t_log, steps_timed, t_start = 0, time.perf_counter(), 0, time.perf_counter()
    start_step = step
    metrics: dict = {}
    while step < cfg.steps:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # checkpoints before lr_scale: 1
        for micro in range(cfg.grad_accum):
            batch = next_batch()
            if use_fsdp:  # FSDP2: reduce-scatter on the last micro-batch only
                net.set_requires_gradient_sync(micro == cfg.grad_accum - 1)
            sync = nullcontext() if (use_fsdp or not distributed or micro == cfg.grad_accum - 1) else net.no_sync()
            with sync:
                with autocast(precision, device):
                    losses = net(batch)
                (losses["loss"] / cfg.grad_accum).backward()
            for k in LOSS_KEYS:
                acc[k] += float(losses[k].detach()) / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
        if use_fsdp:
            grad_norm = fsdp.full(grad_norm)  # a replicated DTensor: the global norm over all shards
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"step {step}: non-finite gradient norm ({float(grad_norm)}); stopping")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema_update([ema[k] for k in trained], list(trained.values()), ema_decay_at(cfg.ema_decay, step))
        step += 1
        acc_n += 1
        steps_timed += 1
        if bar is not None:
            bar.update(1)
            post = {k.replace("_loss", ""): f"{float(losses[k].detach()):.3f}" for k in LOSS_KEYS}
            bar.set_postfix(post | {"lr": f"{lr:.2e}"})
        if is_main and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            row = {k: acc[k] / acc_n for k in LOSS_KEYS}
            row.update(lr=lr, grad_norm=float(grad_norm), steps_per_s=acc_n / (now - t_log))
            train_log.write(step, row)
            acc, acc_n, t_log = {k: 0.0 for k in LOSS_KEYS}, 0, now
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            metrics = run_eval(step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save(step)
    elapsed = time.perf_counter() - t_start
    if bar is not None:
        bar.close()
    if cfg.save_rank_params:
        from safetensors.torch import save_file

        final = fsdp.full_model_state(loss_module, cpu_offload=False) if use_fsdp else model.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in final.items()},
                  str(run_dir / f"final_params_rank{rank}.safetensors"))
    counts = dict(data.builder.counts)
    summary = {"steps": step, "resumed_from": start_step, "world_size": world, "device": str(device),
               "precision": precision,
               "seconds": round(elapsed, 2), "steps_per_s": round(steps_timed / elapsed, 3) if elapsed else None,
               "final_eval": metrics, "example_notes": counts,
               "checkpoint": str(ckpt.latest_checkpoint(run_dir)) if is_main else None}
    if is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
        say(f"[train] done: {json.dumps(summary, default=float)}")
    if distributed:
        import torch.distributed as dist

        barrier()
        dist.destroy_process_group()
    return summary
