"""Several flow draws per example in one backbone pass (`compute_loss(flow_samples=K)`): each draw's
loss is exactly what a one-draw pass gives it, the draws do not see each other, and the
trainer's `flow_samples` reaches the loss."""

import pytest
import torch

from ki_vla_ros.configio import ConfigError, from_dict
from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset
from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.masks import ACTION, PREFIX, attention_mask
from ki_vla_ros.model.synthetic import open_gates, synthetic_batch
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.trainer import train


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = KIVLA(ModelConfig.preset("tiny"))
    open_gates(m)
    return m


def _draw(b, noise, time, prefix_len=None):
    out = {**b, "noise": noise, "time": time}
    if prefix_len is not None:
        out["prefix_len"] = prefix_len
    return out


@pytest.mark.parametrize("with_prefix", [False, True])
def test_k_draws_average_the_one_draw_losses(model, with_prefix):
    """Draw j of a K-draw pass sees what a one-draw pass with the same noise and time sees: the
    K-draw flow loss is the mean of the K one-draw losses (to fp32 rounding), the token losses
    are unchanged."""
    b = synthetic_batch(model.config, batch_size=3, mix="both")
    b["action_mask"][:] = True
    k = 3
    torch.manual_seed(1)
    noise = torch.randn(3, k, *b["actions"].shape[1:])
    time = torch.rand(3, k) * 0.9 + 0.05
    prefix_len = torch.tensor([0, 2, 5]) if with_prefix else None
    singles = [model.compute_loss(_draw(b, noise[:, j], time[:, j], prefix_len)) for j in range(k)]
    multi = model.compute_loss(_draw(b, noise, time, prefix_len), flow_samples=k)
    expected = torch.stack([s["flow_loss"] for s in singles]).mean()
    torch.testing.assert_close(multi["flow_loss"], expected, rtol=1e-5, atol=1e-6)
    assert abs(singles[0]["flow_loss"].item() - singles[1]["flow_loss"].item()) > 1e-4  # draws differ
    for key in ("fast_loss", "text_loss"):
        torch.testing.assert_close(multi[key], singles[0][key], rtol=1e-5, atol=1e-6)


def test_a_draw_gets_no_gradient_from_another_draws_noise(model):
    """Block isolation through the whole expert: the velocity of draw 0 does not depend on the
    noisy actions of draw 1 (gradient exactly zero), but does on its own."""
    c = model.config
    b = synthetic_batch(c, batch_size=2, mix="action")
    emb, kinds = model.embed_prefix(b["images"], b["image_mask"], b["tokens"], b["token_kind"].long(), b["state"])
    x_t = torch.randn(2, 2, c.action_horizon, c.action_dim, requires_grad=True)
    _, v = model._joint(emb, kinds, x_t, torch.full((2, 2), 0.5))
    assert v.shape == (2, 2, c.action_horizon, c.action_dim)
    (grad,) = torch.autograd.grad(v[:, 0].sum(), x_t)
    assert torch.equal(grad[:, 1], torch.zeros_like(grad[:, 1]))
    assert grad[:, 0].abs().sum() > 0


def test_action_blocks_in_the_mask():
    kinds = torch.tensor([[PREFIX, PREFIX] + [ACTION] * 6])
    allowed = attention_mask(kinds, action_block=3)[0]
    acts = allowed[2:, 2:]
    assert torch.equal(acts, torch.block_diag(torch.ones(3, 3), torch.ones(3, 3)).bool())
    assert allowed[2:, :2].all()  # every block sees the prefix
    assert not allowed[:2, 2:].any()  # the prefix sees no action
    assert torch.equal(attention_mask(kinds)[0], attention_mask(kinds, action_block=6)[0])


def test_shapes_are_checked(model):
    b = synthetic_batch(model.config, batch_size=2, mix="action")
    with pytest.raises(ValueError, match="flow_samples=2"):
        model.compute_loss(b, flow_samples=2)  # the batch's one-draw noise / time
    with pytest.raises(ValueError, match="flow_samples"):
        model.compute_loss(b, flow_samples=0)


def test_the_trainer_passes_flow_samples_to_the_loss(tmp_path, monkeypatch):
    data = write_tiny_dataset(tmp_path / "data")
    seen = []
    real_loss = KIVLA.compute_loss

    def recording_loss(self, batch, flow_samples=1):
        out = real_loss(self, batch, flow_samples)
        seen.append((flow_samples, out["flow_loss"].item()))
        return out

    monkeypatch.setattr(KIVLA, "compute_loss", recording_loss)
    cfg = from_dict(TrainConfig, tiny_train_config(data, tmp_path / "run", steps=2, eval_every=0, checkpoint_every=2,
                                                   flow_samples=3, rtc={"max_delay_steps": 3, "probability": 0.5}))
    assert train(cfg, log=lambda *a: None)["steps"] == 2
    assert [k for k, _ in seen[:2]] == [3, 3]  # training steps: three draws
    assert all(k == 1 for k, _ in seen[2:])  # the evaluation's val_loss: one draw, as before
    assert all(loss > 0 for _, loss in seen)
    with pytest.raises(ConfigError, match="flow_samples"):
        from_dict(TrainConfig, tiny_train_config(data, tmp_path / "run2", flow_samples=0))
