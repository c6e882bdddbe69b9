"""The inference API exports to ONNX (fixed shapes) and onnxruntime reproduces PyTorch."""

import warnings

import numpy as np
import pytest
import torch

from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.masks import PREFIX
from ki_vla_ros.model.synthetic import open_gates, synthetic_batch

ort = pytest.importorskip("onnxruntime")


class _Call(torch.nn.Module):
    def __init__(self, model, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args):
        return getattr(self.model, self.method)(*args)


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_prefix_cache_and_expert_velocity_export(tmp_path, dynamo):
    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset("tiny", state_mode="continuous")).eval()
    open_gates(model)
    b = synthetic_batch(model.config, batch_size=2, mix="action")
    prefix_args = (b["images"], b["image_mask"], b["tokens"], b["token_kind"] == PREFIX, b["state"])
    with torch.no_grad():
        k, v, pm = model.prefix_cache(*prefix_args)
        t = torch.tensor([1.0, 0.3])
        expert_args = (k, v, pm, b["noise"], t)
        vel = model.expert_velocity(*expert_args)
    for method, args, ref in (("prefix_cache", prefix_args, k), ("expert_velocity", expert_args, vel)):
        path = tmp_path / f"{method}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Call(model, method), args, str(path), dynamo=dynamo)
        sess = ort.InferenceSession(str(path))
        feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
        out = sess.run(None, feeds)[0]
        np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-5)
