"""Word-object binding pre-training: the backbone learns where the *instructed* cube is.

Issue 12's four-pick policies read the arm word and not the colour word: their first chunk goes
halfway between the red and the blue cube, whichever is named (benchmarks/instruction_swap.py). The
vision tower locates each cube to 0.2 cm (vision_pretrain) and the VQA base answers "is there a
green cube", yet colour-to-place questions stay at the majority baseline: nothing has taught the
backbone to route the position of the cube a colour word names to where the expert can read it,
and the flow loss alone (0.11 rad between the two cubes' first chunks, next to 0.05 of flow noise)
has not done it in 2500 steps.

This stage teaches exactly that, on the robot's own inputs: the three camera views of a rendered
scene (`sim.vlm_data.SceneMaker`: the task cubes, 0-3 distractors, 40 % with an arm part-way
through a pick), the robot prompt "Task: {a training phrasing of one of the four picks}, State:
{the arms' joints};\\nAction: " built by the model's own prompt builder, and as target the table
(x, y) of the cube the instruction names. The readout is what the action expert has: one learned
query, blind to the words, attends over the backbone's tokens as they enter its last layer (the
normed input its keys and values are made from), then a linear head. A colour-blind backbone can
at best answer the midpoint of the two cubes; to do better, the instructed cube's position must be
in the last layer's keys/values, which is where the expert looks.

    MUJOCO_GL=egl python -m ki_vla_ros.train.binding_pretrain --init models/vlm_base_loc \\
        --out models/vlm_bind --train-scenes 3000 --heldout-scenes 300 --steps 1500

Writes OUT as a model folder (the init's, with the trained tower and backbone; the readout is
discarded) that robot training starts from with `model.init`, plus OUT/binding_pretrain.json (the
curve: held-out error of the instructed cube, the share of answers nearer the instructed cube
than the other, against the midpoint and mean-position references). Rendered scenes are cached in
``--cache`` (generated data, not for committing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ki_vla_ros.model.kivla import KIVLA
from ki_vla_ros.model.masks import PAD
from ki_vla_ros.runtime.model_dir import load_model_dir, save_model_dir
from ki_vla_ros.sim.tasks import TASKS, training_phrasings
from ki_vla_ros.tokenize.prompt import PromptBuilder, collate
from ki_vla_ros.train.precision import autocast, resolve_precision
from ki_vla_ros.train.trainer import init_vision
from ki_vla_ros.train.vision_pretrain import CUBES, splits, warmup_cosine

PICKS = tuple(n for n, t in TASKS.items() if t.kind == "pick")  # the colour word picks CUBES[i]
REPORT = "binding_pretrain.json"


class BindingProbe(nn.Module):
    """KIVLA's tower and backbone -> (x, y) of the instructed cube, read like the expert reads."""

    def __init__(self, model: KIVLA):
        super().__init__()
        self.model, w = model, model.config.width
        self.query = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.pool = nn.MultiheadAttention(w, model.config.num_heads, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 2))
        self._seen: torch.Tensor | None = None
        model.transformer.backbone[-1].attn_norm.register_forward_hook(self._keep)

    def _keep(self, module, args, out) -> None:
        self._seen = out[0]  # the last layer's normed input [B, N, W]: its keys and values are linear in it

    def forward(self, images, image_mask, tokens, token_kind, state) -> torch.Tensor:
        emb, kinds = self.model.embed_prefix(images, image_mask, tokens, token_kind, state)
        self.model._joint(emb, kinds, None, None)
        h = self._seen
        pooled, _ = self.pool(self.query.expand(len(h), -1, -1), h, h, key_padding_mask=kinds == PAD)
        return self.head(pooled[:, 0].float())  # [B, 2], normalised table position


class Batcher:
    """Scenes + (scene, instruction) -> the model's inputs, as the robot data pipeline builds them."""

    def __init__(self, bundle, data: dict):
        self.prompt = PromptBuilder(bundle.text_tokenizer, bundle.config)
        self.state_stats, self.cfg, self.data = bundle.norm_stats.state, bundle.config, data

    def __call__(self, idx: np.ndarray, texts: list[str]) -> dict[str, torch.Tensor]:
        rows = []
        for i, text in zip(idx, texts, strict=True):
            s = self.state_stats.normalize(self.data["state"][i])
            state = np.zeros(self.cfg.state_dim, np.float32)
            state[: len(s)] = s
            images = self.data["images"][i].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
            rows.append({**self.prompt.build(text, s), "images": images, "image_mask": np.ones(len(images), bool),
                         "state": state})
        batch = collate(rows)  # the data pipeline's padding (PAD kinds after each prompt)
        return {k: batch[k] for k in ("images", "image_mask", "tokens", "token_kind", "state")}


def cube_index(task: str) -> int:
    return CUBES.index(f"{TASKS[task].cube} cube")


def heldout_report(probe, batcher: Batcher, held: dict, centre, half, precision: str) -> dict:
    """Every held-out scene with both cubes visible, each of the four picks' canonical instructions:
    error (cm) to the instructed cube, share nearer the instructed than the other cube."""
    was = probe.training
    probe.eval()
    scenes = np.flatnonzero(held["visible"].all(1))
    err, nearer = [], []
    with torch.no_grad(), autocast(precision, torch.device("cpu")):
        for task in PICKS:
            c = cube_index(task)
            for lo in range(0, len(scenes), 64):
                idx = scenes[lo: lo + 64]
                pred = probe(**batcher(idx, [TASKS[task].instruction] * len(idx)))
                xy = (pred.float() * half + centre).numpy()
                d_own = np.linalg.norm(xy - held["xy"][idx, c], axis=-1)
                d_other = np.linalg.norm(xy - held["xy"][idx, 1 - c], axis=-1)
                err.append(d_own * 100)
                nearer.append(d_own < d_other)
    probe.train(was)
    err = np.concatenate(err)
    return {"heldout_median_cm": round(float(np.median(err)), 2), "heldout_mean_cm": round(float(err.mean()), 2),
            "nearer_instructed_cube": round(float(np.concatenate(nearer).mean()), 3), "cases": len(err)}


