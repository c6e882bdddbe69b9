"""Policy.infer with an action prefix (real-time chunking): robot units in, the chunk continues the
prefix; a model trained without prefixes ignores it; ONNX Runtime's flow loop matches torch with
and without a prefix; stale exports (before the prefix inputs) are refused."""

import json
import shutil

import numpy as np
import pytest
from test_runtime_policy import HIGH, LOW, observation, trained_like_dir

from ki_vla_ros.model.rtc import RtcConfig
from ki_vla_ros.runtime import BackendError, Policy
from ki_vla_ros.runtime.model_dir import MANIFEST

MAX_DELAY = 4


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A model folder without prefix training, and the same weights with the adaRMS modulation opened
    (as after training: at init it is zero and flow time would not reach the expert) and `rtc` set."""
    return trained_like_dir(tmp_path_factory.mktemp("models"), "rtc",
                            rtc=RtcConfig(max_delay_steps=MAX_DELAY, probability=0.5))


def prefix_of(d, seed=0):
    return np.random.default_rng(seed).uniform(LOW, HIGH, (d, len(LOW)))


def test_chunk_continues_the_prefix_in_robot_units(dirs):
    policy = Policy.load(dirs[1])
    assert policy.max_action_prefix == MAX_DELAY
    assert "max_delay_steps: 4" in (dirs[1] / MANIFEST).read_text()
    prefix = prefix_of(3)
    noise = policy.draw_noise(1)
    out = policy.infer(observation(), noise=noise, action_prefix=prefix).actions
    plain = policy.infer(observation(), noise=noise).actions
    np.testing.assert_allclose(out[:3], prefix, rtol=0, atol=1e-6 * (HIGH - LOW).max())
    assert np.isfinite(out).all()
    assert np.abs(out[3:] - plain[3:]).max() > 1e-3  # conditioned on the prefix
    # longer than trained: cut to the longest trained delay
    long = prefix_of(MAX_DELAY + 3, seed=1)
    out = policy.infer(observation(), noise=noise, action_prefix=long).actions
    np.testing.assert_allclose(out[:MAX_DELAY], long[:MAX_DELAY], rtol=0, atol=1e-6 * (HIGH - LOW).max())
    assert np.abs(out[MAX_DELAY] - long[MAX_DELAY]).max() > 1e-3
    # an empty prefix is no prefix
    np.testing.assert_array_equal(policy.infer(observation(), noise=noise, action_prefix=np.zeros((0, 14))).actions,
                                  plain)


def test_model_without_prefix_training_ignores_the_prefix(dirs):
    policy = Policy.load(dirs[0])
    assert policy.max_action_prefix == 0
    noise = policy.draw_noise(2)
    np.testing.assert_array_equal(policy.infer(observation(), noise=noise, action_prefix=prefix_of(3)).actions,
                                  policy.infer(observation(), noise=noise).actions)


def test_bad_prefix_is_a_clear_error(dirs):
    policy = Policy.load(dirs[1])
    with pytest.raises(ValueError, match=r"action_prefix has shape \(3, 13\)"):
        policy.infer(observation(), action_prefix=np.zeros((3, 13)))
    bad = prefix_of(2)
    bad[1, 4] = np.inf
    with pytest.raises(ValueError, match="action_prefix contains NaN or inf"):
        policy.infer(observation(), action_prefix=bad)


def test_exported_flow_loop_matches_torch_with_and_without_prefix(dirs, tmp_path):
    """ONNX Runtime and OpenVINO (prefix and flow loop as one graph) against torch, fp32, with action
    prefixes of 0, 2 and the longest trained delay; OpenVINO int8 holds the prefix rows as exactly."""
    pytest.importorskip("onnxruntime")
    from ki_vla_ros.export.cli import export_model_dir

    model_dir = tmp_path / "m"
    shutil.copytree(dirs[1], model_dir)
    export_model_dir(model_dir, num_steps=3)
    torch_policy = Policy.load(model_dir, backend="torch", num_steps=3)
    exported = [Policy.load(model_dir, backend="onnxruntime", num_steps=3),
                Policy.load(model_dir, backend="openvino", num_steps=3)]
    int8 = Policy.load(model_dir, backend="openvino", num_steps=3, precision="int8", require_check=False)
    tol = 1e-4 * (HIGH - LOW).max()
    for seed, d in ((0, 0), (1, 2), (2, MAX_DELAY)):
        obs, noise = observation(seed), torch_policy.draw_noise(seed)
        prefix = prefix_of(d, seed) if d else None
        a_t = torch_policy.infer(obs, noise=noise, action_prefix=prefix).actions
        outs = [policy.infer(obs, noise=noise, action_prefix=prefix).actions for policy in exported]
        for policy, a_o in zip(exported, outs):
            assert np.abs(a_t - a_o).max() < tol, (policy.backend.name, d)
        a_8 = int8.infer(obs, noise=noise, action_prefix=prefix).actions
        assert not np.allclose(a_8, a_t, rtol=0, atol=1e-6)  # int8 computes differently ...
        for a in (*outs, a_8):  # ... but the prefix rows come back as given
            if d:
                np.testing.assert_allclose(a[:d], prefix, rtol=0, atol=1e-6 * (HIGH - LOW).max())

    # an export from before the prefix inputs is refused, saying what to do
    spec_file = model_dir / "onnx" / "export.json"
    spec = json.loads(spec_file.read_text())
    del spec["version"]
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(BackendError, match=r"export version 1, this ki_vla_ros needs 3.*re-export"):
        Policy.load(model_dir, backend="onnxruntime", num_steps=3)
