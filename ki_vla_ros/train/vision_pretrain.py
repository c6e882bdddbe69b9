"""Vision pre-training: the vision tower learns where the objects are (the SigLIP stage in miniature).

The paper's backbone starts from PaliGemma, whose image encoder (SigLIP) was trained on its own
before the language model saw it. Here the equivalent is cheap: a static scene of the simulated
ALOHA renders in ~20 ms, a robot episode costs 3 s, so a policy trained on a few hundred episodes
has seen a few hundred cube positions, while this stage sees thousands. The tower is trained
alone to regress the table (x, y) of the red and the blue cube from one `cam_high` view of the VQA
scenes (`sim.vlm_data.SceneMaker`: the task cubes, 0-3 distractors, 40 % with an arm part-way
through a pick). The head pools the patch features with one learned query (SigLIP's MAP head), so
it is blind to where a feature came from: positions must be in the tower's features. Only the
tower is kept (`vision.safetensors`, the model's own `vision.*` names); the head is discarded.
Robot or VLM training starts from it with `model.init_vision` (docs/training.md).

    MUJOCO_GL=egl python -m ki_vla_ros.train.vision_pretrain --out models/vision_loc \\
        --train-scenes 3000 --heldout-scenes 300 --steps 1500

Writes OUT/vision.safetensors, OUT/vision_pretrain.json (curve: held-out error in cm of the cubes
visible in the view, against always answering the mean position) and caches the rendered scenes
in OUT/scenes_*.npz (or `--cache DIR`; generated data, not for committing).
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.model.vision import VisionTower

CUBES = ("red cube", "blue cube")
HELDOUT_SEED = 700_000  # disjoint from the VQA splits (0.., 500000..) and the robot episode seeds
VISION_FILE = "vision.safetensors"


# ------------------------------------------------------------------------------------------- scenes
def _render(args) -> tuple[np.ndarray, ...]:
    seeds, size, cameras = args
    from ki_vla_ros.sim.vlm_data import SceneMaker

    images, xy, visible, state = [], [], [], []
    with SceneMaker(size, cameras) as maker:
        for seed in seeds:
            scene, imgs = maker.make(int(seed))
            images.append(imgs["cam_high"] if cameras == ("cam_high",) else np.stack([imgs[c] for c in cameras]))
            xy.append([scene.get(n).pos[:2] for n in CUBES])
            visible.append([scene.get(n).visible for n in CUBES])
            state.append(maker.sim.joint_positions())
    return np.stack(images), np.asarray(xy, np.float32), np.asarray(visible), np.asarray(state, np.float32)


def scenes(cache: Path, seeds: range, size: int, workers: int = 2, log=print,
           cameras: tuple[str, ...] = ("cam_high",)) -> dict[str, np.ndarray]:
    """{"images" [N, S, S, 3] uint8 (several cameras: [N, V, S, S, 3] in ``cameras``' order), "xy"
    [N, 2, 2] metres (red, blue), "visible" [N, 2] bool (in cam_high), "state" [N, 14] the arms' joint
    positions}, rendered once per (seeds, size, cameras) into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    views = "" if cameras == ("cam_high",) else "_" + "-".join(cameras)
    path = cache / f"scenes_{seeds.start}_{len(seeds)}_{size}{views}.npz"
    if not path.exists():
        t0 = time.time()
        parts = [p for p in np.array_split(np.asarray(seeds), max(1, workers) * 4) if len(p)]
        if workers > 1:
            with Pool(workers) as pool:
                done = pool.map(_render, [(p, size, cameras) for p in parts])
        else:
            done = [_render((p, size, cameras)) for p in parts]
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: np.concatenate([d[i] for d in done])
                         for i, k in enumerate(("images", "xy", "visible", "state"))})
        tmp.replace(path)  # never a half-written cache
        log(f"[vision] {len(seeds)} scenes from seed {seeds.start} in {time.time() - t0:.0f} s")
    d = np.load(path)
    return {k: d[k] for k in d.files}


def splits(cache: Path, size: int, train_scenes: int, heldout_scenes: int, seed: int = 0, workers: int = 2,
           log=print, cameras: tuple[str, ...] = ("cam_high",)) -> tuple[dict, dict]:
    """The training scenes (seeds ``seed ..``) and the held-out ones (seeds from HELDOUT_SEED)."""
    return (scenes(cache, range(seed, seed + train_scenes), size, workers, log, cameras),
            scenes(cache, range(HELDOUT_SEED, HELDOUT_SEED + heldout_scenes), size, workers, log, cameras))


