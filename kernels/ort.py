"""Attention on the onnxruntime backend: one ONNX graph per case, built in memory and run on the CPU EP.

core fp32: com.microsoft.MultiHeadAttention. core int8: Q/K quantized in the graph (K smoothed, per-token
or per-block scales), QK^T through com.microsoft.MatMulIntegerToFloat (u8 x u8 on x86 without an int8 dot
product, where u8 x s8 saturates in VPMADDUBSW's int16 pairs; u8 x s8 where VNNI/dot product exists), fp32
Softmax, V int8 per channel, fp32 P.V. block: the four projections as fp32 MatMul, int8 MatMulInteger on dynamically quantized
activations, or int4 weights through com.microsoft.MatMulNBits; the core is MultiHeadAttention fp32.
onnxruntime and onnx are imported inside the builders, so a device without them can still run torch.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from .caps import INT8_DOT_FLAGS, has_int8_dot, is_x86
from .inputs import AttnInputs
from .quant import quantize_int4_groups
from .registry import Built, Context, Requires, Unsupported, register

ORT = Requires(modules=("onnxruntime", "onnx", "numpy"))
ORT_INT8 = Requires(modules=("onnxruntime", "onnx", "numpy"), isa_any=INT8_DOT_FLAGS)
Q_BLOCK = 32  # tokens per scale for quant: per_block (as the torch int8 kernel)


def session(nodes: list, inputs: list, outputs: list, initializers: list | None = None, threads: int | None = None):
    """An InferenceSession on the CPU EP for a graph made of `nodes` (opset 17 + com.microsoft 1)."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "attn", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning pool threads would keep burning cores after each run and slow whatever runs next (a torch
    # kernel timed in the same process, the harness's sampler): measured 100x on a 2-core machine.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _threads(case: Mapping[str, Any]) -> int:
    return case.get("threads") or torch.get_num_threads()


def _vi(name: str, elem: int, shape: list | None = None):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def _const(name: str, value: Any, dtype: Any = np.float32):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _bnsh(out: np.ndarray, b: int, n: int, h: int, d: int) -> np.ndarray:
    return out.reshape(b, n, h, d).transpose(0, 2, 1, 3)


def _bsh(t: torch.Tensor) -> np.ndarray:
    b, h, n, d = t.shape
    return np.ascontiguousarray(t.permute(0, 2, 1, 3).reshape(b, n, h * d).numpy())


@register("dense", "fp32", "onnxruntime", requires=ORT,
          description="com.microsoft.MultiHeadAttention fp32 (Q/K/V as [B, L, H*D])")
def ort_dense_fp32(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    from onnx import TensorProto as T, helper

    b, h, n, d = case["batch"], case["heads"], case["seq_len"], case["head_dim"]
    sess = session([helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft",
                                     num_heads=h)],
                   [_vi(x, T.FLOAT) for x in "qkv"], [_vi("o", T.FLOAT)], threads=_threads(case))
    feed = {"q": _bsh(inputs.q), "k": _bsh(inputs.k), "v": _bsh(inputs.v)}

    def fn() -> np.ndarray:
        return _bnsh(sess.run(None, feed)[0], b, n, h, d)
    return Built(fn, compute="com.microsoft.MultiHeadAttention fp32 (CPU EP)",
                 bytes={"kv": 2 * b * h * n * d * 4})


