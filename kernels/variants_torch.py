"""Sparse, low-rank, differential and depth-attention variants on the torch backend (`scope: core`).

Sparse kernels skip work: they gather the key/value blocks each query block needs into contiguous 4-D
tensors and run SDPA on those (flash on the CPU), never a mask over the full L x L matrix. The pattern each
one uses comes from `kernels.patterns`, shared with its float64 reference.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from . import patterns
from .dense_torch import (INT8_DOT_FLAGS, int8_fast_path, int8_qk_attention, kv_int8_bytes, require_cpu,
                          sync_fn, to_device, _int8_quant)
from .inputs import AttnInputs
from .quant import (dequantize_int4_groups, dequantize_int8_groups, quantize_int4_groups,
                    quantize_int8_channels, quantize_int8_groups)
from .registry import Built, Context, Requires, Unsupported, register

# Query rows per band block in the sliding-window kernel: each block reads block + window keys, so smaller
# blocks waste fewer keys but make more (smaller) attention problems; 32 measured best here at L=4096, W=256
# (64: 1.2x slower, 128: 1.3x slower).
BAND_BLOCK = 32


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                     block: int = BAND_BLOCK) -> torch.Tensor:
    """Exact attention with |i - j| <= window // 2, reading only block + 2 * (window // 2) keys per block.

    Interior query blocks (whose key band lies inside the sequence) run as one SDPA call whose K/V are
    overlapping strided *views* of K and V (no gather copy: block i reads keys [s - w/2, s + block + w/2)),
    with one [block, block + window] band mask shared by every block and head (it broadcasts, so the flash
    kernel reads a few KB of mask, not one per block). The few blocks at either end, whose band runs past the
    sequence, run as two small masked SDPA calls over their own key ranges.
    """
    b, h, n, d = q.shape
    half = window // 2
    bh = b * h
    q3, k3, v3 = (t.reshape(bh, n, d) for t in (q, k, v))
    first = math.ceil(half / block)  # first block with s - half >= 0
    last = (n - half - block) // block  # last block with s + block + half <= n
    if last < first:
        return _band_rows(q3, k3, v3, 0, n, half).reshape(b, h, n, d)
    ni = last - first + 1
    s0, s1 = first * block, (last + 1) * block
    span = block + 2 * half
    if k3.stride(-1) != 1 or v3.stride(-1) != 1 or k3.stride(-2) != d or v3.stride(-2) != d:
        k3, v3 = k3.contiguous(), v3.contiguous()
    kb = k3[:, s0 - half:].as_strided((bh, ni, span, d), (k3.stride(0), block * d, d, 1))
    vb = v3[:, s0 - half:].as_strided((bh, ni, span, d), (v3.stride(0), block * d, d, 1))
    qb = q3[:, s0:s1].reshape(bh, ni, block, d)
    mid = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=_band_bias(block, half, q.device))
    parts = [mid.reshape(bh, s1 - s0, d)]
    if s0 > 0:
        parts.insert(0, _band_rows(q3, k3, v3, 0, s0, half))
    if s1 < n:
        parts.append(_band_rows(q3, k3, v3, s1, n, half))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return out.reshape(b, h, n, d)


_BIAS_CACHE: dict[tuple, torch.Tensor] = {}


def _cached_bias(key: tuple, make) -> torch.Tensor:
    if key not in _BIAS_CACHE:
        valid = make()
        _BIAS_CACHE[key] = torch.zeros(valid.shape).masked_fill_(~valid, float("-inf")).to(key[-1])
    return _BIAS_CACHE[key]


def _band_bias(block: int, half: int, device: torch.device) -> torch.Tensor:
    """Additive mask [block, block + 2 * half] of an interior block: 0 where 0 <= key - query <= 2 * half."""
    def make() -> torch.Tensor:
        rel = torch.arange(block + 2 * half)[None, :] - torch.arange(block)[:, None]
        return (rel >= 0) & (rel <= 2 * half)
    return _cached_bias(("band", block, half, str(device)), make)


def _band_rows(q3: torch.Tensor, k3: torch.Tensor, v3: torch.Tensor, qs: int, qe: int,
               half: int) -> torch.Tensor:
    """Banded attention of query rows [qs, qe) over keys [qs - half, qe + half) clipped to the sequence."""
    n = k3.shape[1]
    ks, ke = max(0, qs - half), min(n, qe + half)

    def make() -> torch.Tensor:
        return (torch.arange(qs, qe)[:, None] - torch.arange(ks, ke)[None, :]).abs() <= half
    bias = _cached_bias(("rows", n, qs, qe, half, str(q3.device)), make)
    return F.scaled_dot_product_attention(q3[None, :, qs:qe], k3[None, :, ks:ke], v3[None, :, ks:ke],
                                          attn_mask=bias)[0]


@register("sliding_window", "fp32", "torch", requires=Requires(modules=("torch",)),
          description="banded attention (|i-j| <= window/2): K/V bands as strided views per 32-query block, SDPA fp32")
def sliding_window_fp32(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    q, k, v = to_device(inputs, ctx)
    window = case["window"]
    sync = sync_fn(ctx.device)

    def fn() -> torch.Tensor:
        out = banded_attention(q, k, v, window)
        sync()
        return out
    n = case["seq_len"]
    keys = min(n, BAND_BLOCK + 2 * (window // 2))
    return Built(fn, compute=f"bands of {keys} keys per {BAND_BLOCK}-query block as strided views of K/V (no "
                             "copy), one SDPA fp32 call with a shared in-band mask; edge blocks clipped",
                 bytes={"kv": k.nbytes + v.nbytes}, meta={"keys_read_fraction": round(keys / n, 4)})


def _check_blocks(case: Mapping[str, Any]) -> int:
    n, bs = case["seq_len"], case["block_size"]
    if n % bs:
        raise Unsupported(f"seq_len {n} is not a multiple of block_size {bs}; pick a block_size that divides it")
    return n // bs


class GatherBuffers:
    """Reusable K/V gather buffers of one kernel instance (sized at build time, filled in place every call).

    A fresh multi-MB tensor per call is mostly page faults on the CPU (measured: gathering K/V for top-8 of
    64 blocks at L=4096 costs 110 ms into a new tensor, 27 ms into a reused one).
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, rows: int, width: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (rows, width, like.dtype, str(like.device))
        if key not in self._bufs:
            self._bufs[key] = tuple(torch.empty(rows, width, dtype=like.dtype, device=like.device)
                                    for _ in range(2))
        return self._bufs[key]


