"""Policy loading and inference: model-folder checks, cached vs uncached sampling, seeding,
ONNX export against torch, and the TensorRT path where a GPU is present."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ki_vla_ros.runtime import BackendError, Layout, ModelDirError, Observation, Policy
from ki_vla_ros.runtime.backends import OnnxRuntimeBackend, op_times_ms
from ki_vla_ros.runtime.init_model import init_model_dir
from ki_vla_ros.runtime.model_dir import FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS

CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
LAYOUT = Layout(CAMERAS, [f"q{i}" for i in range(14)], [f"a{i}" for i in range(14)], 50.0)
LOW, HIGH = np.linspace(-2, 0, 14), np.linspace(1, 3, 14)


def trained_like_dir(root, name: str, **save_kwargs):
    """(random-weight folder `root/plain`, the same weights with the adaRMS modulation opened — as after
    training: at init it is zero and flow time would not reach the expert — saved as `root/name`)."""
    from ki_vla_ros.model.synthetic import open_gates
    from ki_vla_ros.runtime.model_dir import load_model_dir, save_model_dir

    torch.set_num_threads(1)
    plain = init_model_dir(root / "plain", LAYOUT, preset="tiny", seed=3, state_range=(LOW, HIGH),
                           action_range=(LOW, HIGH))
    b = load_model_dir(plain)
    open_gates(b.model)
    return plain, save_model_dir(root / name, b.model, b.layout, b.text_tokenizer, b.action_tokenizer, b.norm_stats,
                                 **save_kwargs)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("models") / "tiny"
    return init_model_dir(path, LAYOUT, preset="tiny", seed=3, state_range=(LOW, HIGH), action_range=(LOW, HIGH))


def observation(seed=0, instruction="pick up the red cube"):
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for c in CAMERAS}
    return Observation(images, rng.uniform(LOW, HIGH), instruction)


def test_infer_returns_denormalised_chunk_and_timings(tiny_dir):
    policy = Policy.load(tiny_dir)
    out = policy.infer(observation(), seed=0)
    assert out.actions.shape == (policy.action_horizon, 14) and out.actions.dtype == np.float64
    assert np.isfinite(out.actions).all()
    assert set(out.timings_ms) == {"preprocess", "model", "postprocess", "total"}
    # de-normalisation: the same normalised chunk maps through q01/q99 of the stored stats
    inputs = policy.model_inputs(observation())
    with torch.no_grad():
        norm = policy.bundle.model.sample_actions(*map(torch.as_tensor, inputs),
                                                  torch.as_tensor(policy.draw_noise(0)))[0, :, :14].double()
    np.testing.assert_allclose(out.actions, (norm.numpy() + 1) / 2 * (HIGH - LOW) + LOW, rtol=1e-5, atol=1e-5)


def test_seeded_noise_reproduces(tiny_dir):
    policy = Policy.load(tiny_dir)
    a = policy.infer(observation(), seed=7).actions
    b = policy.infer(observation(), seed=7).actions
    c = policy.infer(observation(), seed=8).actions
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_cached_sampling_matches_uncached(tiny_dir):
    policy = Policy.load(tiny_dir, num_steps=10)
    inputs = [torch.as_tensor(x) for x in policy.model_inputs(observation(2))]
    noise = torch.as_tensor(policy.draw_noise(5))
    model = policy.bundle.model
    uncached = model.sample_actions_uncached(*inputs, noise, num_steps=10)
    cached = torch.as_tensor(policy.backend.flow(policy.backend.prefix(*inputs), noise.numpy()))
    assert (cached - uncached).abs().max() < 1e-5


def test_bad_inputs_raise(tiny_dir):
    policy = Policy.load(tiny_dir)
    obs = observation()
    obs.state[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        policy.infer(obs)
    with pytest.raises(ValueError, match=r"state has shape \(13,\)"):
        policy.infer(Observation(observation().images, np.zeros(13), "x"))
    with pytest.raises(ValueError, match="unknown cameras"):
        policy.infer(Observation({"cam_low": np.zeros((8, 8, 3), np.uint8)}, np.zeros(14), "x"))
    with pytest.raises(ValueError, match="instruction is empty"):
        policy.infer(Observation({}, np.zeros(14), "  "))


def test_model_dir_errors_name_file_and_problem(tiny_dir, tmp_path):
    with pytest.raises(ModelDirError, match="model folder not found"):
        Policy.load(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "norm_stats.json").unlink()
    with pytest.raises(ModelDirError, match=r"norm_stats.json: missing"):
        Policy.load(broken)

    old = tmp_path / "old"
    shutil.copytree(tiny_dir, old)
    text = (old / MANIFEST).read_text().replace("format_version: 1", "format_version: 99")
    (old / MANIFEST).write_text(text)
    with pytest.raises(ModelDirError, match=r"model.yaml: key 'format_version'.*version 1.*99"):
        Policy.load(old)

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    tensors = load_file(bad / WEIGHTS)
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, bad / WEIGHTS)
    with pytest.raises(ModelDirError, match=rf"weights.safetensors: tensor '{name}' has shape \(3, 3\)"):
        Policy.load(bad)


@pytest.mark.slow
def test_onnx_export_matches_torch(tiny_dir, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from ki_vla_ros.export.cli import export_model_dir

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_dir, model_dir)
    with pytest.raises(BackendError, match="export the model first"):
        Policy.load(model_dir, backend="onnxruntime")
    export_model_dir(model_dir, num_steps=5)
    torch_policy = Policy.load(model_dir, backend="torch", num_steps=5)
    ort_policy = Policy.load(model_dir, backend="onnxruntime", num_steps=5)
    ov_policy = Policy.load(model_dir, backend="openvino", num_steps=5)  # the same fp32 export, compiled by OpenVINO
    for seed in range(3):
        obs = observation(seed, instruction=["pick up the red cube", "hand the cube over", "stop"][seed])
        noise = torch_policy.draw_noise(seed)
        inputs = torch_policy.model_inputs(obs)
        k_t, v_t, m_t = torch_policy.backend.prefix(*inputs)
        for policy in (ort_policy, ov_policy):
            k_o, v_o, m_o = policy.backend.prefix(*inputs)
            assert np.abs(k_t.numpy() - k_o).max() < 1e-4 and np.abs(v_t.numpy() - v_o).max() < 1e-4
            np.testing.assert_array_equal(m_t.numpy(), m_o)
            a_t = torch_policy.infer(obs, noise=noise).actions
            a_o = policy.infer(obs, noise=noise).actions
            assert np.abs(a_t - a_o).max() < 1e-4 * (HIGH - LOW).max(), policy.backend.name
        prefix = torch_policy.draw_noise(seed + 10)  # an action prefix of 7 rows, as real-time chunking gives
        a_t = torch_policy.backend.flow((k_t, v_t, m_t), noise, prefix, 7)
        a_v = ov_policy.backend.flow(ov_policy.backend.prefix(*inputs), noise, prefix, 7)
        a_c = ov_policy.backend.chunk(inputs, noise, prefix, 7)  # prefix and flow as one OpenVINO graph
        for a in (a_v, a_c):
            assert np.abs(a_t - a).max() < 1e-4
            np.testing.assert_array_equal(a[0, :7], prefix[0, :7])
    k_o, v_o, m_o = ort_policy.backend.prefix(*inputs)

    # profiling (benchmarks/latency.py --profile) computes the same; its trace gives per-operator time
    profiled = OnnxRuntimeBackend(model_dir / "onnx", ort_policy.bundle.weights_sha256, 5, threads=1,
                                  profile_dir=tmp_path)
    for _ in range(3):  # a warm-up and two counted runs
        out = profiled.flow(profiled.prefix(*inputs), noise)
    np.testing.assert_array_equal(out, ort_policy.backend.flow(ort_policy.backend.prefix(*inputs), noise))
    traces = profiled.end_profiling()
    flow = op_times_ms(traces["flow"])
    assert flow["runs"] == 2
    depth = torch_policy.config.depth
    assert flow["ops"]["Softmax"]["nodes"] == 5 * depth  # one attention per step and layer
    # the graph ONNX Runtime runs: per step and layer one product each for q/k/v and gate/up (the fused
    # layout, also for the graphs exported after the first), o, down and attention·V; the MLP's GELU
    # and every adaRMS normalisation one kernel each (layers.gelu_tanh, layers.rms_normalize)
    assert flow["ops"]["MatMul"]["nodes"] == 5 * 5 * depth
    assert flow["ops"]["FastGelu"]["nodes"] == 5 * depth
    assert flow["ops"]["SimplifiedLayerNormalization"]["nodes"] == 5 * (2 * depth + 1)
    assert 0 < sum(o["ms"] for o in flow["ops"].values()) <= flow["run_ms"]
    one_run = tmp_path / "one_run"
    one_run.mkdir()
    single = OnnxRuntimeBackend(model_dir / "onnx", ort_policy.bundle.weights_sha256, 5, profile_dir=one_run)
    single.prefix(*inputs)
    with pytest.raises(ValueError, match="1 model_run"):
        op_times_ms(single.end_profiling()["prefix"])

    # the single expert step, for debugging, agrees with the model's velocity
    sess = onnxruntime.InferenceSession(str(model_dir / "onnx" / "expert_step.onnx"))
    x_t, t = torch_policy.draw_noise(9), np.array([0.3], np.float32)
    v_o = sess.run(None, {"k": k_o, "v": v_o, "prefix_mask": m_o, "x_t": x_t, "t": t})[0]
    with torch.no_grad():
        v_t = torch_policy.bundle.model.expert_velocity(k_t, v_t, m_t, torch.as_tensor(x_t), torch.as_tensor(t))
    assert np.abs(v_t.numpy() - v_o).max() < 1e-4

    # stale files are refused: other steps, other weights
    with pytest.raises(BackendError, match="exported with 5 steps"):
        Policy.load(model_dir, backend="onnxruntime", num_steps=10)
    tensors = load_file(model_dir / WEIGHTS)
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, model_dir / WEIGHTS)
    with pytest.raises(BackendError, match="exported from other weights"):
        Policy.load(model_dir, backend="onnxruntime", num_steps=5)


def test_tensorrt_missing_is_a_clear_error(tiny_dir):
    from ki_vla_ros.runtime.tensorrt_engine import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailable as exc:
        with pytest.raises(BackendError, match=str(exc)[:40].replace("(", r"\(").replace(")", r"\)")):
            Policy.load(tiny_dir, backend="tensorrt")
    else:
        pytest.skip("TensorRT and a GPU are present: test_tensorrt_matches_onnxruntime covers the backend")


def test_ensure_export_exports_once_per_weights_and_flow_steps(tiny_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from ki_vla_ros.export.cli import ensure_export

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_dir, model_dir)
    spec = model_dir / "onnx" / "export.json"
    assert ensure_export(model_dir, num_steps=3) and spec.is_file()
    made = spec.stat().st_mtime_ns
    assert not ensure_export(model_dir, num_steps=3) and spec.stat().st_mtime_ns == made  # up to date: kept
    Policy.load(model_dir, backend="onnxruntime", num_steps=3)
    assert ensure_export(model_dir, num_steps=4)  # other flow steps: exported again
    Policy.load(model_dir, backend="onnxruntime", num_steps=4)
    tensors = load_file(str(model_dir / WEIGHTS))  # other weights (a retrained folder): exported again
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(model_dir / WEIGHTS), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    with pytest.raises(BackendError, match="other weights"):
        Policy.load(model_dir, backend="onnxruntime", num_steps=4)
    assert ensure_export(model_dir, num_steps=4)
    Policy.load(model_dir, backend="onnxruntime", num_steps=4)


@pytest.mark.gpu
def test_tensorrt_matches_onnxruntime(tiny_dir, tmp_path):
    from ki_vla_ros.export.cli import export_model_dir
    from ki_vla_ros.runtime.tensorrt_engine import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailable as exc:
        pytest.skip(str(exc))
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_dir, model_dir)
    export_model_dir(model_dir, num_steps=10, precisions=("fp32", "fp16"))
    ort_policy = Policy.load(model_dir, backend="onnxruntime")
    for precision, tol in (("fp32", 1e-3), ("fp16", 5e-2)):
        trt_policy = Policy.load(model_dir, backend="tensorrt", precision=precision)
        engines = list((model_dir / "onnx" / "engines").glob(f"*-{precision}/*.engine"))
        assert len(engines) == 2, engines
        obs = observation(1)
        noise = ort_policy.draw_noise(1)
        a_o = ort_policy.infer(obs, noise=noise).actions
        a_t = trt_policy.infer(obs, noise=noise).actions
        assert np.abs(a_t - a_o).max() < tol * (HIGH - LOW).max(), precision


def test_blank_images_control_policy_sees_black(tmp_path):
    from ki_vla_ros.sim.controls import BlankImagesPolicy

    _, folder = trained_like_dir(tmp_path, "m")
    obs = observation(5)
    blank = BlankImagesPolicy.load(folder).infer(obs, seed=2).actions
    black = dataclasses.replace(obs, images={k: np.zeros_like(v) for k, v in obs.images.items()})
    np.testing.assert_array_equal(blank, Policy.load(folder).infer(black, seed=2).actions)
    assert np.abs(blank - Policy.load(folder).infer(obs, seed=2).actions).max() > 1e-4  # the images mattered


def test_load_policy_uses_the_model_folders_flow_steps_unless_given(tiny_dir, tmp_path):
    """The node's, the demo's and eval-bag's default (num_steps 0) is what the model folder records."""
    import shutil

    import yaml

    from ki_vla_ros.control.policy_loader import load_policy

    folder = tmp_path / "three_steps"
    shutil.copytree(tiny_dir, folder, ignore=shutil.ignore_patterns("onnx"))
    doc = yaml.safe_load((folder / "model.yaml").read_text())
    doc["num_flow_steps"] = 3
    (folder / "model.yaml").write_text(yaml.safe_dump(doc))
    assert load_policy(folder).num_steps == 3
    assert load_policy(folder, num_steps=5).num_steps == 5
    assert load_policy(tiny_dir).num_steps == 10


class NoPrecisionPolicy:
    """A custom policy whose load() predates the precision parameter."""

    @classmethod
    def load(cls, model_dir, backend="torch", num_steps=None):
        return cls()


class AnyKeywordPolicy:
    @classmethod
    def load(cls, model_dir, **kwargs):
        obj = cls()
        obj.kwargs = kwargs
        return obj


def test_a_precision_a_custom_policy_cannot_take_is_refused_by_name(tmp_path):
    from ki_vla_ros.control.policy_loader import load_policy

    spec = f"{__name__}:NoPrecisionPolicy"
    assert isinstance(load_policy(tmp_path, policy_class=spec), NoPrecisionPolicy)  # auto: not passed
    with pytest.raises(ValueError, match=rf"policy_class '{spec}': its load\(\) takes no precision argument, so "
                                         r"precision 'fp32' cannot be honoured"):
        load_policy(tmp_path, policy_class=spec, precision="fp32")
    got = load_policy(tmp_path, policy_class=f"{__name__}:AnyKeywordPolicy", precision="int8")
    assert got.kwargs == {"backend": "torch", "num_steps": None, "precision": "int8"}