def _quant_rows_nodes(x: str, rows: int, n: int, d: int, unsigned: bool, tag: str) -> tuple[list, str, str]:
    """Nodes quantizing x [B, H, n, d] symmetric int8 per `rows` tokens; returns (nodes, int tensor, scale [B,H,n,1]).

    unsigned: the int8 value + 128 as uint8 (zero point 128), for u8 x u8 MatMulInteger.
    """
    from onnx import TensorProto as T, helper

    nodes = [helper.make_node("Abs", [x], [f"{tag}_abs"])]
    if rows == 1:
        nodes.append(helper.make_node("ReduceMax", [f"{tag}_abs"], [f"{tag}_amax"], axes=[3], keepdims=1))
    else:
        nodes += [helper.make_node("Reshape", [f"{tag}_abs", f"{tag}_blkshape"], [f"{tag}_blk"]),
                  helper.make_node("ReduceMax", [f"{tag}_blk"], [f"{tag}_bmax"], axes=[3], keepdims=1),
                  helper.make_node("Expand", [f"{tag}_bmax", f"{tag}_rowshape"], [f"{tag}_bexp"]),
                  helper.make_node("Reshape", [f"{tag}_bexp", f"{tag}_outshape"], [f"{tag}_amax"])]
    nodes += [helper.make_node("Max", [f"{tag}_amax", "tiny"], [f"{tag}_amax_nz"]),
              helper.make_node("Div", [f"{tag}_amax_nz", "i8max"], [f"{tag}_scale"]),
              helper.make_node("Div", [x, f"{tag}_scale"], [f"{tag}_div"]),
              helper.make_node("Round", [f"{tag}_div"], [f"{tag}_round"])]
    if unsigned:
        nodes += [helper.make_node("Add", [f"{tag}_round", "u8zp_f"], [f"{tag}_shift"]),
                  helper.make_node("Cast", [f"{tag}_shift"], [f"{tag}_int"], to=T.UINT8)]
    else:
        nodes.append(helper.make_node("Cast", [f"{tag}_round"], [f"{tag}_int"], to=T.INT8))
    return nodes, f"{tag}_int", f"{tag}_scale"


@register("dense", "int8", "onnxruntime", requires=ORT_INT8,
          description="in-graph int8 quantization of Q/K (K smoothed, per-token or per-block scales), QK^T through "
                      "com.microsoft.MatMulIntegerToFloat (u8s8 with an int8 dot product, u8u8 without), fp32 "
                      "Softmax, V int8 per channel, fp32 P.V")
