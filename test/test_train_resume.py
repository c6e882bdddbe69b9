"""Kill training with SIGKILL right after a checkpoint, resume, and reach the uninterrupted run's
parameters; DDP with two gloo processes keeps both ranks' parameters identical."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("resume_data"))


def _config(tmp_path, data, name, **fields):
    cfg = tiny_train_config(data, tmp_path / name, cache_dir=str(tmp_path / "cache"), **fields)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config, *extra, timeout=300):
    cmd = [sys.executable, "-m", "ki_vla_ros.train.cli", "--config", str(config), *extra]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, data):
    fields = dict(steps=16, checkpoint_every=2, eval_every=3, ema_decay=0.9, grad_accum=2)
    ref_cfg = _config(tmp_path, data, "ref", **fields)
    _train(ref_cfg)  # also fills the shared episode cache
    cut_cfg = _config(tmp_path, data, "cut", **fields)
    cmd = [sys.executable, "-m", "ki_vla_ros.train.cli", "--config", str(cut_cfg)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = tmp_path / "cut" / "checkpoints" / "step_000004"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    done = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert "step_000016" not in done and "step_000004" in done
    _train(cut_cfg, "--resume")
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert 4 <= summary["resumed_from"] < 16
    ref = tmp_path / "ref" / "checkpoints" / "step_000016"
    cut = tmp_path / "cut" / "checkpoints" / "step_000016"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(ref / name)), load_file(str(cut / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{name}:{k}")
    # the logs of both runs agree (rows after the resumed step were replaced, not duplicated)
    assert (tmp_path / "ref" / "eval.csv").read_text() == (tmp_path / "cut" / "eval.csv").read_text()
    ref_rows = (tmp_path / "ref" / "train_log.csv").read_text().splitlines()
    cut_rows = (tmp_path / "cut" / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[:5] for r in ref_rows] == [r.split(",")[:5] for r in cut_rows]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_hold_identical_parameters(tmp_path, data):
    cfg = _config(tmp_path, data, "ddp", steps=4, checkpoint_every=2, eval_every=0, save_rank_params=True,
                  batch_size=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "ki_vla_ros.train.cli", "--config", str(cfg)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = tmp_path / "ddp"
    r0 = load_file(str(run / "final_params_rank0.safetensors"))
    r1 = load_file(str(run / "final_params_rank1.safetensors"))
    ck = run / "checkpoints" / "step_000004"
    saved = load_file(str(ck / "model.safetensors"))
    first = load_file(str(run / "checkpoints" / "step_000002" / "model.safetensors"))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        assert torch.equal(r0[k], saved[k]), k
    assert not torch.equal(first["transformer.backbone.0.q_proj.weight"], saved["transformer.backbone.0.q_proj.weight"])
    trainer = json.loads((ck / "trainer.json").read_text())
    assert trainer["world_size"] == 2
    assert (ck / "rng_rank0.safetensors").is_file() and (ck / "rng_rank1.safetensors").is_file()
    # the ranks drew different noise (per-rank generators)
    assert not torch.equal(load_file(str(ck / "rng_rank0.safetensors"))["torch"],
                           load_file(str(ck / "rng_rank1.safetensors"))["torch"])
