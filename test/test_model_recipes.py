"""Every named recipe trains: its active losses fall by an order of magnitude on a handful of examples."""

import pytest
import torch

from ki_vla_ros.model import KIVLA, RECIPES, ModelConfig
from ki_vla_ros.model.recipes import get_recipe
from ki_vla_ros.model.synthetic import synthetic_batch


def active_losses(recipe) -> list[str]:
    keys = []
    if recipe.use_fast:
        keys.append("fast_loss")
    if recipe.vlm_cotrain:
        keys.append("text_loss")
    if recipe.use_flow:
        keys.append("flow_loss")
    return keys


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a shared CPU
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_overfits_a_handful_of_examples(name, one_thread):
    torch.manual_seed(0)
    recipe = get_recipe(name)
    model = KIVLA(ModelConfig.preset("tiny"))
    params = recipe.configure(model)
    # fixed noise and time per example (batch overrides) make the flow target learnable exactly
    batch = synthetic_batch(model.config, batch_size=4, mix="mixed" if recipe.vlm_cotrain else "action")
    opt = torch.optim.Adam(params, lr=1e-2)
    keys = active_losses(recipe)
    first = None
    for _ in range(80):
        out = model.compute_loss(batch)
        if first is None:
            first = {k: out[k].item() for k in keys}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    last = {k: model.compute_loss(batch)[k].item() for k in keys}
    for k in keys:
        assert last[k] < first[k] / 10, (name, k, first[k], last[k])


def test_recipe_switches_and_trainable_groups():
    model = KIVLA(ModelConfig.preset("tiny"))
    frozen = set(map(id, RECIPES["frozen_backbone"].configure(model)))
    groups = model.param_groups()
    assert all(id(p) in frozen for _, p in groups["expert"])
    assert not any(id(p) in frozen or p.requires_grad for g in ("vision", "backbone") for _, p in groups[g])
    assert model.config.insulate and not model.config.use_fast
    RECIPES["pi0"].configure(model)
    assert not model.config.insulate and model.config.use_flow and not model.config.use_fast
    assert all(p.requires_grad for p in model.parameters())
    RECIPES["pi0_fast"].configure(model)
    assert not model.config.use_flow
    out = model.compute_loss(synthetic_batch(model.config, mix="action"))
    assert out["flow_loss"].item() == 0.0 and out["loss"].item() == pytest.approx(out["fast_loss"].item())
    assert RECIPES["naive_tokens"].action_tokenizer == "naive" and RECIPES["ki"].action_tokenizer == "fast"
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("pi1")


def test_loss_is_eq4_combination():
    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset("tiny", alpha=0.5))
    batch = synthetic_batch(model.config, mix="both")  # TEXT and FAST in every row
    out = model.compute_loss(batch)
    n_text = int(((batch["token_kind"] == 2) & batch["loss_mask"]).sum())
    n_fast = int(((batch["token_kind"] == 3) & batch["loss_mask"]).sum())
    ce = (out["text_loss"] * n_text + out["fast_loss"] * n_fast) / (n_text + n_fast)
    torch.testing.assert_close(out["loss"], ce + 0.5 * out["flow_loss"])
    # flow loss: reference from the velocity, over real dims (first 4 of 8) and action examples only
    t, noise, actions = batch["time"][:, None, None], batch["noise"], batch["actions"]
    _, v = model.outputs(batch["images"], batch["image_mask"], batch["tokens"], batch["token_kind"],
                         batch["state"], t * noise + (1 - t) * actions, batch["time"])
    per_ex = (v - (noise - actions))[:, :, :4].pow(2).mean((1, 2))
    torch.testing.assert_close(out["flow_loss"], per_ex.mean())
    batch["action_mask"][1:] = False
    torch.testing.assert_close(model.compute_loss(batch)["flow_loss"], per_ex[0])
