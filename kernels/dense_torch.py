"""Dense attention on the torch backend, `scope: core` and `scope: block`.

core: fp32 / bf16 / fp16 through SDPA; int8 with real integer QK^T (torch._int_mm); mixed (int8 QK^T, fp32
softmax, bf16 P.V); int4 K/V storage. block: Q/K/V/output projections of `model_dim` around the core, fp32
or with int8 weights through the quantized engine's integer GEMM (fbgemm / x86 / onednn / qnnpack).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from . import fused_int8
from .caps import INT8_DOT_FLAGS, has_int8_dot, is_x86
from .inputs import AttnInputs
from .quant import (dequantize_int4_groups, quantize_int4_groups, quantize_int8_channels,
                    quantize_int8_rows)
from .registry import Built, Context, Requires, Unsupported, register

# Query rows per tile in the int8 kernel: bounds the L x L score buffer to TILE x L per head.
TILE = 256
# Tokens per scale for `quant: per_block`. SageAttention uses Q 128 / K 64 on GPUs; 32 / 32 costs little more
# on a CPU and lifts cosine on N(0,1) inputs from 0.99992 to 0.99993 (per_token: 0.99996).
Q_BLOCK = 32
K_BLOCK = 32
INT8_ROW_GRANULARITIES = ("per_token", "per_block", "per_tensor")


def sync_fn(device: str) -> Callable[[], None]:
    """A no-op on the CPU, `torch.cuda.synchronize` on CUDA, so timed calls include the device's work."""
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def to_device(inputs: AttnInputs, ctx: Context, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Q, K, V moved to the kernel's device and dtype, contiguous (the move is not timed)."""
    return tuple(t.to(ctx.device, dtype).contiguous() for t in (inputs.q, inputs.k, inputs.v))


def int8_fast_path(ctx: Context) -> list[str]:
    """The CPU features of this device that make integer GEMMs fast (recorded with every int8 result)."""
    return sorted(set(ctx.caps.get("isa", ())).intersection(INT8_DOT_FLAGS))


def require_cpu(ctx: Context, name: str) -> None:
    if ctx.device != "cpu":
        raise Unsupported(f"{name} runs on the CPU only (torch._int_mm on CUDA has shape rules this kernel "
                          "does not meet); run it on a CPU device")


def quantize_qk(q: torch.Tensor, k: torch.Tensor, quant: str) -> tuple[torch.Tensor, ...]:
    """Smooth K, quantize Q and K to int8 by rows; returns (qi, qs with 1/sqrt(d) folded in, ki, ks)."""
    n, d = q.shape[-2], q.shape[-1]
    k = k - k.mean(dim=-2, keepdim=True)
    rows_q, rows_k = {"per_tensor": (n, k.shape[-2]), "per_token": (1, 1), "per_block": (Q_BLOCK, K_BLOCK)}[quant]
    qi, qs = quantize_int8_rows(q, rows_q)
    ki, ks = quantize_int8_rows(k, rows_k)
    return qi, qs * (1.0 / math.sqrt(d)), ki, ks


def int8_scores(qi: torch.Tensor, qs: torch.Tensor, kt: torch.Tensor, ks_row: torch.Tensor) -> torch.Tensor:
    """Dequantized scores of one tile: int8 [m, d] x int8 [d, n] -> int32 (torch._int_mm) -> fp32 [m, n]."""
    acc = torch._int_mm(qi, kt)
    return acc.to(torch.float32).mul_(qs).mul_(ks_row)


def int8_qk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, quant: str = "per_block",
                      pv_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SageAttention-style attention on the CPU with integer QK^T.

    K is smoothed by subtracting its mean over tokens (softmax is invariant to the per-query constant this
    removes), Q and K are quantized to int8 (per-block, per-token or per-tensor scales), QK^T runs as
    int8 x int8 -> int32 through `torch._int_mm`, the int32 scores are dequantized with the outer product
    of scales (1/sqrt(d) folded into Q's scale), softmax runs in fp32 and P.V in `pv_dtype`. `v` is
    whatever the caller stores (dequantized int8 V for the int8 kernel).
    """
    b, h, n, d = q.shape
    qi, qs, ki, ks = quantize_qk(q, k, quant)
    out = torch.empty(b, h, n, v.shape[-1], dtype=torch.float32, device=q.device)
    vv_all = v.to(pv_dtype)
    for bi in range(b):
        for hi in range(h):
            kt = ki[bi, hi].t()
            ks_row = ks[bi, hi].reshape(1, -1)
            vv = vv_all[bi, hi]
            for start in range(0, n, TILE):
                stop = min(start + TILE, n)
                p = torch.softmax(int8_scores(qi[bi, hi, start:stop], qs[bi, hi, start:stop], kt, ks_row), dim=-1)
                if pv_dtype == torch.float32:
                    torch.matmul(p, vv, out=out[bi, hi, start:stop])
                else:
                    out[bi, hi, start:stop] = torch.matmul(p.to(pv_dtype), vv).float()
    return out


def _sdpa_kernel(dtype: torch.dtype, compute: str):
    def build(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
        q, k, v = to_device(inputs, ctx, dtype)
        sync = sync_fn(ctx.device)

        def fn() -> torch.Tensor:
            out = F.scaled_dot_product_attention(q, k, v)
            sync()
            return out
        fast = [f for f in ("avx512_bf16", "amx_bf16", "bf16", "avx512_fp16", "asimdhp") if f in ctx.caps.get("isa", ())]
        return Built(fn, compute=compute, bytes={"kv": k.nbytes + v.nbytes}, meta={"half_precision_isa": fast})
    return build


register("dense", "fp32", "torch", requires=Requires(modules=("torch",)),
         description="torch.nn.functional.scaled_dot_product_attention in float32")(
    _sdpa_kernel(torch.float32, "SDPA fp32"))
register("dense", "bf16", "torch", requires=Requires(modules=("torch",)),
         description="SDPA on bfloat16 Q/K/V (activations arrive in bf16; the cast is not timed)")(
    _sdpa_kernel(torch.bfloat16, "SDPA bf16 (inputs and output bf16)"))
register("dense", "fp16", "torch", requires=Requires(modules=("torch",)),
         description="SDPA on float16 Q/K/V (slow on x86 without AVX512-FP16: a 'not fast here' row)")(
    _sdpa_kernel(torch.float16, "SDPA fp16 (inputs and output fp16)"))


def _int8_quant(case: Mapping[str, Any], name: str) -> str:
    quant = case.get("quant", "per_block")
    if quant not in INT8_ROW_GRANULARITIES:
        # A per-channel scale of K does not factor out of an integer dot product.
        raise Unsupported(f"quant {quant} is not supported by {name}; use one of {', '.join(INT8_ROW_GRANULARITIES)}")
    return quant


def kv_int8_bytes(case: Mapping[str, Any], quant: str, n_keys: int | None = None) -> int:
    """Bytes of K (int8, row scales) and V (int8, per-channel scales) for B*H heads of `n_keys` tokens."""
    n = n_keys or case["seq_len"]
    heads = case["batch"] * case["heads"]
    k_scales = {"per_block": math.ceil(n / K_BLOCK), "per_tensor": 1}.get(quant, n)
    return heads * (2 * n * case["head_dim"] + 4 * k_scales + 4 * case["head_dim"])


def fused_kernel(ctx: Context) -> tuple[fused_int8.FusedInt8 | None, dict[str, Any]]:
    """The fused int8 kernel's back end for this device, loaded (built on first use), or None and why not.

    HARNESS_INT8_BACKEND forces a back end (one this CPU lacks is Unsupported, never faked) or `eager`.
    """
    try:
        forced = fused_int8.forced_backend()
    except fused_int8.BuildError as exc:
        raise Unsupported(str(exc)) from None
    if forced == fused_int8.EAGER:
        return None, {"int8_backend": "eager", "int8_backend_reason": f"forced by {fused_int8.FORCE_ENV}"}
    name = forced or fused_int8.choose_backend(ctx.caps)
    if forced:
        missing = fused_int8.backend_missing(name, ctx.caps)
        if missing:
            raise Unsupported(f"{fused_int8.FORCE_ENV}={name}: {missing}")
    try:
        kernel = fused_int8.load(name, ctx.workdir)
    except fused_int8.BuildError as exc:
        return None, {"int8_backend": "eager", "int8_backend_reason": f"fused kernel unavailable: {exc}"}
    meta: dict[str, Any] = {"int8_backend": name, "int8_dot": kernel.backend.dot, "int8_p": kernel.p_format,
                            "int8_threads": "torch's OpenMP threads" if kernel.threading == "openmp" else "own pool",
                            "int8_build": {"compiler": kernel.compiler.version if kernel.compiler else None,
                                           "library": kernel.path.parent.name}}
    if forced:
        meta["int8_backend_reason"] = f"forced by {fused_int8.FORCE_ENV}"
    return kernel, meta


def rows_per_scale(quant: str, n_q: int, n_k: int) -> tuple[int, int]:
    """Tokens per Q and per K scale for a row-wise `quant` granularity."""
    return {"per_token": (1, 1), "per_block": (Q_BLOCK, K_BLOCK), "per_tensor": (n_q, n_k)}[quant]


def _time_once(fn: Callable[[], Any], calls: int = 3) -> float:
    """Fastest of a few calls after one warm-up, in ms (a route choice on the device, not a measurement)."""
    fn()
    best = math.inf
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _eager_int8(case: Mapping[str, Any], ctx: Context, name: str) -> None:
    if ctx.caps and not ctx.caps.get("torch_ops", {}).get("_int_mm", True):
        raise Unsupported(f"{name}: the fused kernel is unavailable here and torch._int_mm is not in this torch "
                          "build, so no int8 route remains")


@register("dense", "int8", "torch",
          requires=Requires(modules=("torch",), isa_any=INT8_DOT_FLAGS),
          description="fused int8 attention (C++ built on the device, ISA back end chosen from the probe): int8 "
                      "Q/K (K smoothed), int8 V per channel, fp32 online softmax, 16-bit P; the unfused "
                      "torch._int_mm route where no compiler is present")
def dense_int8(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    require_cpu(ctx, "dense/int8/torch")
    quant = _int8_quant(case, "dense/int8/torch")
    q, k, v = to_device(inputs, ctx)
    kernel, meta = fused_kernel(ctx)
    n = case["seq_len"]

    def eager() -> torch.Tensor:
        vi, vs = quantize_int8_channels(v)  # V written to the int8 cache, read back for P.V
        return int8_qk_attention(q, k, vi.to(torch.float32) * vs, quant=quant)
    eager_compute = (f"QK^T int8 x int8 -> int32 (torch._int_mm, {quant} scales, K smoothed); softmax fp32; "
                     "V int8 per-channel, dequantized; P.V fp32")
    bytes_ = {"kv": kv_int8_bytes(case, quant)}
    if kernel is None:
        _eager_int8(case, ctx, "dense/int8/torch")
        return Built(eager, compute=eager_compute, bytes=bytes_,
                     meta={**meta, "int8_fast_path": int8_fast_path(ctx), "int8_route": "torch._int_mm"})
    threads = torch.get_num_threads()
    rows = rows_per_scale(quant, n, n)

    def fused() -> torch.Tensor:
        return kernel.attention(q, k, v, threads=threads, rows_per_scale=rows)
    if kernel.backend.name in fused_int8.PORTABLE and not meta.get("int8_backend_reason"):
        # No integer dot-product instruction: nothing measured says the portable back end beats the
        # unfused route on every such CPU, so this device decides, on this case, once.
        race = {kernel.backend.name: round(_time_once(fused), 3), "eager": round(_time_once(eager), 3)}
        meta["int8_backend_race_ms"] = race
        if race["eager"] < race[kernel.backend.name]:
            return Built(eager, compute=eager_compute, bytes=bytes_,
                         meta={**meta, "int8_backend": "eager", "int8_route": "torch._int_mm",
                               "int8_backend_reason": f"the portable {kernel.backend.name} back end was slower "
                                                      "on this device and case",
                               "int8_fast_path": int8_fast_path(ctx)})
    return Built(fused, compute=f"fused int8 kernel ({kernel.backend.name}): Q/K int8 {quant} (K smoothed), "
                                f"QK^T {kernel.backend.dot}; fp32 online softmax (polynomial exp2); P {kernel.p_format}; "
                                f"V int8 per channel; P.V {kernel.backend.dot}; keys in L1-sized chunks",
                 bytes=bytes_, meta={**meta, "int8_fast_path": int8_fast_path(ctx), "int8_route": "fused"})


# CPU features that run bf16 arithmetic natively (probe names). Without one, torch's bf16 matmul converts
# to fp32 in software and runs at a fraction of fp32 speed (measured 0.32x of SDPA for the bf16 P.V route).
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16")


def mixed_route(caps: Mapping[str, Any]) -> str:
    """'bf16' where the CPU runs bf16 natively, else 'fused': P.V as 16-bit P x int8 V integer dot products."""
    return "bf16" if set(caps.get("isa", ())).intersection(NATIVE_BF16) else "fused"


@register("dense", "mixed", "torch",
          requires=Requires(modules=("torch",), isa_any=INT8_DOT_FLAGS),
          description="int8 QK^T, fp32 softmax, bf16 P.V where the CPU has native bf16; elsewhere the fused int8 "
                      "kernel's 16-bit P x int8 V (a bf16 P.V would be slower than int8 there)")
def dense_mixed(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    require_cpu(ctx, "dense/mixed/torch")
    quant = _int8_quant(case, "dense/mixed/torch")
    route = mixed_route(ctx.caps)
    if route == "fused":
        built = dense_int8(case, inputs, ctx)
        if built.meta.get("int8_route") == "fused":
            native = ", ".join(NATIVE_BF16)
            built.meta["mixed_route"] = (f"fused int8: no native bf16 ({native}) on this CPU, so P.V runs as "
                                         f"{built.meta['int8_p']} x int8 V integer dot products instead of bf16")
            built.compute = "mixed without native bf16 -> " + built.compute
            return built
        # No fused kernel here: the bf16 route below is what remains.
        route = "bf16"
    _eager_int8(case, ctx, "dense/mixed/torch")
    q, k, v = to_device(inputs, ctx)
    vb = v.to(torch.bfloat16)

    def fn() -> torch.Tensor:
        return int8_qk_attention(q, k, vb, quant=quant, pv_dtype=torch.bfloat16)
    heads = case["batch"] * case["heads"]
    return Built(fn, compute=f"QK^T int8 -> int32 (torch._int_mm, {quant} scales, K smoothed); softmax fp32; "
                             "P and V bf16, P.V bf16 matmul",
                 bytes={"kv": heads * case["seq_len"] * case["head_dim"] * 3},
                 meta={"int8_fast_path": int8_fast_path(ctx), "int8_route": "torch._int_mm",
                       "mixed_route": "bf16 P.V" + ("" if set(ctx.caps.get("isa", ())).intersection(NATIVE_BF16)
                                                    else " (no fused kernel here; bf16 is emulated on this CPU)")})


@register("dense", "int4", "torch", requires=Requires(modules=("torch",)),
          description="K/V stored int4 (two per byte, per-group fp16 scales, K smoothed); dequantized to fp32 "
                      "per call, SDPA fp32")
def dense_int4(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    group = case.get("group_size", 32)
    if case["head_dim"] % group or group % 2:
        raise Unsupported(f"group_size {group} must be even and divide head_dim {case['head_dim']}")
    q, k, v = to_device(inputs, ctx)
    # The cache is written once (prefill), so packing is not timed; reading it back is.
    kp, ks = quantize_int4_groups(k - k.mean(dim=-2, keepdim=True), group)
    vp, vs = quantize_int4_groups(v, group)
    sync = sync_fn(ctx.device)

    def fn() -> torch.Tensor:
        kk = dequantize_int4_groups(kp, ks, group)
        vv = dequantize_int4_groups(vp, vs, group)
        out = F.scaled_dot_product_attention(q, kk, vv)
        sync()
        return out
    kv = kp.nbytes + ks.nbytes + vp.nbytes + vs.nbytes
    return Built(fn, compute=f"K/V int4 packed two per byte, per-group ({group}) fp16 scales, K smoothed; "
                             "unpacked to fp32 each call; SDPA fp32 (no int4 arithmetic: storage only)",
                 bytes={"kv": kv}, meta={"int4_compute": "storage-only; dequantize then fp32 SDPA"})


# ---- scope: block -------------------------------------------------------------------------------------------

def _heads(t: torch.Tensor, b: int, n: int, h: int, d: int) -> torch.Tensor:
    return t.view(b, n, h, d).transpose(1, 2)


def _merge(o: torch.Tensor) -> torch.Tensor:
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


@register("dense", "fp32", "torch", "block", requires=Requires(modules=("torch",)),
          description="X.Wq, X.Wk, X.Wv, SDPA, O.Wo all in float32")
def dense_block_fp32(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    assert inputs.x is not None and inputs.w is not None
    x = inputs.x.to(ctx.device).contiguous()
    w = {name: t.to(ctx.device).contiguous() for name, t in inputs.w.items()}
    b, n, _ = x.shape
    h, d = case["heads"], case["head_dim"]
    sync = sync_fn(ctx.device)

    def fn() -> torch.Tensor:
        q, k, v = (_heads(x @ w[name], b, n, h, d) for name in ("wq", "wk", "wv"))
        out = _merge(F.scaled_dot_product_attention(q, k, v)) @ w["wo"]
        sync()
        return out
    return Built(fn, compute="projections fp32 GEMM; SDPA fp32",
                 bytes={"weights": sum(t.nbytes for t in w.values()), "kv": 2 * b * n * h * d * 4})


def qengine_reduce_range(ctx: Context) -> bool:
    """7-bit activations on x86 without VNNI: VPMADDUBSW's int16 pairs saturate with full-range u8 x s8."""
    return is_x86(ctx.caps) and not has_int8_dot(ctx.caps)


@register("dense", "int8", "torch", "block",
          requires=Requires(modules=("torch",), isa_any=INT8_DOT_FLAGS),
          description="the fused int8 kernel's integer linear (activations per token, weights per output "
                      "channel) for the Q/K/V (one GEMM) and output projections around its int8 attention core; "
                      "the quantized engine's linear_dynamic with an SDPA fp32 core where no compiler is present")
def dense_block_int8(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    if ctx.device != "cpu":
        raise Unsupported("dense/int8/torch/block runs on the CPU; run it on a CPU device")
    assert inputs.x is not None and inputs.w is not None
    kernel, meta = fused_kernel(ctx)
    if kernel is None:
        return _block_int8_qengine(case, inputs, ctx, meta)
    quant = _int8_quant(case, "dense/int8/torch/block")
    x = inputs.x.contiguous()
    b, n, m = x.shape
    h, d = case["heads"], case["head_dim"]
    # One GEMM for the three input projections: x is quantized once and read once.
    wqkv = kernel.pack_linear(torch.cat([inputs.w["wq"], inputs.w["wk"], inputs.w["wv"]], dim=1))
    wo = kernel.pack_linear(inputs.w["wo"])
    threads = torch.get_num_threads()
    rows = rows_per_scale(quant, n, n)
    # Workspaces reused across calls (the output is new each call). Views, no copies: Q/K/V heads straight
    # out of the projection's rows, the core's output written in [B, L, H*D] for the output projection.
    qkv = torch.empty(b * n, 3 * h * d)
    attn = torch.empty(b, n, h * d)
    q, k, v = (qkv.view(b, n, 3, h, d)[:, :, i].transpose(1, 2) for i in range(3))
    attn_heads = attn.view(b, n, h, d).transpose(1, 2)

    def fn() -> torch.Tensor:
        kernel.linear(x.view(b * n, m), wqkv, threads=threads, out=qkv)
        kernel.attention(q, k, v, threads=threads, rows_per_scale=rows, out=attn_heads)
        return kernel.linear(attn.view(b * n, h * d), wo, threads=threads).view(b, n, m)
    return Built(fn, compute=f"projections: activations int8 per token x weights int8 per output channel, "
                             f"{kernel.backend.dot}, Q/K/V as one GEMM; core: fused int8 kernel "
                             f"({kernel.backend.name}, {quant}, P {kernel.p_format})",
                 bytes={"weights": wqkv.nbytes + wo.nbytes, "kv": kv_int8_bytes(case, quant)},
                 meta={**meta, "int8_fast_path": int8_fast_path(ctx), "int8_route": "fused", "weight_bits": 8})


def _block_int8_qengine(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context, meta: dict) -> Built:
    """The block on torch's quantized engine (where the fused kernel cannot be built)."""
    if torch.backends.quantized.engine in (None, "none"):
        raise Unsupported("this torch build has no quantized engine (torch.backends.quantized.engine is none)")
    assert inputs.x is not None and inputs.w is not None
    x = inputs.x.contiguous()
    b, n, _ = x.shape
    h, d = case["heads"], case["head_dim"]
    # Without an int8 dot product (x86 AVX2 / AVX-512 without VNNI), VPMADDUBSW adds u8 x s8 pairs in int16:
    # 255 * 127 * 2 overflows it. Weights limited to 7 bits (|w| <= 63) keep every pair exact while the
    # activations keep all 8 bits, which measured more accurate than the engine's reduce_range (7-bit
    # activations): output cosine 0.9995 against 0.9990 at model_dim 128.
    narrow = qengine_reduce_range(ctx)
    wmax = 63 if narrow else 127
    packed = {}
    wbytes = 0
    for name, t in inputs.w.items():
        wt = t.t().contiguous()  # Linear layout [out, in]
        ws = (wt.abs().amax(dim=1) / wmax).clamp_min(1e-12)  # per output channel
        wi = torch.round(wt / ws[:, None]).clamp_(-wmax, wmax).to(torch.int8)
        with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao; still the
            warnings.simplefilter("ignore")  # only route to fbgemm/onednn integer GEMMs in core torch
            qw = torch._make_per_channel_quantized_tensor(wi, ws.double(),
                                                          torch.zeros(wt.shape[0], dtype=torch.long), 0)
        packed[name] = torch.ops.quantized.linear_prepack(qw, None)
        wbytes += wi.nbytes + ws.nbytes
    engine = torch.backends.quantized.engine

    def lin(a: torch.Tensor, name: str) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(a, packed[name], False)

    def fn() -> torch.Tensor:
        x2 = x.reshape(b * n, -1)
        q, k, v = (_heads(lin(x2, name).view(b, n, h * d), b, n, h, d) for name in ("wq", "wk", "wv"))
        o = _merge(F.scaled_dot_product_attention(q, k, v)).reshape(b * n, h * d)
        return lin(o, "wo").view(b, n, -1)
    return Built(fn, compute=f"projections: u8 activations (dynamic per-tensor) x s8 per-channel weights "
                             f"({'7' if narrow else '8'}-bit) -> int32 in the '{engine}' quantized engine; SDPA fp32 core",
                 bytes={"weights": wbytes, "kv": 2 * b * n * h * d * 4},
                 meta={**meta, "int8_fast_path": int8_fast_path(ctx),
                       "int8_route": f"quantized.linear_dynamic ({engine})", "weight_bits": 7 if narrow else 8})