def references(train: dict, held: dict) -> dict:
    """What a backbone that ignores the colour word can reach: the midpoint of the two cubes, and the
    training scenes' mean cube position (median error, cm; held-out scenes with both cubes visible)."""
    both = held["visible"].all(1)
    mid = np.linalg.norm(held["xy"][both, 0] - held["xy"][both, 1], axis=-1) / 2 * 100
    mean = train["xy"][train["visible"]].mean(0)
    far = np.linalg.norm(held["xy"][both] - mean, axis=-1) * 100
    return {"midpoint_median_cm": round(float(np.median(mid)), 2),
            "mean_position_median_cm": round(float(np.median(far)), 2)}


def pretrain(bundle, train: dict, held: dict, steps: int, batch_size: int = 32, lr: float = 3e-4, seed: int = 0,
             precision: str = "auto", eval_every: int = 250, freeze_vision: bool = False,
             log=print) -> tuple[BindingProbe, list]:
    """Train tower (unless ``freeze_vision``), backbone and readout on ``train``; returns the probe and
    the held-out curve."""
    torch.manual_seed(seed)
    precision, why = resolve_precision(precision, torch.device("cpu"))
    log(f"[bind] precision {precision} ({why})")
    model = bundle.model.train()
    probe = BindingProbe(model)
    trained = ("image_proj.", "embed_tokens.", "state_proj.", "transformer.backbone.",
               *(() if freeze_vision else ("vision.",)))
    for name, p in model.named_parameters():  # the expert and the text head take no part
        p.requires_grad_(name.startswith(trained))
    xy = train["xy"][train["visible"]]
    lo, hi = xy.min(0), xy.max(0)
    centre, half = torch.tensor((lo + hi) / 2), torch.tensor((hi - lo) / 2)
    batcher, held_batcher = Batcher(bundle, train), Batcher(bundle, held)
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    gen = np.random.default_rng(seed)
    phrasings = {t: training_phrasings(t) for t in PICKS}
    curve, t0 = [], time.time()
    for step in range(1, steps + 1):
        idx, tasks = [], []
        while len(idx) < batch_size:  # a scene whose instructed cube is in view
            i, task = int(gen.integers(len(train["images"]))), PICKS[int(gen.integers(len(PICKS)))]
            if train["visible"][i, cube_index(task)]:
                idx.append(i)
                tasks.append(task)
        idx = np.asarray(idx)
        texts = [phrasings[t][int(gen.integers(len(phrasings[t])))] for t in tasks]
        target = (torch.from_numpy(train["xy"][idx, [cube_index(t) for t in tasks]]) - centre) / half
        with autocast(precision, torch.device("cpu")):
            pred = probe(**batcher(idx, texts))
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            curve.append({"step": step, "train_loss": round(loss.item(), 5),
                          **heldout_report(probe, held_batcher, held, centre, half, precision),
                          "wall_s": round(time.time() - t0, 1)})
            log(f"[bind] {curve[-1]}")
    return probe, curve


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Teach the backbone where the instructed cube is (word-object binding)")
    p.add_argument("--init", type=Path, required=True, help="model folder to start from (a VLM base)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (for model.init)")
    p.add_argument("--init-vision", default="", help="then the tower of a vision pre-training run (model.init_vision)")
    p.add_argument("--freeze-vision", action="store_true", help="keep the tower as it is (its localisation)")
    p.add_argument("--train-scenes", type=int, default=3000)
    p.add_argument("--heldout-scenes", type=int, default=300)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=2, help="render processes")
    p.add_argument("--cache", type=Path, required=True, help="folder for the rendered scenes")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    bundle = load_model_dir(args.init)
    init_vision(bundle.model, args.init_vision, log)
    cams = tuple(bundle.layout.camera_names)
    if "cam_high" not in cams:
        raise ValueError(f"--init: {args.init}'s cameras {list(cams)} lack cam_high (the view the targets are from)")
    train, held = splits(args.cache, bundle.config.image_size, args.train_scenes, args.heldout_scenes, args.seed,
                         args.workers, log, cams)
    probe, curve = pretrain(bundle, train, held, args.steps, args.batch_size, args.lr, args.seed, args.precision,
                            args.eval_every, args.freeze_vision, log)
    report = {"init": str(args.init), "init_vision": args.init_vision, "freeze_vision": args.freeze_vision,
              "train_scenes": args.train_scenes, "heldout_scenes": args.heldout_scenes,
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "references": references(train, held), "curve": curve}
    m = bundle.manifest
    save_model_dir(args.out, probe.model, bundle.layout, bundle.text_tokenizer, bundle.action_tokenizer,
                   bundle.norm_stats, m.recipe, m.num_flow_steps, {**m.notes, "binding_pretrain": str(args.init)},
                   {REPORT: json.dumps(report, indent=1)}, m.rtc)
    print(json.dumps({"final": curve[-1], "references": report["references"]}))


if __name__ == "__main__":
    main()
