"""Inference layout (`KIVLA.fuse_projections`): q/k/v and gate/up run as one product each while the
parameters, state dict and memory stay as they were; training drops the stacks and gets gradients."""

import torch

from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.synthetic import open_gates, synthetic_batch


def test_fused_model_keeps_its_state_dict_and_memory_and_training_drops_the_stacks():
    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset("tiny")).eval()
    open_gates(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fuse_projections()
    after = model.state_dict()
    assert after.keys() == before.keys()  # π0.5 names, no stacked tensors
    assert all(torch.equal(after[k], before[k]) for k in before)
    block = model.transformer.expert[0]
    stack = block.qkv_weight
    assert stack.shape[0] == block.q_proj.weight.shape[0] + 2 * block.k_proj.weight.shape[0]
    assert block.q_proj.weight.data_ptr() == stack.data_ptr()  # a view: one copy of the weights in memory
    def storage(t):
        return t.untyped_storage().data_ptr()

    assert storage(block.v_proj.weight) == storage(stack)
    assert storage(block.mlp.up_proj.weight) == storage(block.mlp.gate_up_weight)

    model.train()
    assert block.qkv_weight is None and block.mlp.gate_up_weight is None
    assert len({storage(getattr(block, n).weight) for n in ("q_proj", "k_proj", "v_proj")}) == 3  # own memory
    model.compute_loss(synthetic_batch(model.config, batch_size=2, mix="both"))["loss"].backward()
    for name in ("q_proj", "k_proj", "v_proj"):
        assert getattr(block, name).weight.grad.abs().sum() > 0, name
    assert block.mlp.up_proj.weight.grad.abs().sum() > 0
