"""The trainer's precision switch: auto picks bf16 only where the hardware has it, fp32 is the
plain forward, bf16 really runs the matmuls in bf16 and gives a loss close to fp32's."""

import json

import pytest
import torch
from torch import nn

from ki_vla_ros.configio import ConfigError, from_dict
from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset
from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.synthetic import open_gates, synthetic_batch
from ki_vla_ros.train.checkpoint import latest_checkpoint
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.precision import autocast, cpu_bf16_flags, resolve_precision
from ki_vla_ros.train.trainer import train

CPU = torch.device("cpu")
X86_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
X86_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_auto_picks_bf16_only_where_the_cpu_has_it():
    assert cpu_bf16_flags(X86_BF16) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(ARM_BF16) == ["bf16"]
    assert cpu_bf16_flags(X86_PLAIN) == []
    assert resolve_precision("auto", CPU, X86_BF16)[0] == "bf16"
    assert resolve_precision("auto", CPU, ARM_BF16)[0] == "bf16"
    assert resolve_precision("auto", CPU, X86_PLAIN) == ("fp32", "precision: auto, the CPU has no native bf16")
    assert resolve_precision("fp32", CPU, X86_BF16)[0] == "fp32"
    precision, why = resolve_precision("bf16", CPU, X86_PLAIN)  # asked for explicitly: done, with a warning
    assert precision == "bf16" and "emulated" in why
    assert resolve_precision("auto", torch.device("cuda"))[0] == "bf16"  # the CUDA path as before
    assert resolve_precision("fp32", torch.device("cuda"))[0] == "fp32"
    # this machine: torch's capabilities and /proc/cpuinfo agree with what auto chooses
    assert resolve_precision("auto", CPU)[0] == ("bf16" if cpu_bf16_flags() else "fp32")


def test_precision_key_is_validated(tmp_path):
    cfg = tiny_train_config({"bags": tmp_path, "vlm": tmp_path / "v.jsonl"}, tmp_path / "run", precision="fp16")
    with pytest.raises(ConfigError, match="'precision'.*fp16"):
        from_dict(TrainConfig, cfg)


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset("tiny"))
    open_gates(model)  # the expert's residual branches (and its attention) are live
    batch = synthetic_batch(model.config, batch_size=4, num_views=2, prefix_len=12, text_len=4, fast_len=8)
    return model, batch


def _linear_output_dtypes(model, fn):
    dtypes = []
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
             for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        out = fn()
    finally:
        for h in hooks:
            h.remove()
    return out, dtypes


def test_fp32_is_the_plain_forward_and_bf16_runs_bf16_matmuls(model_and_batch):
    model, batch = model_and_batch
    plain = model.compute_loss(batch)
    with autocast("fp32", CPU):
        fp32, dt32 = _linear_output_dtypes(model, lambda: model.compute_loss(batch))
    for k in plain:
        assert torch.equal(plain[k], fp32[k]), k  # bit-identical to no autocast at all
    assert dt32 and set(dt32) == {torch.float32}

    with autocast("bf16", CPU):
        bf16, dt16 = _linear_output_dtypes(model, lambda: model.compute_loss(batch))
    assert len(dt16) == len(dt32) and set(dt16) == {torch.bfloat16}  # every projection ran in bf16
    for k in ("loss", "flow_loss", "fast_loss", "text_loss"):
        assert bf16[k].dtype == torch.float32 and torch.isfinite(bf16[k]), k
        ref, low = float(plain[k].detach()), float(bf16[k].detach())
        assert ref > 0.1 and abs(low - ref) < 0.01 * ref, (k, low, ref)  # measured: < 3e-4 relative
    assert not torch.equal(bf16["loss"], plain["loss"])  # it really computed something else
    bf16["loss"].backward()  # master weights and their gradients stay fp32
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p in model.parameters())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


def test_trainer_records_the_precision_it_used(data, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = from_dict(TrainConfig, tiny_train_config(data, tmp_path / precision, precision=precision, steps=2,
                                                       eval_every=0, checkpoint_every=2))
        lines = []
        summary = train(cfg, log=lines.append)
        assert summary["precision"] == precision and any(line.startswith(f"[train] {precision} (") for line in lines)
        trainer = json.loads((latest_checkpoint(cfg.run_dir) / "trainer.json").read_text())
        assert trainer["precision"] == precision
        runs[precision] = summary["final_eval"]["val_loss"]
    assert runs["fp32"] != runs["bf16"]
