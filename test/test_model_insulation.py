"""Knowledge insulation (eq. 5-6): which losses reach which parameters."""

import pytest
import torch

from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.synthetic import open_gates, synthetic_batch


def grads(model: KIVLA, loss: torch.Tensor) -> dict[str, float]:
    """Largest |grad| of each parameter group after backpropagating `loss` alone."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    out = {}
    for group, named in model.param_groups().items():
        out[group] = max((p.grad.abs().max().item() for _, p in named if p.grad is not None), default=0.0)
    return out


def build(insulate: bool, state_mode: str = "text") -> tuple[KIVLA, dict]:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", insulate=insulate, state_mode=state_mode)
    model = KIVLA(cfg)
    open_gates(model)
    return model, synthetic_batch(cfg, batch_size=4)


@pytest.mark.parametrize("state_mode", ["text", "continuous"])
def test_insulated_flow_loss_leaves_backbone_and_vision_exactly_zero(state_mode):
    model, batch = build(insulate=True, state_mode=state_mode)
    g = grads(model, model.compute_loss(batch)["flow_loss"])
    assert g["vision"] == 0.0 and g["backbone"] == 0.0
    assert g["expert"] > 0.0
    # every expert parameter that matters receives gradient
    missing = [n for n, p in model.param_groups()["expert"] if p.grad is None or not p.grad.any()]
    assert missing == [], missing


def test_joint_flow_loss_reaches_backbone_and_vision():
    model, batch = build(insulate=False)
    g = grads(model, model.compute_loss(batch)["flow_loss"])
    assert g["vision"] > 0.0 and g["backbone"] > 0.0 and g["expert"] > 0.0


@pytest.mark.parametrize("insulate", [True, False])
@pytest.mark.parametrize("key", ["fast_loss", "text_loss"])
def test_token_losses_reach_backbone_and_vision_never_expert(insulate, key):
    model, batch = build(insulate=insulate)
    g = grads(model, model.compute_loss(batch)[key])
    assert g["vision"] > 0.0 and g["backbone"] > 0.0
    assert g["expert"] == 0.0  # no backbone token sees an action token


def test_insulation_does_not_change_forward_values():
    m1, batch = build(insulate=True)
    m2, _ = build(insulate=False)
    m2.load_state_dict(m1.state_dict())
    l1, l2 = m1.compute_loss(batch), m2.compute_loss(batch)
    for k in l1:
        torch.testing.assert_close(l1[k], l2[k], rtol=0, atol=0)
