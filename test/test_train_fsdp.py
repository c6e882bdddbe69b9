"""FSDP2 (`parallel: fsdp`) with two gloo CPU processes: the same training as DDP, checkpoints in the
single-process format (export works on them), and an exact `--resume` under FSDP.

Why a tolerance and not equality with DDP: the forward/backward values agree, but FSDP2 works on
flat shards, so several reductions run in a different order — the global gradient norm for the
clipping is summed from per-shard squared norms (`clip_grad_norm_` on DTensors) instead of
per-tensor norms, and AdamW's foreach kernels see shard-shaped tensors. fp32 rounding differences
of ~1e-7 relative then pass through AdamW (which divides by sqrt(v), amplifying them where v is
tiny), so after 4 steps at lr 1e-3 parameters differ by a few 1e-6 (measured max 4e-6). FSDP
itself is bitwise deterministic run to run, so the resume comparison below is exact. Both runs are
in fp32, which that reasoning assumes: under bf16 autocast (the default on a CPU with bf16 units)
the same products round differently in the two runs (measured: gradient norms 1e-5 apart after the
first step, parameters 1e-3 apart after AdamW's first steps at lr 1e-3).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
FIELDS = dict(steps=4, batch_size=2, grad_accum=2, ema_decay=0.9, checkpoint_every=2, eval_every=0,
              save_rank_params=True, precision="fp32")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(config, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "ki_vla_ros.train.cli", "--config", str(config), *extra]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    data = write_tiny_dataset(root / "data")
    out = {}
    for name in ("ddp", "fsdp"):
        cfg = tiny_train_config(data, root / name, cache_dir=str(root / "cache"), parallel=name, **FIELDS)
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out[name] = (root / name, path)
        proc = _torchrun(path)
        assert (name == "fsdp") == ("FSDP2: 2 shards" in proc.stdout + proc.stderr)
    return out


def test_fsdp_matches_ddp(runs):
    ddp, fsdp = runs["ddp"][0], runs["fsdp"][0]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(ddp / "checkpoints" / "step_000004" / name))
        b = load_file(str(fsdp / "checkpoints" / "step_000004" / name))
        assert a.keys() == b.keys(), name
        for k in a:
            assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, f"{name}:{k}"
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5, msg=f"{name}:{k}")
    assert (ddp / "checkpoints/step_000004/optimizer.json").read_text() == \
        (fsdp / "checkpoints/step_000004/optimizer.json").read_text()
    # training moved the parameters far more than FSDP and DDP differ
    first = load_file(str(fsdp / "checkpoints" / "step_000002" / "model.safetensors"))
    last = load_file(str(fsdp / "checkpoints" / "step_000004" / "model.safetensors"))
    k = "transformer.backbone.0.q_proj.weight"
    assert (first[k] - last[k]).abs().max() > 1e-4
    # both ranks gathered the same full parameters, equal to the checkpoint
    r0 = load_file(str(fsdp / "final_params_rank0.safetensors"))
    r1 = load_file(str(fsdp / "final_params_rank1.safetensors"))
    for k in r0:
        assert torch.equal(r0[k], r1[k]) and torch.equal(r0[k], last[k]), k
    # the rank-0 evaluation on the gathered (EMA) weights agrees with DDP's
    e_ddp = (ddp / "eval.csv").read_text().splitlines()
    e_fsdp = (fsdp / "eval.csv").read_text().splitlines()
    assert e_ddp[0] == e_fsdp[0] and len(e_ddp) == len(e_fsdp) == 2
    for x, y in zip(e_ddp[1].split(","), e_fsdp[1].split(",")):
        assert float(x) == pytest.approx(float(y), rel=1e-4, abs=1e-5)


def test_fsdp_checkpoint_exports_and_resumes(runs, tmp_path):
    fsdp, config = runs["fsdp"]
    from ki_vla_ros.export.cli import export_main
    from ki_vla_ros.runtime.model_dir import load_model_dir

    out = tmp_path / "model"
    assert export_main(["--checkpoint", str(fsdp), "--out", str(out), "--no-onnx"]) == 0
    bundle = load_model_dir(out)
    ema = load_file(str(fsdp / "checkpoints" / "step_000004" / "ema.safetensors"))
    sd = bundle.model.state_dict()
    for k, v in ema.items():
        assert torch.equal(sd[k], v), k

    # resume under FSDP from step 2 and reach the uninterrupted run's step 4 exactly
    cut = tmp_path / "cut"
    shutil.copytree(fsdp, cut)
    shutil.rmtree(cut / "checkpoints" / "step_000004")
    (cut / "checkpoints" / "latest").write_text("step_000002\n")
    cfg = yaml.safe_load(Path(config).read_text())
    cfg["run_dir"] = str(cut)
    cut_cfg = tmp_path / "cut.yaml"
    cut_cfg.write_text(yaml.safe_dump(cfg))
    _torchrun(cut_cfg, "--resume")
    assert json.loads((cut / "summary.json").read_text())["resumed_from"] == 2
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(fsdp / "checkpoints" / "step_000004" / name))
        b = load_file(str(cut / "checkpoints" / "step_000004" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k}"
