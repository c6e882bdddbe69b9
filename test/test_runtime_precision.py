"""Precision as a runtime choice (runtime/precision.py): bf16 on torch and OpenVINO and int8 on ONNX
Runtime and OpenVINO run only once the model folder records them as checked against fp32 for its weights; their
action error against fp32 on the same inputs and noise stays under the bound; bad choices fail
clearly."""

import json
import platform
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_runtime_policy import HIGH, LOW, observation, trained_like_dir

from ki_vla_ros.control.policy_loader import load_policy, resolve_backend
from ki_vla_ros.export import cli as export_cli
from ki_vla_ros.export.cli import export_model_dir
from ki_vla_ros.runtime import BackendError, Policy
from ki_vla_ros.runtime.model_dir import WEIGHTS, load_model_dir
from ki_vla_ros.runtime.precision import BOUNDS, ISA_FLAGS, RECORD, PrecisionError, action_error, cpu_backend, machine

pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")
OV_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")  # the CPU's bf16 units


@pytest.fixture(scope="module")
def checked_dir(tmp_path_factory):
    """A tiny model folder with opened adaRMS gates (as after training), exported and checked in fp32,
    bf16 and int8."""
    _, path = trained_like_dir(tmp_path_factory.mktemp("models"), "m")
    with pytest.raises(PrecisionError, match=r"bf16 on torch has not been checked .* --precision bf16"):
        Policy.load(path, precision="bf16")
    result = export_model_dir(path, num_steps=5, precisions=("fp32", "bf16", "int8"))
    return path, result


def test_checked_precisions_are_recorded_and_bounded(checked_dir):
    path, result = checked_dir
    record = json.loads((path / RECORD).read_text())
    assert record["weights_sha256"] == load_model_dir(path).weights_sha256
    assert set(result["checks"]) == {"torch/bf16", "openvino/bf16", "onnxruntime/int8", "openvino/int8"}
    if OV_BF16:
        assert set(record["checks"]) == set(result["checks"])
    else:  # said, not recorded
        assert result["checks"]["openvino/bf16"].startswith("not checked: backend 'openvino': this CPU has no bf16")
        assert set(record["checks"]) == {"torch/bf16", "onnxruntime/int8", "openvino/int8"}
    for key, entry in record["checks"].items():
        precision = key.split("/")[1]
        assert entry["ok"] and entry["bound"] == BOUNDS[precision]
        assert 0 < entry["mean_abs_error"] <= entry["max_abs_error"] <= BOUNDS[precision], key
    assert sorted(json.loads((path / "onnx" / "export.json").read_text())["precisions"]) == ["bf16", "fp32", "int8"]


@pytest.mark.parametrize("backend, precision", [("torch", "bf16"), ("onnxruntime", "int8"), ("openvino", "bf16"),
                                                ("openvino", "int8")])
def test_checked_precision_acts_close_to_fp32(checked_dir, backend, precision):
    path, _ = checked_dir
    if (backend, precision) == ("openvino", "bf16") and not OV_BF16:
        pytest.skip("this CPU has no bf16 units (AVX512-BF16 or AMX): OpenVINO runs fp32 only")
    reference = Policy.load(path, num_steps=5)
    policy = Policy.load(path, backend=backend, num_steps=5, precision=precision)
    assert policy.precision == precision and reference.precision == "fp32"
    if backend == "torch":
        assert next(policy.backend.model.parameters()).dtype == torch.bfloat16
    error = action_error(reference, policy, observations=2)
    assert 0 < error["max_abs_error"] <= BOUNDS[precision]
    obs = observation(5)  # robot units: the error scales with each action's q01…q99 half-range
    a_ref, a = reference.infer(obs, seed=1).actions, policy.infer(obs, seed=1).actions
    assert np.abs(a - a_ref).max() <= BOUNDS[precision] * (HIGH - LOW).max() / 2


