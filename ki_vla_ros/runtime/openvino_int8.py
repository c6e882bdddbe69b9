"""int8 matrix products for OpenVINO's CPU plugin, made at load time from the fp32 export.

Every matrix product of the tokens (activations [B, N, K], a constant weight [K, N'] or [N', K]) gets
its weight stored as int8 per output channel (symmetric: w ≈ scale · q, q in −127…127, scale =
max |w| / 127 of the channel) followed by a Convert and a Multiply by the scales. The CPU plugin
recognises that pattern as a compressed weight (`FullyConnectedCompressed`) and, on CPUs with int8
dot products (AVX512-VNNI, AMX-INT8), also quantises the activations per call, in groups along K
(`DYNAMIC_QUANTIZATION_GROUP_SIZE`): int8 × int8 products with int32 sums, rescaled to the compute
precision. The group is `activation_group`, not the plugin's default of 32: the largest power of two
up to 128 that divides the inner dimension of the products holding 90 % of their FLOPs. Each group's
scale costs work per call, and a product whose K the group does not divide would fall back to slower
kernels, so those products (e.g. the expert's action input, K = 32) keep fp32 weights and run in
bf16. Measured: `small` gets 64 (128 would leave out the vision tower's K = 192), peer dims 128
(docs/runtime.md, "int8 groups"). The rest of the graph runs in bf16 (or fp32 on CPUs without bf16
units). Products of rank-2 activations (the flow time's MLP and the adaRMS modulations, which the
compiler folds to constants: the flow times are fixed at export) keep their fp32 weights.

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


def activation_group(products: list[tuple[int, int]], largest: int = 128, share: float = 0.9) -> int:
    """The activation quantisation group for token-wise products given as (inner dimension K, FLOPs):
    the largest power of two g <= `largest` such that the products whose K it divides hold at least
    `share` of all their FLOPs. `compress_matmul_weights` leaves the others (e.g. the expert's action
    input, K = 32) in fp32 weights and bf16 compute, so that they do not force small groups on all."""
    total = sum(f for _, f in products)
    group = largest
    while group > 1 and sum(f for k, f in products if k % group == 0) < share * total:
        group //= 2
    return group


def _token_products(model):
    """(MatMul node, its constant fp32 weight [.., ..], the weight's output-channel axis) for every
    product of token activations (rank >= 3, static shape) in an `openvino.Model`."""
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        weight, shape = node.input_value(1).get_node(), node.input_value(0).get_partial_shape()
        if weight.get_type_name() != "Constant" or shape.rank.get_length() < 3 or not shape.is_static:
            continue
        w = weight.get_data()
        if w.ndim == 2 and w.dtype == np.float32:
            yield node, w, 0 if node.get_attributes().get("transpose_b", False) else 1  # [N', K] or [K, N']


def product_sizes(model) -> list[tuple[int, int]]:
    """(inner dimension K, FLOPs) of every token-wise product of `model`."""
    return [(int(w.shape[1 - axis]), 2 * int(np.prod(node.input_value(0).get_shape())) * int(w.shape[axis]))
            for node, w, axis in _token_products(model)]


def compress_matmul_weights(model, group: int = 1) -> list[int]:
    """Rewrite an `openvino.Model` in place: the constant weight of every MatMul over token
    activations whose inner dimension K is a multiple of `group` (the activation group) becomes
    int8 + Convert + Multiply by its per-channel scales. Returns the K of each rewritten product."""
    import openvino as ov
    import openvino.opset13 as ops

    rewritten = []
    for node, w, out_axis in list(_token_products(model)):
        k = int(w.shape[1 - out_axis])
        if k % group:
            continue
        q, scale = quantize_per_channel(w, out_axis)
        restored = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))
        node.input(1).replace_source_output(restored.output(0))
        rewritten.append(k)
    return rewritten
