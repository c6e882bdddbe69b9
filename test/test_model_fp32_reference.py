"""The fp32 paths give today's numbers: prefix K/V, one velocity, cached sampling with and without an
action prefix, the losses and every parameter's gradient norm, against the outputs recorded from the
model before the inference fast paths (test/fp32_reference.py) — to 1e-4, for one and two KV heads.
K/V are compared at the valid prefix positions: a PAD token's are never read."""

import pytest
import torch
from fp32_reference import CASES, FILE, reference_inputs, reference_model, reference_outputs
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def recorded():
    return load_file(str(FILE))


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fp32_outputs_match_the_recorded_reference(recorded, case, fused):
    """fused: the inference layout (`KIVLA.fuse_projections`), as the runtime loads a model."""
    model = reference_model(case, fused)
    out = reference_outputs(model, reference_inputs(model))
    valid = out.pop("prefix_mask")  # K/V of PAD tokens are never read (masks.prefix_attention_row): not compared
    for key, value in out.items():
        if key.startswith(("loss.", "grad_")) and fused:
            continue  # training drops the fused copies (train()); compute_loss in eval mode is not a path
        tol = dict(rtol=1e-4, atol=1e-6) if key == "grad_norms" else dict(rtol=0, atol=1e-4)
        expected = recorded[f"{case}.{key}"]
        if key in ("k", "v"):  # [depth, B, Lp, K, hd] at the valid positions
            value, expected = value[:, valid], expected[:, valid]
        torch.testing.assert_close(value, expected, **tol,
                                   msg=lambda m, k=key: f"{case}.{k}: {m}")


def test_loss_reads_the_last_layer_only_where_a_target_is_predicted():
    """`compute_loss` runs the backbone's last layer for the rows a target's logit is read from only
    (`rows_b`): its token losses and their gradients equal those from the full pass's logits,
    also for a batch where one example has no target and one has fewer."""
    import torch.nn.functional as F

    from ki_vla_ros.model import FAST, KIVLA, TEXT, ModelConfig
    from ki_vla_ros.model.synthetic import open_gates, synthetic_batch

    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset("tiny"))
    open_gates(model)
    b = synthetic_batch(model.config, batch_size=3, mix="both", seed=4)
    b["loss_mask"][0] = False  # no target in example 0
    first = int(torch.nonzero(b["loss_mask"][1])[0])
    b["loss_mask"][1, first:first + 2] = False  # two fewer in example 1
    kind, mask = b["token_kind"].long(), b["loss_mask"].bool()
    sel = mask[:, 1:] & ((kind[:, 1:] == TEXT) | (kind[:, 1:] == FAST))
    assert sel[1:].any(1).all() and sel.sum(1).unique().numel() == 3

    losses = model.compute_loss(b)
    weight = model.transformer.backbone[-1].mlp.down_proj.weight
    grad = torch.autograd.grad(losses["text_loss"] + losses["fast_loss"], weight)[0]
    emb, kinds = model.embed_prefix(b["images"], b["image_mask"], b["tokens"], kind, b["state"])
    h_b, _ = model._joint(emb, kinds, None, None)  # every row through every layer
    logits = model.lm_head(h_b[:, -b["tokens"].shape[1]:])
    ce = F.cross_entropy(logits[:, :-1][sel], b["tokens"][:, 1:][sel], reduction="none")
    is_fast = kind[:, 1:][sel] == FAST
    text, fast = ce[~is_fast].mean(), ce[is_fast].mean()
    torch.testing.assert_close(losses["text_loss"], text, rtol=0, atol=1e-5)
    torch.testing.assert_close(losses["fast_loss"], fast, rtol=0, atol=1e-5)
    ref = torch.autograd.grad(text + fast, weight)[0]
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-7)