def test_other_weights_need_a_new_check_and_a_failed_check_is_refused(checked_dir, tmp_path, monkeypatch):
    path = tmp_path / "m"
    shutil.copytree(checked_dir[0], path)
    tensors = load_file(path / WEIGHTS)
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name] * 1.01
    save_file(tensors, path / WEIGHTS)
    with pytest.raises(PrecisionError, match="has not been checked against fp32 for these weights"):
        Policy.load(path, precision="bf16", num_steps=5)
    monkeypatch.setitem(BOUNDS, "bf16", 1e-9)
    assert export_model_dir(path, num_steps=5, precisions=("bf16",))["checks"]["torch/bf16"]["ok"] is False
    with pytest.raises(PrecisionError, match=r"bf16 on torch failed its check \(max action error .* > 1e-09\)"):
        Policy.load(path, precision="bf16", num_steps=5)


def test_cpu_default_is_openvino_int8_only_while_its_check_holds_for_these_weights(checked_dir, tmp_path,
                                                                                    monkeypatch):
    """`cpu_backend` (the demo's and `ki-vla eval`'s `--backend auto`): OpenVINO int8 where the folder
    records a passed check of it for its weights on this kind of machine; ONNX Runtime fp32 for a
    failed check, a check made on another kind of machine, other weights, or no record."""
    path, result = checked_dir
    assert result["checks"]["openvino/int8"]["ok"] and cpu_backend(path) == ("openvino", "int8")
    copy = tmp_path / "m"
    shutil.copytree(path, copy)
    monkeypatch.setitem(BOUNDS, "int8", 1e-9)
    assert export_model_dir(copy, num_steps=5, precisions=("int8",))["checks"]["openvino/int8"]["ok"] is False
    assert cpu_backend(copy) == ("onnxruntime", "fp32")
    shutil.copy(path / RECORD, copy / RECORD)
    assert cpu_backend(copy) == ("openvino", "int8")
    assert machine().split()[0] == platform.machine() and set(machine().split()[1:]) <= set(ISA_FLAGS)
    arch, *flags = machine().split()
    other_arch = "aarch64" if arch != "aarch64" else "x86_64"
    other_isa = " ".join([arch, *(flags[:-1] if flags else ["avx2"])])  # one extension less (or more)
    for kind in (other_arch, other_isa):  # checked on another kind of machine
        record = json.loads((copy / RECORD).read_text())
        record["checks"]["openvino/int8"]["machine"] = kind
        (copy / RECORD).write_text(json.dumps(record))
        assert cpu_backend(copy) == ("onnxruntime", "fp32"), kind
        shutil.copy(path / RECORD, copy / RECORD)
    assert cpu_backend(copy) == ("openvino", "int8")
    tensors = load_file(copy / WEIGHTS)
    name = sorted(tensors)[-1]
    save_file({**tensors, name: tensors[name] * 1.01}, copy / WEIGHTS)
    assert cpu_backend(copy) == ("onnxruntime", "fp32")
    (copy / RECORD).unlink()
    assert cpu_backend(copy) == ("onnxruntime", "fp32")


def test_unsupported_precisions_are_clear_errors(checked_dir):
    path, _ = checked_dir
    with pytest.raises(BackendError, match="backend 'onnxruntime' runs fp32, int8, not 'bf16'"):
        Policy.load(path, backend="onnxruntime", precision="bf16", num_steps=5, require_check=False)
    with pytest.raises(BackendError, match="fp16 is for GPUs; on a CPU use bf16"):
        Policy.load(path, precision="fp16", require_check=False)
    with pytest.raises(BackendError, match="backend 'openvino' runs fp32, bf16, int8, not 'fp16'"):
        Policy.load(path, backend="openvino", precision="fp16", num_steps=5, require_check=False)
    with pytest.raises(BackendError, match="backend 'torch' runs fp32, bf16, fp16, not 'int4'"):
        Policy.load(path, precision="int4", require_check=False)
    assert Policy.load(path, backend="onnxruntime", num_steps=5).precision == "fp32"  # auto
    assert Policy.load(path, backend="openvino", num_steps=5).precision == "fp32"