def gathered_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                             block: int, buffers: GatherBuffers | None = None) -> torch.Tensor:
    """Attention of each query block over the key blocks `idx` ([nq, k] shared, or [B, H, nq, k]).

    The selected blocks of every (batch, head, query block) are gathered with one `index_select` per tensor
    (into reused buffers when given) and attended with one 4-D SDPA call over B*H x nq problems.
    """
    b, h, n, d = q.shape
    nb = n // block
    sel = idx.shape[-1]
    qb = q.reshape(b * h, nb, block, d)
    if idx.dim() == 2:
        idx = idx.expand(b * h, nb, sel)
    flat = (idx.reshape(b * h, nb * sel) + torch.arange(b * h, device=idx.device)[:, None] * nb).reshape(-1)
    k2 = k.reshape(b * h * nb, block * d)
    v2 = v.reshape(b * h * nb, block * d)
    if buffers is None:
        kg, vg = k2.index_select(0, flat), v2.index_select(0, flat)
    else:
        kg, vg = buffers.get(flat.numel(), block * d, k2)
        torch.index_select(k2, 0, flat, out=kg)
        torch.index_select(v2, 0, flat, out=vg)
    kg = kg.reshape(b * h, nb, sel * block, d)
    vg = vg.reshape(b * h, nb, sel * block, d)
    return F.scaled_dot_product_attention(qb, kg, vg).reshape(b, h, n, d)


@register("block_sparse", "fp32", "torch", requires=Requires(modules=("torch",)),
          description="fixed block layout (diagonal + random blocks to `density`): key blocks gathered, SDPA fp32")
