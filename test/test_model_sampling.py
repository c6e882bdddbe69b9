"""Inference: cached sampling equals the uncached reference; building blocks against references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.attention import attend, rope
from ki_vla_ros.model.kivla import time_embedding
from ki_vla_ros.model.layers import AdaRMSNorm
from ki_vla_ros.model.masks import PREFIX
from ki_vla_ros.model.synthetic import open_gates, synthetic_batch


@pytest.mark.parametrize("state_mode", ["text", "continuous"])
def test_cached_sampling_matches_uncached_reference(state_mode):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", state_mode=state_mode)
    model = KIVLA(cfg).eval()
    open_gates(model)
    b = synthetic_batch(cfg, batch_size=3, mix="action")
    token_mask = b["token_kind"] == PREFIX  # prefix only, ragged
    tokens = torch.where(token_mask, b["tokens"], 0)
    args = (b["images"], b["image_mask"], tokens, token_mask, b["state"], b["noise"])
    cached = model.sample_actions(*args, num_steps=10)
    uncached = model.sample_actions_uncached(*args, num_steps=10)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=1e-5)
    assert not torch.allclose(cached, b["noise"], atol=1e-3)  # it did move
    # cache shapes: [depth, B, Lp, kv_heads, head_dim]
    k, v, pm = model.prefix_cache(*args[:5])
    lp = b["image_mask"].shape[1] * cfg.num_patches + (state_mode == "continuous") + tokens.shape[1]
    assert k.shape == v.shape == (cfg.depth, 3, lp, cfg.num_kv_heads, cfg.head_dim)
    assert pm.shape == (3, lp) and pm.dtype == torch.bool


def test_euler_follows_pi05_convention():
    """With a velocity that is constant in x, N Euler steps from t=1 with dt=-1/N give x - mean_t v(t)."""
    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset("tiny")).eval()
    seen = []

    def fake_velocity(k, v, pm, x, t, context=None):
        seen.append(float(t[0]))
        return torch.ones_like(x) * t[:, None, None]

    model.expert_velocity = fake_velocity
    b = synthetic_batch(model.config, batch_size=2, mix="action")
    pm = b["token_kind"] == PREFIX
    out = model.sample_actions(b["images"], b["image_mask"], b["tokens"], pm, b["state"], b["noise"], num_steps=4)
    assert seen == [1.0, 0.75, 0.5, 0.25]
    torch.testing.assert_close(out, b["noise"] - 0.25 * (1.0 + 0.75 + 0.5 + 0.25))


def test_time_embedding_matches_formula():
    t = torch.tensor([0.001, 0.5, 1.0])
    dim, lo, hi = 8, 4e-3, 4.0
    frac = np.linspace(0, 1, dim // 2)
    period = lo * (hi / lo) ** frac
    ang = t.numpy().astype(np.float64)[:, None] * 2 * np.pi / period
    ref = np.concatenate([np.sin(ang), np.cos(ang)], axis=1)
    np.testing.assert_allclose(time_embedding(t, dim, lo, hi).numpy(), ref, rtol=1e-6, atol=1e-6)


def test_attend_matches_sdpa_with_repeated_kv():
    torch.manual_seed(0)
    b, n, m, h, kv, hd = 2, 5, 7, 4, 2, 8
    q, k, v = torch.randn(b, n, h, hd), torch.randn(b, m, kv, hd), torch.randn(b, m, kv, hd)
    allowed = torch.rand(b, n, m) > 0.3
    allowed[..., 0] = True
    ref = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(h // kv, 2).transpose(1, 2),
        v.repeat_interleave(h // kv, 2).transpose(1, 2), attn_mask=allowed[:, None])
    torch.testing.assert_close(attend(q, k, v, allowed), ref.transpose(1, 2).reshape(b, n, h * hd))


def test_rope_matches_rotation_of_half_pairs():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 1, 4)
    pos = torch.tensor([[0, 1, 5]])
    out = rope(x, pos, 10000.0)
    for j, p in enumerate([0, 1, 5]):
        for i, f in enumerate([1.0, 10000.0 ** -0.5]):  # freq_i = base^(-2i/hd), hd = 4
            a, c = x[0, j, 0, i], x[0, j, 0, i + 2]
            ang = p * f
            torch.testing.assert_close(out[0, j, 0, i], a * math.cos(ang) - c * math.sin(ang))
            torch.testing.assert_close(out[0, j, 0, i + 2], c * math.cos(ang) + a * math.sin(ang))
    # relative property: <rope(q, p), rope(k, p')> depends only on p - p'
    q, k = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4)
    d1 = (rope(q, torch.tensor([[3]]), 1e4) * rope(k, torch.tensor([[1]]), 1e4)).sum()
    d2 = (rope(q, torch.tensor([[9]]), 1e4) * rope(k, torch.tensor([[7]]), 1e4)).sum()
    torch.testing.assert_close(d1, d2)


def test_ada_rmsnorm_starts_as_plain_rmsnorm_with_closed_gate():
    norm = AdaRMSNorm(6, 4)
    x, cond = torch.randn(2, 3, 6), torch.randn(2, 4)
    y, gate = norm(x, cond)
    torch.testing.assert_close(y, x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    assert torch.equal(gate, torch.zeros(2, 1, 6))
    with torch.no_grad():
        norm.modulation.bias.copy_(torch.tensor([1.0] * 6 + [0.5] * 6 + [2.0] * 6))  # scale, shift, gate
    y2, gate2 = norm(x, cond)
    torch.testing.assert_close(y2, 2 * y + 0.5)
    torch.testing.assert_close(gate2, torch.full((2, 1, 6), 2.0))


def test_sample_output_head_loss_and_sampler():
    """flow_output "sample": the head predicts the clean chunk â; the loss is |â − actions|² over the real
    dims; the flow step's velocity is (x_t − â)/t, so one step returns â at t = 1 and the last of N steps
    lands exactly on the head's â at t = 1/N; cached and uncached sampling agree."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", flow_output="sample")
    model = KIVLA(cfg).eval()
    open_gates(model)
    b = synthetic_batch(cfg, batch_size=2, mix="action")
    t = torch.tensor([0.3, 0.8])
    b["time"] = t
    losses = model.compute_loss(b)
    emb, kinds = model.embed_prefix(b["images"], b["image_mask"], b["tokens"], b["token_kind"], b["state"])
    x_t = t[:, None, None] * b["noise"] + (1 - t[:, None, None]) * b["actions"]
    a_hat = model._joint(emb, kinds, x_t, t)[1]
    dm = b["action_dim_mask"].float()[:, None, :]
    want = (((a_hat - b["actions"]) ** 2 * dm).sum((1, 2)) / (dm.sum((1, 2)) * cfg.action_horizon)).mean()
    torch.testing.assert_close(losses["flow_loss"], want)
    with pytest.raises(ValueError, match="flow_output"):
        ModelConfig.preset("tiny", flow_output="epsilon")

    pm = b["token_kind"] == PREFIX
    tokens = torch.where(pm, b["tokens"], 0)
    args = (b["images"], b["image_mask"], tokens, pm, b["state"], b["noise"])
    k, v, prefix_mask = model.prefix_cache(*args[:5])
    head = model.action_out_proj  # the head's own output at a given (x, t), through the cached path

    def a_hat_at(x, tt):
        seen = {}
        hook = head.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
        model.expert_velocity(k, v, prefix_mask, x, torch.full((2,), tt))
        hook.remove()
        return seen["out"]

    torch.testing.assert_close(model.sample_actions(*args, num_steps=1), a_hat_at(b["noise"], 1.0))
    x = b["noise"]
    for i in range(3):  # three of four Euler steps by hand, then the last from t = 1/4 lands on â(x, 1/4)
        tt = 1 - i / 4
        x = x - 0.25 * model.expert_velocity(k, v, prefix_mask, x, torch.full((2,), tt))
    four = model.sample_actions(*args, num_steps=4)
    torch.testing.assert_close(four, a_hat_at(x, 0.25), rtol=0, atol=1e-5)
    torch.testing.assert_close(four, model.sample_actions_uncached(*args, num_steps=4), rtol=0, atol=1e-5)
    velocity_model = KIVLA(ModelConfig.preset("tiny"))
    velocity_model.load_state_dict(model.state_dict())  # same weights, the π0.5 head: another chunk
    assert not torch.allclose(velocity_model.eval().sample_actions(*args, num_steps=4), four, atol=1e-3)