def ort_dense_int8(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    from onnx import TensorProto as T, helper

    b, h, n, d = case["batch"], case["heads"], case["seq_len"], case["head_dim"]
    quant = case.get("quant", "per_token")
    if quant not in ("per_block", "per_token"):
        raise Unsupported(f"quant {quant} is not supported by dense/int8/onnxruntime; use per_block or per_token")
    rows = Q_BLOCK if quant == "per_block" else 1
    if n % rows:
        raise Unsupported(f"per_block needs seq_len a multiple of {rows}; got {n}. Use quant: per_token")
    unsigned_k = not has_int8_dot(ctx.caps)
    consts = [_const("tiny", 1e-12), _const("i8max", 127.0), _const("u8zp_f", 128.0),
              _const("u8zp", 128, np.uint8), _const("inv_sqrt_d", 1.0 / math.sqrt(d))]
    if rows > 1:
        for t in ("q", "k"):
            consts += [_const(f"{t}_blkshape", [b, h, n // rows, rows * d], np.int64),
                       _const(f"{t}_rowshape", [b, h, n // rows, rows], np.int64),
                       _const(f"{t}_outshape", [b, h, n, 1], np.int64)]
    nodes = [helper.make_node("ReduceMean", ["k"], ["k_mean"], axes=[2], keepdims=1),
             helper.make_node("Sub", ["k", "k_mean"], ["k_s"])]
    qn, qi, qs = _quant_rows_nodes("q", rows, n, d, True, "q")
    kn, ki, ks = _quant_rows_nodes("k_s", rows, n, d, unsigned_k, "k")
    nodes += qn + kn
    # One op from the integer product to scaled fp32 scores: (Q - 128) K^T * (q_scale / sqrt(d)) * k_scale,
    # the scales broadcast per query row [B, H, n, 1] and per key column [B, H, 1, n] (MatMulInteger + Cast +
    # two Muls before: 0.52x of fp32, this route 0.92x, measured at L=2048).
    nodes += [helper.make_node("Transpose", [ki], ["k_t"], perm=[0, 1, 3, 2]),
              helper.make_node("Transpose", [ks], ["ks_t"], perm=[0, 1, 3, 2]),
              helper.make_node("Mul", [qs, "inv_sqrt_d"], ["qs_d"]),
              helper.make_node("MatMulIntegerToFloat", [qi, "k_t", "qs_d", "ks_t", "u8zp"]
                               + (["u8zp"] if unsigned_k else []), ["scores"], domain="com.microsoft"),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              # V int8 per channel (the cache format), dequantized for an fp32 P.V.
              helper.make_node("Abs", ["v"], ["v_abs"]),
              helper.make_node("ReduceMax", ["v_abs"], ["v_amax"], axes=[2], keepdims=1),
              helper.make_node("Max", ["v_amax", "tiny"], ["v_amax_nz"]),
              helper.make_node("Div", ["v_amax_nz", "i8max"], ["v_scale"]),
              helper.make_node("Div", ["v", "v_scale"], ["v_div"]),
              helper.make_node("Round", ["v_div"], ["v_round"]),
              helper.make_node("Cast", ["v_round"], ["v_i8"], to=T.INT8),
              helper.make_node("Cast", ["v_i8"], ["v_back"], to=T.FLOAT),
              helper.make_node("Mul", ["v_back", "v_scale"], ["v_deq"]),
              helper.make_node("MatMul", ["p", "v_deq"], ["o"])]
    sess = session(nodes, [_vi(x, T.FLOAT, [b, h, n, d]) for x in "qkv"], [_vi("o", T.FLOAT)], consts,
                   threads=_threads(case))
    feed = {x: getattr(inputs, x).contiguous().numpy() for x in "qkv"}
    pair = "u8u8" if unsigned_k else "u8s8"

    def fn() -> np.ndarray:
        return sess.run(None, feed)[0]
    k_scales = n // rows
    return Built(fn, compute=f"Q/K int8 ({quant}, K smoothed) quantized in the graph; MatMulIntegerToFloat {pair} "
                             "-> scaled fp32 scores; Softmax fp32; V int8 per channel, dequantized; MatMul fp32",
                 bytes={"kv": b * h * (2 * n * d + 4 * k_scales + 4 * d)},
                 meta={"int8_route": f"onnxruntime com.microsoft.MatMulIntegerToFloat {pair}",
                       "int8_fast_path": sorted(set(ctx.caps.get("isa", ())).intersection(INT8_DOT_FLAGS))})


# ---- scope: block -------------------------------------------------------------------------------------------

def _block_graph(case: Mapping[str, Any], inputs: AttnInputs, proj, extra_consts: list) -> Any:
    """Session for x -> proj(wq|wk|wv) -> MultiHeadAttention -> proj(wo); `proj(name, src, dst)` gives nodes."""
    from onnx import TensorProto as T, helper

    h = case["heads"]
    nodes = []
    for name in ("wq", "wk", "wv"):
        nodes += proj(name, "x", f"{name}_out")
    nodes.append(helper.make_node("MultiHeadAttention", ["wq_out", "wk_out", "wv_out"], ["attn"],
                                  domain="com.microsoft", num_heads=h))
    nodes += proj("wo", "attn", "y")
    return session(nodes, [_vi("x", T.FLOAT)], [_vi("y", T.FLOAT)], extra_consts, threads=_threads(case))


@register("dense", "fp32", "onnxruntime", "block", requires=ORT,
          description="fp32 MatMul projections around com.microsoft.MultiHeadAttention")
def ort_block_fp32(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    from onnx import helper

    assert inputs.x is not None and inputs.w is not None
    consts = [_const(name, t.numpy()) for name, t in inputs.w.items()]

    def proj(name: str, src: str, dst: str) -> list:
        return [helper.make_node("MatMul", [src, name], [dst])]
    sess = _block_graph(case, inputs, proj, consts)
    feed = {"x": inputs.x.contiguous().numpy()}

    def fn() -> np.ndarray:
        return sess.run(None, feed)[0]
    return Built(fn, compute="MatMul fp32 projections; MultiHeadAttention fp32",
                 bytes={"weights": sum(t.nbytes for t in inputs.w.values())})


@register("dense", "int8", "onnxruntime", "block", requires=ORT_INT8,
          description="DynamicQuantizeLinear activations (u8) x s8 per-column weights through MatMulInteger for "
                      "the four projections; MultiHeadAttention fp32 core")
def ort_block_int8(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    from onnx import TensorProto as T, helper

    assert inputs.x is not None and inputs.w is not None
    # u8 x s8 pairs saturate VPMADDUBSW's int16 on x86 without VNNI: 7-bit weights keep them exact there.
    narrow = not has_int8_dot(ctx.caps) and is_x86(ctx.caps)
    wmax = 63 if narrow else 127
    consts = []
    wbytes = 0
    for name, t in inputs.w.items():
        w = t.numpy()
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / wmax  # per output column
        consts += [_const(f"{name}_i8", np.clip(np.round(w / scale), -wmax, wmax), np.int8),
                   _const(f"{name}_s", scale)]
        wbytes += w.size + scale.nbytes

    def proj(name: str, src: str, dst: str) -> list:
        return [helper.make_node("DynamicQuantizeLinear", [src], [f"{dst}_u8", f"{dst}_xs", f"{dst}_xzp"]),
                helper.make_node("MatMulInteger", [f"{dst}_u8", f"{name}_i8", f"{dst}_xzp"], [f"{dst}_acc"]),
                helper.make_node("Cast", [f"{dst}_acc"], [f"{dst}_accf"], to=T.FLOAT),
                helper.make_node("Mul", [f"{dst}_xs", f"{name}_s"], [f"{dst}_sc"]),
                helper.make_node("Mul", [f"{dst}_accf", f"{dst}_sc"], [dst])]
    sess = _block_graph(case, inputs, proj, consts)
    feed = {"x": inputs.x.contiguous().numpy()}

    def fn() -> np.ndarray:
        return sess.run(None, feed)[0]
    return Built(fn, compute=f"projections: DynamicQuantizeLinear u8 (per tensor) x s8 per-column weights "
                             f"({'7' if narrow else '8'}-bit) via MatMulInteger -> int32; MultiHeadAttention fp32",
                 bytes={"weights": wbytes},
                 meta={"int8_route": "onnxruntime MatMulInteger u8s8", "weight_bits": 7 if narrow else 8,
                       "int8_fast_path": sorted(set(ctx.caps.get("isa", ())).intersection(INT8_DOT_FLAGS))})


@register("dense", "int4", "onnxruntime", "block", requires=ORT,
          description="int4 weights (two per byte, per-group scales) through com.microsoft.MatMulNBits "
                      "(accuracy_level 4: int8 activations); MultiHeadAttention fp32 core")
def ort_block_int4(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    from onnx import helper

    assert inputs.x is not None and inputs.w is not None
    group = case.get("group_size", 32)
    if group < 16 or group & (group - 1):
        raise Unsupported(f"MatMulNBits needs group_size a power of two >= 16; got {group}")
    consts = []
    wbytes = 0
    for name, t in inputs.w.items():
        k_in, n_out = t.shape
        if k_in % group:
            raise Unsupported(f"{name} input dim {k_in} is not a multiple of group_size {group}")
        # MatMulNBits layout: B [N, K/group, group/2] uint8 (unsigned nibbles, zero point 8), scales [N, K/group].
        packed, scales = quantize_int4_groups(t.t().contiguous(), group)  # signed nibbles per output row
        nib = (packed ^ 0x88).numpy().reshape(n_out, k_in // group, group // 2)  # +8: signed -> unsigned
        consts += [_const(f"{name}_q4", nib, np.uint8),
                   _const(f"{name}_s", scales.to(torch.float32).numpy().reshape(-1))]
        wbytes += nib.size + scales.nbytes

    def proj(name: str, src: str, dst: str) -> list:
        k_in, n_out = inputs.w[name].shape
        return [helper.make_node("MatMulNBits", [src, f"{name}_q4", f"{name}_s"], [dst], domain="com.microsoft",
                                 K=k_in, N=n_out, bits=4, block_size=group, accuracy_level=4)]
    sess = _block_graph(case, inputs, proj, consts)
    feed = {"x": inputs.x.contiguous().numpy()}

    def fn() -> np.ndarray:
        return sess.run(None, feed)[0]
    return Built(fn, compute=f"projections: int4 weights packed two per byte, per-group ({group}) scales, "
                             "MatMulNBits accuracy_level 4 (activations quantized to int8 per block where MLAS "
                             "has such a kernel, else fp32 after dequantization); MultiHeadAttention fp32",
                 bytes={"weights": wbytes}, meta={"int4_compute": "MatMulNBits bits=4 accuracy_level=4"})
