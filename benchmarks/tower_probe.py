"""Does a vision tower still locate the cubes? A fresh attention-pooling probe (one learned query,
`vision_pretrain.LocaliseProbe.readout`) is trained on the tower's *frozen* cam_high features
of the vision pre-training scenes to give the (x, y) of the red and the blue cube; printed: its
held-out median error (cm) next to always answering the mean position.

    python benchmarks/tower_probe.py --weights models/vision_loc/vision.safetensors
    python benchmarks/tower_probe.py --weights models/vlm_base_loc/weights.safetensors
    python benchmarks/tower_probe.py --weights runs/RUN/checkpoints/step_004500/ema.safetensors

`models/vision_loc`: 0.32 cm; the tower of the VLM base trained from it at lr 1e-3: 8.66 cm, the
mean's 8.71 (docs/training.md, "Word-object binding")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.train.vision_pretrain import LocaliseProbe, mean_position_baseline_cm, splits, to_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="safetensors with the tower's vision.* tensors")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--cache", type=Path, default=Path("data/vision_scenes"), help="rendered scenes (made once)")
    ap.add_argument("--train-scenes", type=int, default=1500)
    ap.add_argument("--heldout-scenes", type=int, default=300)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig.preset(args.preset)
    probe = LocaliseProbe(cfg).eval()
    tower = probe.tower
    tensors = load_file(args.weights)
    tower.load_state_dict({k[len("vision."):]: v for k, v in tensors.items() if k.startswith("vision.")})
    train, held = splits(args.cache, cfg.image_size, args.train_scenes, args.heldout_scenes)
    with torch.no_grad():
        feats = [torch.cat([tower(to_input(d["images"][i:i + 64])) for i in range(0, len(d["images"]), 64)])
                 for d in (train, held)]
    xy = train["xy"][train["visible"]]
    centre, half = torch.tensor((xy.min(0) + xy.max(0)) / 2), torch.tensor((xy.max(0) - xy.min(0)) / 2)
    opt = torch.optim.AdamW([probe.query, *probe.pool.parameters(), *probe.head.parameters()], lr=1e-3)
    target = (torch.from_numpy(train["xy"]) - centre) / half
    mask = torch.from_numpy(train["visible"]).float()[..., None]
    for _ in range(args.steps):
        i = torch.randint(len(target), (64,))
        err = F.mse_loss(probe.readout(feats[0][i]), target[i], reduction="none")
        loss = (err * mask[i]).sum() / (2 * mask[i].sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = probe.readout(feats[1]) * half + centre
    err = ((pred - torch.from_numpy(held["xy"])).norm(dim=-1) * 100)[torch.from_numpy(held["visible"])].numpy()
    print(json.dumps({"weights": args.weights, "steps": args.steps,
                      "heldout_median_cm": round(float(np.median(err)), 2),
                      "mean_position_baseline_cm": mean_position_baseline_cm(train, held)}))


if __name__ == "__main__":
    main()
