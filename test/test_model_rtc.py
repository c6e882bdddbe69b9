"""Action-prefix conditioning (real-time chunking, training-time variant): without a prefix nothing
changes bit for bit; with one the sampler keeps it exactly, the prefix tokens run at flow time 0,
and the flow loss does not see the prefix positions."""

import pytest
import torch

from ki_vla_ros.configio import ConfigError, from_dict
from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.masks import PREFIX
from ki_vla_ros.model.rtc import RtcConfig, prefix_tokens, sample_prefix_len
from ki_vla_ros.model.synthetic import open_gates, synthetic_batch


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = KIVLA(ModelConfig.preset("tiny")).eval()
    open_gates(m)
    return m


def _sampling_args(model, b):
    token_mask = b["token_kind"] == PREFIX
    return (b["images"], b["image_mask"], torch.where(token_mask, b["tokens"], 0), token_mask, b["state"], b["noise"])


def test_length_zero_prefix_is_bit_for_bit_no_prefix(model):
    b = synthetic_batch(model.config, batch_size=3, mix="action")
    args = _sampling_args(model, b)
    zeros = torch.zeros(3, dtype=torch.long)
    plain = model.sample_actions(*args, num_steps=4)
    with_zero = model.sample_actions(*args, num_steps=4, action_prefix=torch.randn_like(b["noise"]),
                                     action_prefix_len=zeros)
    assert torch.equal(plain, with_zero)
    losses = model.compute_loss(b)
    losses_zero = model.compute_loss({**b, "prefix_len": zeros})
    for key, value in losses.items():
        assert torch.equal(value, losses_zero[key]), key


def test_sampled_chunk_keeps_the_prefix_exactly_and_continues_it(model):
    b = synthetic_batch(model.config, batch_size=3, mix="action")
    args = _sampling_args(model, b)
    prefix = torch.randn_like(b["noise"])
    lengths = torch.tensor([0, 3, 7])
    out = model.sample_actions(*args, num_steps=5, action_prefix=prefix, action_prefix_len=lengths)
    plain = model.sample_actions(*args, num_steps=5)
    for i, d in enumerate(lengths.tolist()):
        assert torch.equal(out[i, :d], prefix[i, :d])
        assert torch.isfinite(out[i, d:]).all()
    assert torch.equal(out[0], plain[0])
    assert (out[1:, 7:] - plain[1:, 7:]).abs().max() > 1e-3  # the prefix conditions the rest
    uncached = model.sample_actions_uncached(*args, num_steps=5, action_prefix=prefix, action_prefix_len=lengths)
    torch.testing.assert_close(out, uncached, rtol=0, atol=1e-5)


def test_prefix_tokens_run_at_flow_time_zero(model):
    b = synthetic_batch(model.config, batch_size=2, mix="action")
    k, v, pm = model.prefix_cache(*_sampling_args(model, b)[:5])
    t = torch.tensor([0.7, 0.4])
    all_clean = torch.ones(2, model.config.action_horizon, dtype=torch.bool)
    with torch.no_grad():
        per_token = model.expert_velocity(k, v, pm, b["noise"], t, clean=all_clean)
        at_zero = model.expert_velocity(k, v, pm, b["noise"], torch.zeros(2))
        none_clean = model.expert_velocity(k, v, pm, b["noise"], t, clean=~all_clean)
        plain = model.expert_velocity(k, v, pm, b["noise"], t)
    assert torch.equal(per_token, at_zero)
    assert torch.equal(none_clean, plain)


def test_flow_loss_ignores_the_prefix_positions(model):
    cfg = model.config
    b = synthetic_batch(cfg, batch_size=3, mix="action")
    lengths = torch.tensor([0, 4, 7])
    noise = b["noise"].clone().requires_grad_(True)
    actions = b["actions"].clone().requires_grad_(True)
    loss = model.compute_loss({**b, "noise": noise, "actions": actions, "prefix_len": lengths})["flow_loss"]
    g_noise, g_actions = torch.autograd.grad(loss, (noise, actions))
    clean = prefix_tokens(lengths, cfg.action_horizon)[..., None].expand_as(g_noise)
    real = b["action_dim_mask"][:, None, :].expand_as(g_noise)
    assert torch.equal(g_noise[clean], torch.zeros_like(g_noise[clean]))  # exactly: no target there
    assert (g_noise[~clean & real] != 0).float().mean() > 0.9
    assert g_actions[1, :4][real[1, :4]].abs().sum() > 0  # the prefix is an input: it conditions the rest
    # the mean runs over the predicted positions: a prefix-only change of the targets moves nothing
    b2 = {**b, "noise": b["noise"].clone(), "prefix_len": lengths}
    b2["noise"][2, :7] += 5.0
    assert torch.equal(model.compute_loss({**b, "prefix_len": lengths})["flow_loss"],
                       model.compute_loss(b2)["flow_loss"])


def test_prefix_lengths_are_drawn_as_configured():
    torch.manual_seed(0)
    assert torch.equal(sample_prefix_len(RtcConfig(), 5), torch.zeros(5, dtype=torch.long))
    always = sample_prefix_len(RtcConfig(max_delay_steps=6, probability=1.0), 4000)
    assert always.min() == 1 and always.max() == 6
    counts = torch.bincount(always, minlength=7)[1:].float()
    assert (counts / counts.mean() - 1).abs().max() < 0.15  # uniform over 1..6
    half = sample_prefix_len(RtcConfig(max_delay_steps=6, probability=0.5), 4000)
    assert 0.45 < (half == 0).float().mean() < 0.55


@pytest.mark.parametrize("data, match", [
    ({"max_delay_steps": 5}, "key 'rtc': give both max_delay_steps and probability"),
    ({"max_delay_steps": 5, "probability": 1.5}, r"key 'rtc.probability': expected 0 <= p <= 1, got 1.5"),
    ({"max_delay_steps": -1}, "key 'rtc.max_delay_steps': must be >= 0"),
])
def test_rtc_config_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(RtcConfig, data, where="train.yaml", key="rtc")
    with pytest.raises(ValueError, match="below the action horizon 50"):
        RtcConfig(max_delay_steps=50, probability=0.5).check_horizon(50)
