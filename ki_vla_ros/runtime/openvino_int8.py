"""int8 matrix products for OpenVINO's CPU plugin, made at load time from the fp32 export.

Every matrix product of the tokens (activations [B, N, K], a constant weight [K, N'] or [N', K]) gets
its weight stored as int8 per output channel (symmetric: w ≈ scale · q, q in −127…127, scale =
max |w| / 127 of the channel) followed by a Convert and a Multiply by the scales. The CPU plugin
recognises that pattern as a compressed weight (`FullyConnectedCompressed`) and, on CPUs with int8
dot products (AVX512-VNNI, AMX-INT8), also quantises the activations per call, in groups of 32
along K (its `DYNAMIC_QUANTIZATION_GROUP_SIZE` default): int8 × int8 products with int32 sums,
rescaled to the compute precision. The rest of the graph runs in bf16 (or fp32 on CPUs without
bf16 units). Products of rank-2 activations (the flow time's MLP and the adaRMS modulations, which
the compiler folds to constants: the flow times are fixed at export) keep their fp32 weights.

The export on disk stays fp32 (one file for fp32, bf16 and int8); `runtime/precision.py` checks the
int8 policy's actions against fp32 like every other precision before a policy may use it.
"""

from __future__ import annotations

import numpy as np


def quantize_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """w float [.., ..] -> (q int8, scale float32), w ≈ q · scale, one scale per index of `axis` (the
    output channel; the scale keeps w's rank for broadcasting). An all-zero channel gets scale 1."""
    w = np.asarray(w, np.float32)
    reduce = tuple(d for d in range(w.ndim) if d != axis % w.ndim)
    scale = np.abs(w).max(axis=reduce, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def compress_matmul_weights(model) -> int:
    """Rewrite an `openvino.Model` in place: the constant weight of every MatMul over token
    activations (rank >= 3) becomes int8 + Convert + Multiply by its per-channel scales. Returns
    how many products were rewritten."""
    import openvino as ov
    import openvino.opset13 as ops

    count = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        weight = node.input_value(1).get_node()
        if weight.get_type_name() != "Constant" or node.input_value(0).get_partial_shape().rank.get_length() < 3:
            continue
        w = weight.get_data()
        if w.ndim != 2 or w.dtype != np.float32:
            continue
        out_axis = 0 if node.get_attributes().get("transpose_b", False) else 1  # [N', K] or [K, N']
        q, scale = quantize_per_channel(w, out_axis)
        restored = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))
        node.input(1).replace_source_output(restored.output(0))
        count += 1
    return count
