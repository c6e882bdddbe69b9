"""The fp32 paths give today's numbers: prefix K/V, one velocity, cached sampling with and without an
action prefix, the losses and every parameter's gradient norm, against the outputs recorded from the
model before the inference fast paths (test/fp32_reference.py) — to 1e-4, for one and two KV heads."""

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
    for key, value in out.items():
        if key.startswith(("loss.", "grad_")) and fused:
            continue  # training drops the fused copies (train()); compute_loss in eval mode is not a path
        tol = dict(rtol=1e-4, atol=1e-6) if key == "grad_norms" else dict(rtol=0, atol=1e-4)
        torch.testing.assert_close(value, recorded[f"{case}.{key}"], **tol,
                                   msg=lambda m, k=key: f"{case}.{k}: {m}")