def test_openvino_int8_quantises_the_token_products(checked_dir):
    from ki_vla_ros.runtime.openvino_int8 import activation_group, product_sizes

    """OpenVINO int8 rewrites every token-wise matrix product of both graphs (prefix: vision tower and
    backbone; flow loop: the expert in each Euler step) to int8 weights, and acts differently from the
    same graph left in fp32 weights (bf16 where the CPU has it, fp32 otherwise)."""
    path, _ = checked_dir
    int8 = Policy.load(path, backend="openvino", precision="int8", num_steps=5)
    same_compute = Policy.load(path, backend="openvino", num_steps=5, precision="bf16" if OV_BF16 else "fp32")
    c = int8.config
    # four products per layer (q/k/v, o, gate/up, down as exported; the backbone's last layer only its
    # q/k/v: the cache needs its keys and values alone), the image projector, and per Euler step the
    # expert's layers and its action in / out projections
    prefix = 4 * c.vision_depth + 1 + 4 * (c.depth - 1) + 1
    import openvino as ov

    core = ov.Core()
    sizes = [s for f in ("prefix.onnx", "flow_loop.onnx")
             for s in product_sizes(core.read_model(str(path / "onnx" / f)))]
    assert len(sizes) == prefix + 5 * (4 * c.depth + 2)
    # activations quantised in groups of the largest power of two (<= 128) dividing the products of
    # 90 % of the FLOPs; only products whose K it divides get int8 weights (here all but the action input)
    group = int8.backend.activation_group
    assert group == activation_group(sizes) and group >= 16, (group, sizes)
    assert int8.backend.int8_products == sum(k % group == 0 for k, _ in sizes) >= len(sizes) - 5
    obs = observation(5)
    a8, a = int8.infer(obs, seed=1).actions, same_compute.infer(obs, seed=1).actions
    assert not np.array_equal(a8, a)


def test_openvino_runs_each_rotary_embedding_as_one_fused_node(checked_dir):
    """`attention.apply_rope` is written in the form OpenVINO's RoPE fusion recognises: the compiled
    chunk runs one RoPE node per backbone layer of the prefix and per expert layer and Euler step of the
    flow loop, instead of a split, a concatenation and the products (docs/runtime.md)."""
    path, _ = checked_dir
    policy = Policy.load(path, backend="openvino", num_steps=5)
    graph = policy.backend._requests["chunk"].get_compiled_model().get_runtime_model()
    kinds = [op.get_rt_info()["layerType"].astype(str) for op in graph.get_ordered_ops()]
    c = policy.config
    assert kinds.count("RoPE") == c.depth + 5 * c.depth


def test_activation_group_is_the_largest_power_of_two_dividing_the_bulk_of_the_work():
    from ki_vla_ros.runtime.openvino_int8 import activation_group

    # (K, FLOPs): `small`-like, the vision tower's K = 192 holds 20 % of the work: 128 would leave it out
    small = [(32, 1), (128, 30), (256, 30), (192, 15), (768, 5), (1024, 19)]
    assert activation_group(small) == 64
    assert activation_group([(32, 1), (384, 20), (1536, 10), (512, 30), (2048, 39)]) == 128  # peer-like
    assert activation_group([(1152, 30), (4304, 40), (2048, 30)]) == 16  # SigLIP So400m's MLP width
    assert activation_group([(96, 1), (17, 1)], share=0.5) == 32  # 17 is left out
    assert activation_group([(96, 1), (17, 1)]) == 1
    assert activation_group([(512, 1), (1024, 1)], largest=64) == 64