def block_sparse_fp32(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    nb = _check_blocks(case)
    q, k, v = to_device(inputs, ctx)
    idx = patterns.block_sparse_layout(nb, case["density"]).to(ctx.device)
    buffers = GatherBuffers()
    sync = sync_fn(ctx.device)

    def fn() -> torch.Tensor:
        out = gathered_block_attention(q, k, v, idx, case["block_size"], buffers)
        sync()
        return out
    return Built(fn, compute=f"{idx.shape[1]} of {nb} key blocks per query block gathered; SDPA fp32",
                 bytes={"kv": k.nbytes + v.nbytes}, meta={"blocks_kept": idx.shape[1], "blocks": nb})


@register("topk", "fp32", "torch", requires=Requires(modules=("torch",)),
          description="block scores on mean-pooled Q/K choose top-k key blocks per query block (diagonal kept); "
                      "gathered blocks, SDPA fp32")
def topk_fp32(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    nb = _check_blocks(case)
    q, k, v = to_device(inputs, ctx)
    bs, top = case["block_size"], min(case["topk"], nb)
    buffers = GatherBuffers()
    sync = sync_fn(ctx.device)

    def fn() -> torch.Tensor:
        idx = patterns.topk_blocks(q, k, bs, top)  # the scoring pass is part of every call
        out = gathered_block_attention(q, k, v, idx, bs, buffers)
        sync()
        return out
    return Built(fn, compute=f"scoring: mean-pooled blocks of {bs}, pooled QK^T ({nb}x{nb} per head), top-{top}; "
                             f"attention over {top * bs} gathered keys per query block, SDPA fp32",
                 bytes={"kv": k.nbytes + v.nbytes}, meta={"blocks_kept": top, "blocks": nb})


def _lowrank_ef(case: Mapping[str, Any], ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    e, f = patterns.lowrank_projections(case)
    return e.to(ctx.device, torch.float32).contiguous(), f.to(ctx.device, torch.float32).contiguous()


@register("lowrank", "fp32", "torch", requires=Requires(modules=("torch",)),
          description="Linformer: K and V projected along the sequence by E, F fitted (PCA) on calibration "
                      "inputs, SDPA fp32 over `rank` keys")
def lowrank_fp32(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    q, k, v = to_device(inputs, ctx)
    e, f = _lowrank_ef(case, ctx)
    sync = sync_fn(ctx.device)

    def fn() -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, torch.matmul(e, k), torch.matmul(f, v))
        sync()
        return out
    r = case["rank"]
    return Built(fn, compute=f"E.K and F.V ([{r} x L] fp32 GEMMs along the sequence); SDPA fp32 over {r} keys",
                 bytes={"kv": 2 * case["batch"] * case["heads"] * r * case["head_dim"] * 4,
                        "projections": e.nbytes + f.nbytes},
                 meta={"projection_fit": "PCA of calibration K/V along the sequence axis "
                                         f"(seed {patterns.CALIBRATION_SEED})"})


@register("lowrank", "int8", "torch",
          requires=Requires(modules=("torch",), torch_ops=("_int_mm",), isa_any=INT8_DOT_FLAGS),
          description="Linformer projections in fp32, then int8 QK^T over the `rank` projected keys "
                      "(torch._int_mm), fp32 softmax, projected V int8 per channel")
def lowrank_int8(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    require_cpu(ctx, "lowrank/int8/torch")
    quant = _int8_quant(case, "lowrank/int8/torch")
    q, k, v = to_device(inputs, ctx)
    e, f = _lowrank_ef(case, ctx)

    def fn() -> torch.Tensor:
        vi, vs = quantize_int8_channels(torch.matmul(f, v))
        return int8_qk_attention(q, torch.matmul(e, k), vi.to(torch.float32) * vs, quant=quant)
    return Built(fn, compute=f"E.K, F.V fp32; QK^T int8 -> int32 (torch._int_mm, {quant}); softmax fp32; "
                             "projected V int8; P.V fp32",
                 bytes={"kv": kv_int8_bytes(case, quant, case["rank"])},
                 meta={"int8_fast_path": int8_fast_path(ctx), "int8_route": "torch._int_mm"})


@register("differential", "fp32", "torch", requires=Requires(modules=("torch",)),
          description="softmax(Q1K1^T)V - lambda softmax(Q2K2^T)V with Q/K split in halves; one SDPA over 2H heads")
def differential_fp32(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    q, k, v = to_device(inputs, ctx)
    h, d = case["heads"], case["head_dim"]
    if d % 2:
        raise Unsupported(f"differential attention splits head_dim in halves; {d} is odd")
    lam = case.get("diff_lambda", 0.5)
    half = d // 2
    kk = torch.cat([k, k], dim=1)
    vv = torch.cat([v, v], dim=1)
    sync = sync_fn(ctx.device)

    def fn() -> torch.Tensor:
        # Zeroing the other half of Q makes Q.K^T = Q_i.K_i^T while keeping every head dim equal (flash SDPA).
        qs = torch.cat([F.pad(q[..., :half], (0, half)), F.pad(q[..., half:], (half, 0))], dim=1)
        o = F.scaled_dot_product_attention(qs, kk, vv, scale=1.0 / math.sqrt(half))
        out = o[:, :h] - lam * o[:, h:]
        sync()
        return out
    return Built(fn, compute="two softmax maps (halves of Q/K, scale 1/sqrt(d/2)) in one SDPA fp32 call over 2H "
                             "heads; difference weighted by lambda", bytes={"kv": k.nbytes + v.nbytes},
                 meta={"lambda": lam})


@register("differential", "int8", "torch",
          requires=Requires(modules=("torch",), torch_ops=("_int_mm",), isa_any=INT8_DOT_FLAGS),
          description="both maps' QK^T in int8 via torch._int_mm (smoothed K halves), fp32 softmax, V int8 "
                      "per channel, P.V fp32")
def differential_int8(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
    require_cpu(ctx, "differential/int8/torch")
    quant = _int8_quant(case, "differential/int8/torch")
    q, k, v = to_device(inputs, ctx)
    half = case["head_dim"] // 2
    lam = case.get("diff_lambda", 0.5)

    def fn() -> torch.Tensor:
        vi, vs = quantize_int8_channels(v)
        vd = vi.to(torch.float32) * vs
        a1 = int8_qk_attention(q[..., :half], k[..., :half], vd, quant=quant)
        return a1.sub_(int8_qk_attention(q[..., half:], k[..., half:], vd, quant=quant), alpha=lam)
    return Built(fn, compute=f"QK^T of each half int8 -> int32 (torch._int_mm, {quant}); softmax fp32; "
                             "V int8 per channel; P.V fp32; O1 - lambda O2",
                 bytes={"kv": kv_int8_bytes(case, quant)},
                 meta={"int8_fast_path": int8_fast_path(ctx), "int8_route": "torch._int_mm", "lambda": lam})


def _attnres_builder(precision: str):
    def build(case: Mapping[str, Any], inputs: AttnInputs, ctx: Context) -> Built:
        if inputs.layers is None:
            raise Unsupported("attnres needs the earlier layers' outputs (make_inputs adds them for attnres)")
        group = case.get("group_size", 32)
        if precision != "fp32" and (case["head_dim"] % group or group % 2):
            raise Unsupported(f"group_size {group} must be even and divide head_dim {case['head_dim']}")
        q = inputs.q.to(ctx.device).contiguous()
        layers = inputs.layers.to(ctx.device).contiguous()
        # Each layer's output is quantized once, when that layer writes it; reading it back is timed.
        if precision == "fp32":
            stored, nbytes = layers, layers.nbytes

            def read() -> torch.Tensor:
                return stored
        elif precision == "int8":
            qi, s = quantize_int8_groups(layers, group)
            nbytes = qi.nbytes + s.nbytes

            def read() -> torch.Tensor:
                return dequantize_int8_groups(qi, s, group)
        else:
            packed, s = quantize_int4_groups(layers, group)
            nbytes = packed.nbytes + s.nbytes

            def read() -> torch.Tensor:
                return dequantize_int4_groups(packed, s, group)
        sync = sync_fn(ctx.device)

        def fn() -> torch.Tensor:
            out = patterns.depth_attention(q, read())
            sync()
            return out
        store = {"fp32": "fp32", "int8": f"int8 per group of {group}, fp16 scales",
                 "int4": f"int4 packed two per byte, per group of {group}, fp16 scales"}[precision]
        return Built(fn, compute=f"stored layer outputs {store}, dequantized to fp32; softmax over depth "
                                 f"({layers.shape[0]} layers) of query . rmsnorm(output); weighted sum fp32",
                     bytes={"stored_outputs": nbytes})
    return build


for _p in ("fp32", "int8", "int4"):
    register("attnres", _p, "torch", requires=Requires(modules=("torch",)),
             description=f"attention residuals over depth with {_p} stored layer outputs")(_attnres_builder(_p))
