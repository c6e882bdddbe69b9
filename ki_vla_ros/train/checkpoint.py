"""Training checkpoints: safetensors + JSON only (nothing is pickled), written atomically.

    <run_dir>/checkpoints/step_000200/
      model.safetensors          every parameter and buffer (KIVLA state_dict)
      ema.safetensors            EMA of the trained parameters (if ema_decay > 0)
      optimizer.safetensors      AdamW per-parameter tensors, keys "state.<param index>.<name>"
      optimizer.json             param_groups and every non-tensor value of the optimiser state
      rng_rank<r>.safetensors    torch (and CUDA) generator states of rank r
      rng_rank<r>.json           python `random` and numpy global generator states of rank r
      trainer.json               step, sampler state, world size, train config
      assets/                    copy of <run_dir>/assets (tokenizers, norm stats, model.yaml,
                                 layout.yaml): the checkpoint alone can be exported

A checkpoint is written into ``.step_000200.tmp`` and renamed into place; ``latest`` (a text
file with the folder name) is replaced atomically afterwards. A run killed at any moment leaves
only complete checkpoints behind (a stale ``.tmp`` folder is removed on the next save).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith("step_")
                  and (p / "trainer.json").is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


# ---- optimiser state without pickle -------------------------------------------------------------
def optimizer_to_flat(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        scalars[str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[str(idx)][k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in meta["scalars"].items()}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---- RNG states ---------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - the legacy global generator is state too
    py = random.getstate()
    meta = {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    name, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    v, state, g = meta["python"]
    random.setstate((v, tuple(state), g))


# ---- save / load --------------------------------------------------------------------------------
def begin_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Create the temporary folder of the checkpoint of `step` (rank 0)."""
    tmp = checkpoint_dir(run_dir) / f".{step_name(step)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rank_rng(tmp: Path, rank: int) -> None:
    tensors, meta = rng_state()
    save_file(tensors, str(tmp / f"rng_rank{rank}.safetensors"))
    (tmp / f"rng_rank{rank}.json").write_text(json.dumps(meta))


def write_main(tmp: Path, model, optimizer, ema: dict | None, trainer: dict, assets: Path) -> None:
    """`model`: a module or its (full) state dict; `optimizer`: an optimiser or its (full) state dict."""
    model_sd = model if isinstance(model, dict) else model.state_dict()
    save_file({k: v.detach().to("cpu").contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    tensors, meta = optimizer_to_flat(optimizer if isinstance(optimizer, dict) else optimizer.state_dict())
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    shutil.copytree(assets, tmp / "assets")
    (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1))


def commit_checkpoint(run_dir: str | Path, tmp: Path, step: int, keep: int) -> Path:
    """Rename the finished temporary folder into place, point `latest` at it, prune old ones."""
    final = checkpoint_dir(run_dir) / step_name(step)
    if final.exists():
        shutil.rmtree(final)
    for f in tmp.rglob("*"):  # make the files durable before the rename publishes them
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    tmp.rename(final)
    latest_tmp = checkpoint_dir(run_dir) / ".latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, checkpoint_dir(run_dir) / "latest")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, rank: int) -> dict:
    """{"model", "ema" (or None), "optimizer" (a state_dict), "trainer", "rng": (tensors, meta) | None}."""
    out = {
        "model": load_file(str(path / "model.safetensors")),
        "ema": load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None,
        "optimizer": optimizer_from_flat(load_file(str(path / "optimizer.safetensors")),
                                         json.loads((path / "optimizer.json").read_text())),
        "trainer": json.loads((path / "trainer.json").read_text()),
        "rng": None,
    }
    if (path / f"rng_rank{rank}.safetensors").is_file():
        out["rng"] = (load_file(str(path / f"rng_rank{rank}.safetensors")),
                      json.loads((path / f"rng_rank{rank}.json").read_text()))
    return out