def test_per_channel_int8_weights_round_to_the_nearest_step():
    from ki_vla_ros.runtime.openvino_int8 import quantize_per_channel

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 48)).astype(np.float32) * rng.uniform(0.01, 3, (1, 48)).astype(np.float32)
    w[:, 5] = 0.0  # an all-zero output channel
    for axis, shape in ((1, (1, 48)), (0, (64, 1))):
        q, scale = quantize_per_channel(w, axis)
        assert q.dtype == np.int8 and scale.shape == shape and np.abs(q).max() == 127
        assert np.all(np.abs(q.astype(np.float32) * scale - w) <= scale / 2 + 1e-7)
    q, scale = quantize_per_channel(w, 1)
    assert scale[0, 5] == 1.0 and not q[:, 5].any()
    assert np.array_equal(np.abs(q).max(axis=0)[[0, 1, 47]], [127, 127, 127])  # each channel uses its full range


def test_auto_backend_runs_the_checked_cpu_path_and_exports_what_it_needs(checked_dir, tmp_path, monkeypatch):
    """`backend="auto"` (the node's, `ki-vla run`'s, the demo's): `resolve_backend` picks OpenVINO int8
    where the folder records its check, ONNX Runtime fp32 where it records none — exported on load —
    and passes named backends through; `load_policy` then runs what it picked."""
    path, result = checked_dir
    assert resolve_backend(path, "openvino", "bf16") == ("openvino", "bf16")
    assert resolve_backend(path, "auto", "auto", policy_class="pkg.mod:Cls") == ("torch", "auto")
    assert resolve_backend(path, "my_engine", policy_class="pkg.mod:Cls") == ("my_engine", "auto")
    with pytest.raises(ValueError, match="backend 'onnx': choose one of auto, torch"):
        resolve_backend(path, "onnx")
    # a named precision: the fastest CPU backend whose check of it passed here (fp32 needs none)
    assert resolve_backend(path, "auto", "fp32") == ("onnxruntime", "fp32")
    assert resolve_backend(path, "auto", "int8") == ("openvino", "int8")
    passed = [b for b in ("openvino", "onnxruntime", "torch") if result["checks"].get(f"{b}/bf16", {}).get("ok")]
    assert passed and resolve_backend(path, "auto", "bf16") == (passed[0], "bf16")
    with pytest.raises(ValueError, match=r"no CPU backend's fp16 check passed .* --precision fp16"):
        resolve_backend(path, "auto", "fp16")
    policy = load_policy(path, backend="auto", num_steps=5)
    assert (policy.backend.name, policy.precision) == ("openvino", "int8")

    kept = tmp_path / "kept"  # as a fresh clone of a checked folder: the record, no onnx/ (`make run`)
    shutil.copytree(path, kept, ignore=shutil.ignore_patterns("onnx"))
    policy = load_policy(kept, backend="auto", num_steps=5)
    assert (policy.backend.name, policy.precision) == ("openvino", "int8") and (kept / "onnx").is_dir()

    fresh = tmp_path / "fresh"  # the same weights, never exported: no onnx/, no precision record
    shutil.copytree(path, fresh, ignore=shutil.ignore_patterns("onnx", RECORD))
    assert not (fresh / "onnx").exists() and not (fresh / RECORD).exists()
    policy = load_policy(fresh, backend="auto", num_steps=5)
    assert (policy.backend.name, policy.precision) == ("onnxruntime", "fp32") and (fresh / "onnx").is_dir()
    reference = load_policy(fresh, backend="torch", num_steps=5)
    obs = observation(seed=4)
    np.testing.assert_allclose(policy.infer(obs, seed=2).actions, reference.infer(obs, seed=2).actions,
                               atol=1e-4)

    unwritable = tmp_path / "unwritable"  # e.g. installed read-only: the export fails with a message
    shutil.copytree(path, unwritable, ignore=shutil.ignore_patterns("onnx", RECORD))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(unwritable / "onnx"))

    monkeypatch.setattr(export_cli, "export_model_dir", refuse)
    with pytest.raises(BackendError, match=r"unwritable: cannot write its ONNX export .*Permission denied.*torch"):
        load_policy(unwritable, backend="auto", num_steps=5)
