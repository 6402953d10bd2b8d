"""Dense attention on the torch backend: fp32 and bf16 through SDPA, int8 with real integer QK^T."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from .inputs import AttnInputs
from .quant import quantize_int8_channels, quantize_int8_rows
from .registry import Built, Context, Requires, Unsupported, register

# Query rows per tile in the int8 kernel: bounds the L x L score buffer to TILE x L per head.
TILE = 256
# Tokens per scale for `quant: per_block`. SageAttention uses Q 128 / K 64 on GPUs; 32 / 32 costs little more
# on a CPU and lifts cosine on N(0,1) inputs from 0.99992 to 0.99993 (per_token: 0.99996).
Q_BLOCK = 32
K_BLOCK = 32


def _sync(device: str) -> Callable[[], None]:
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _to(inputs: AttnInputs, ctx: Context, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(ctx.device, dtype).contiguous() for t in (inputs.q, inputs.k, inputs.v))


@register("dense", "fp32", "torch", requires=Requires(modules=("torch",)),
          description="torch.nn.functional.scaled_dot_product_attention in float32")
def dense_fp32(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    q, k, v = _to(inputs, ctx, torch.float32)
    sync = _sync(ctx.device)

    def fn() -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, k, v)
        sync()
        return out
    return Built(fn, compute="SDPA fp32", bytes={"kv": k.nbytes + v.nbytes})


@register("dense", "bf16", "torch", requires=Requires(modules=("torch",)),
          description="SDPA on bfloat16 Q/K/V (activations arrive in bf16; the cast is not timed)")
def dense_bf16(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    q, k, v = _to(inputs, ctx, torch.bfloat16)
    sync = _sync(ctx.device)

    def fn() -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, k, v)
        sync()
        return out
    return Built(fn, compute="SDPA bf16 (inputs and output bf16)", bytes={"kv": k.nbytes + v.nbytes},
                 meta={"fast_path_isa": [f for f in ("avx512_bf16", "amx_bf16", "bf16") if f in ctx.caps.get("isa", ())]})


def int8_qk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, q_block: int = Q_BLOCK,
                      k_block: int = K_BLOCK, quant: str = "per_block") -> torch.Tensor:
    """SageAttention-style attention on the CPU with integer QK^T.

    K is smoothed by subtracting its mean over tokens (softmax is invariant to the per-query constant this
    removes), Q and K are quantized to int8 with per-block (or per-token/per-channel) scales, QK^T runs as
    int8 x int8 -> int32 through `torch._int_mm`, the int32 scores are dequantized with the outer product
    of scales (1/sqrt(d) folded into Q's scale), softmax runs in fp32 and P.V in fp32. Quantizing Q and K
    is part of the call, as it is in a real model.
    """
    b, h, n, d = q.shape
    k = k - k.mean(dim=-2, keepdim=True)
    rows_q, rows_k = {"per_tensor": (n, n), "per_token": (1, 1), "per_block": (q_block, k_block)}[quant]
    qi, qs = quantize_int8_rows(q, rows_q)
    ki, ks = quantize_int8_rows(k, rows_k)
    qs = qs * (1.0 / math.sqrt(d))
    out = torch.empty_like(v)
    for bi in range(b):
        for hi in range(h):
            kt = ki[bi, hi].t()
            ks_row = ks[bi, hi].reshape(1, n)
            vv = v[bi, hi]
            for start in range(0, n, TILE):
                stop = min(start + TILE, n)
                acc = torch._int_mm(qi[bi, hi, start:stop], kt)
                scores = acc.to(torch.float32).mul_(qs[bi, hi, start:stop]).mul_(ks_row)
                p = torch.softmax(scores, dim=-1)
                torch.matmul(p, vv, out=out[bi, hi, start:stop])
    return out


INT8_ROW_GRANULARITIES = ("per_token", "per_block", "per_tensor")


@register("dense", "int8", "torch",
          requires=Requires(modules=("torch",), torch_ops=("_int_mm",),
                            isa_any=("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")),
          description="int8 QK^T via torch._int_mm (per-block scales, smoothed K), fp32 softmax and P.V")
def dense_int8(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    if ctx.device != "cpu":
        raise RuntimeError("the int8 torch kernel runs on the CPU; torch._int_mm on CUDA has shape rules "
                           "this kernel does not meet")
    quant = case.get("quant", "per_block")
    if quant not in INT8_ROW_GRANULARITIES:
        # A per-channel scale of K does not factor out of an integer dot product.
        raise Unsupported(f"quant {quant} is not supported by dense/int8/torch; "
                          f"use one of {', '.join(INT8_ROW_GRANULARITIES)}")
    q, k, v = _to(inputs, ctx, torch.float32)

    def fn() -> torch.Tensor:
        return int8_qk_attention(q, k, v, quant=quant)
    n_scales = {"per_block": math.ceil(case["seq_len"] / K_BLOCK), "per_tensor": 1}.get(quant, case["seq_len"])
    kv_int8 = k.numel() * 1 + v.numel() * 4  # K held as int8; V stays fp32 in this kernel
    return Built(fn, compute=f"QK^T int8 x int8 -> int32 (torch._int_mm, {quant} scales, K smoothed); "
                             "softmax fp32; P.V fp32",
                 bytes={"kv": kv_int8 + n_scales * 4 * case["batch"] * case["heads"]},
                 meta={"int8_fast_path": sorted(set(ctx.caps.get("isa", ())) &
                                                {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})})
