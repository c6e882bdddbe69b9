"""The fp32 reference outputs of the model (test/data/fp32_reference.safetensors) and how they are made.

`python test/fp32_reference.py` rewrote the file from the model code of commit 64ec8d2 (before the
inference fast paths of issue 14); `test_model_fp32_reference.py` checks that the fp32 paths of
today's code still give these numbers to 1e-4. Weights come from a generator seeded by each
parameter's name, so they do not depend on the order modules are built in.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.masks import PREFIX
from ki_vla_ros.model.synthetic import synthetic_batch

FILE = Path(__file__).with_name("data") / "fp32_reference.safetensors"
CASES = {  # name -> ModelConfig overrides of the tiny preset
    "kv1": dict(state_mode="continuous"),
    "kv2": dict(num_heads=4, num_kv_heads=2, head_dim=16),
}
STEPS = 4


def reference_model(case: str, fused: bool = False) -> KIVLA:
    model = KIVLA(ModelConfig.preset("tiny", **CASES[case]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            r = torch.randn(p.shape, generator=g)
            if "modulation" in name:
                scale = 0.3
            elif p.ndim >= 2:
                scale = p.shape[1] ** -0.5
            else:
                scale = 0.1
            p.copy_(r * scale)
    return model.eval().fuse_projections(fused)


def reference_inputs(model: KIVLA) -> dict[str, torch.Tensor]:
    b = synthetic_batch(model.config, batch_size=2, num_views=2, prefix_len=12, text_len=4, fast_len=8,
                        mix="both", seed=3)
    b["prefix_len"] = torch.tensor([3, 0])
    return b


def reference_outputs(model: KIVLA, b) -> dict[str, torch.Tensor]:
    mask = b["token_kind"] == PREFIX
    pargs = (b["images"], b["image_mask"], torch.where(mask, b["tokens"], 0), mask, b["state"])
    prefix = torch.randn(b["noise"].shape, generator=torch.Generator().manual_seed(7))
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        k, v, pm = model.prefix_cache(*pargs)
        out.update(k=k, v=v, prefix_mask=pm)
        out["velocity"] = model.expert_velocity(k, v, pm, b["noise"], torch.tensor([1.0, 0.3]))
        out["actions"] = model.sample_actions(*pargs, b["noise"], num_steps=STEPS)
        out["actions_prefix"] = model.sample_actions(*pargs, b["noise"], num_steps=STEPS, action_prefix=prefix,
                                                     action_prefix_len=b["prefix_len"])
    model.zero_grad(set_to_none=True)
    losses = model.compute_loss(b)
    losses["loss"].backward()
    out.update({f"loss.{key}": value.detach() for key, value in losses.items()})
    out["grad_norms"] = torch.stack([p.grad.norm() if p.grad is not None else torch.tensor(-1.0)
                                     for _, p in model.named_parameters()])
    model.zero_grad(set_to_none=True)
    return out


def main() -> None:
    from safetensors.torch import save_file

    tensors = {}
    for case in CASES:
        model = reference_model(case)
        for key, value in reference_outputs(model, reference_inputs(model)).items():
            tensors[f"{case}.{key}"] = value.contiguous()
    FILE.parent.mkdir(exist_ok=True)
    save_file(tensors, str(FILE))
    print(f"wrote {FILE}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