# -------------------------------------------------------------------------------------------- model
class LocaliseProbe(nn.Module):
    """Vision tower -> attention pooling (one learned query) -> (x, y) of each cube, normalised."""

    def __init__(self, cfg: ModelConfig, pos_init: str = "sincos"):
        super().__init__()
        self.tower = VisionTower(cfg)  # its position embedding starts from the sine-cosine code
        if pos_init == "normal":  # the tower's former start, for benchmarks/localize_probe.py
            with torch.no_grad():
                self.tower.pos_embed.copy_(torch.randn(cfg.num_patches, cfg.vision_width) * 0.02)
        elif pos_init != "sincos":
            raise ValueError(f"pos_init: {pos_init!r}; expected 'normal' or 'sincos'")
        w = cfg.vision_width
        self.query = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.pool = nn.MultiheadAttention(w, cfg.vision_heads, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 2 * len(CUBES)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.readout(self.tower(images))

    def readout(self, f: torch.Tensor) -> torch.Tensor:
        """Tower features [N, patches, width] -> normalised (x, y) per cube [N, cubes, 2]."""
        pooled, _ = self.pool(self.query.expand(len(f), -1, -1), f, f)
        return self.head(pooled[:, 0]).view(len(f), len(CUBES), 2)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float [N, 3, S, S] in [-1, 1] (the model's image range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def heldout_error_cm(probe: LocaliseProbe, held: dict, centre: torch.Tensor, half: torch.Tensor) -> np.ndarray:
    """Distance (cm) between predicted and true (x, y) of every cube visible in the held-out views."""
    was = probe.training
    probe.eval()
    with torch.no_grad():
        x = to_input(held["images"])
        pred = torch.cat([probe(x[i:i + 128]) for i in range(0, len(x), 128)]) * half + centre
    probe.train(was)
    return ((pred - torch.from_numpy(held["xy"])).norm(dim=-1) * 100)[torch.from_numpy(held["visible"])].numpy()


def warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5 % of ``steps``, then cosine to 0 (the pre-training stages' schedule)."""
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + np.cos(np.pi * min(s / steps, 1.0)))))


def pretrain(cfg: ModelConfig, train: dict, held: dict, steps: int, batch_size: int = 64, lr: float = 1e-3,
             seed: int = 0, pos_init: str = "sincos", eval_every: int = 250, log=print) -> tuple[LocaliseProbe, list]:
    """Train the probe (tower + head) on ``train``; returns it and the curve of held-out errors."""
    torch.manual_seed(seed)
    probe = LocaliseProbe(cfg, pos_init)
    xy = train["xy"][train["visible"]]
    lo, hi = xy.min(0), xy.max(0)
    centre, half = torch.tensor((lo + hi) / 2), torch.tensor((hi - lo) / 2)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    gen = np.random.default_rng(seed)
    curve, t0 = [], time.time()
    for step in range(1, steps + 1):
        idx = gen.integers(len(train["images"]), size=batch_size)
        target = (torch.from_numpy(train["xy"][idx]) - centre) / half
        mask = torch.from_numpy(train["visible"][idx]).float()[..., None]
        err = F.mse_loss(probe(to_input(train["images"][idx])), target, reduction="none")
        loss = (err * mask).sum() / (2 * mask.sum().clamp(min=1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            e = heldout_error_cm(probe, held, centre, half)
            curve.append({"step": step, "train_loss": round(loss.item(), 5),
                          "heldout_median_cm": round(float(np.median(e)), 2),
                          "heldout_mean_cm": round(float(e.mean()), 2), "wall_s": round(time.time() - t0, 1)})
            log(f"[vision] {pos_init} {curve[-1]}")
    return probe, curve


def save_tower(tower: VisionTower, path: Path) -> None:
    """The tower's weights under the model's names (``vision.*``), written atomically."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({f"vision.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(tmp))
    tmp.chmod(0o644)  # safetensors writes 0600; a model folder is read by other users too
    tmp.replace(path)


def mean_position_baseline_cm(train: dict, held: dict) -> dict:
    """The reference: always answer the training scenes' mean cube position."""
    base = np.linalg.norm(held["xy"] - train["xy"][train["visible"]].mean(0), axis=-1)[held["visible"]] * 100
    return {"median": round(float(np.median(base)), 2), "mean": round(float(base.mean()), 2)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Pre-train the vision tower to locate the cubes in cam_high")
    p.add_argument("--out", type=Path, required=True, help="writes vision.safetensors and vision_pretrain.json")
    p.add_argument("--preset", default="small")
    p.add_argument("--train-scenes", type=int, default=3000)
    p.add_argument("--heldout-scenes", type=int, default=300)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pos-init", choices=["normal", "sincos"], default="sincos")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=2, help="render processes")
    p.add_argument("--cache", type=Path, default=None, help="rendered scenes (default: OUT)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig.preset(args.preset)
    cache = args.cache or args.out
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    train, held = splits(cache, cfg.image_size, args.train_scenes, args.heldout_scenes, args.seed, args.workers, log)
    probe, curve = pretrain(cfg, train, held, args.steps, args.batch_size, args.lr, args.seed, args.pos_init, log=log)
    args.out.mkdir(parents=True, exist_ok=True)
    save_tower(probe.tower, args.out / VISION_FILE)
    report = {"preset": args.preset, "train_scenes": args.train_scenes, "heldout_scenes": args.heldout_scenes,
              "scene_seeds": {"train_from": args.seed, "heldout_from": HELDOUT_SEED}, "steps": args.steps,
              "batch_size": args.batch_size, "lr": args.lr, "pos_init": args.pos_init,
              "mean_position_baseline_cm": mean_position_baseline_cm(train, held), "curve": curve}
    (args.out / "vision_pretrain.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({"final": curve[-1], "mean_position_baseline_cm": report["mean_position_baseline_cm"]}))


if __name__ == "__main__":
    main()
