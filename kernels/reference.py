"""Float64 references: the exact math each variant approximates, computed in double precision."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from .inputs import AttnInputs


def dense_attention_f64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V in float64; `mask` (bool, True = keep) broadcasts over [B, H, L, L]."""
    q, k, v = q.double(), k.double(), v.double()
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def project_f64(inputs: AttnInputs, heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """Q, K, V of a block from X and the projection weights, in float64, shaped [B, H, L, D]."""
    assert inputs.x is not None and inputs.w is not None
    x = inputs.x.double()
    b, n, _ = x.shape

    def heads_of(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, heads, head_dim).transpose(1, 2)
    return tuple(heads_of(x @ inputs.w[name].double()) for name in ("wq", "wk", "wv"))


def output_projection_f64(o: torch.Tensor, inputs: AttnInputs) -> torch.Tensor:
    b, h, n, d = o.shape
    assert inputs.w is not None
    return o.transpose(1, 2).reshape(b, n, h * d) @ inputs.w["wo"].double()


def dense_reference(case: Mapping[str, Any], inputs: AttnInputs) -> torch.Tensor:
    """Float64 output of dense attention for the case (with projections when scope is block)."""
    if case.get("scope", "core") == "block":
        q, k, v = project_f64(inputs, case["heads"], case["head_dim"])
        return output_projection_f64(dense_attention_f64(q, k, v), inputs)
    return dense_attention_f64(inputs.q, inputs.k, inputs.v)


def _core_qkv(case: Mapping[str, Any], inputs: AttnInputs) -> tuple[torch.Tensor, ...]:
    if case.get("scope", "core") == "block":
        return project_f64(inputs, case["heads"], case["head_dim"])
    return inputs.q.double(), inputs.k.double(), inputs.v.double()


def _finish(case: Mapping[str, Any], inputs: AttnInputs, o: torch.Tensor) -> torch.Tensor:
    return output_projection_f64(o, inputs) if case.get("scope", "core") == "block" else o


def differential_f64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: float) -> torch.Tensor:
    """Differential attention: softmax(Q1 K1^T / sqrt(d/2)) V - lambda softmax(Q2 K2^T / sqrt(d/2)) V.

    Q and K split along the head dim into halves 1 and 2 (Diff Transformer, without its per-head norm).
    """
    h = q.shape[-1] // 2
    scale = 1.0 / math.sqrt(h)

    def attn(qq: torch.Tensor, kk: torch.Tensor) -> torch.Tensor:
        return torch.softmax((qq.double() @ kk.double().transpose(-1, -2)) * scale, dim=-1) @ v.double()
    return attn(q[..., :h], k[..., :h]) - lam * attn(q[..., h:], k[..., h:])


def reference_output(case: Mapping[str, Any], inputs: AttnInputs) -> torch.Tensor:
    """Float64 output of the exact math the case's variant approximates (its own mask, projections...).

    For `dense` this is `dense_reference`. Sparse and low-rank variants also report accuracy against
    `dense_reference` (the `*_vs_dense` metrics), so a user sees what the approximation itself costs.
    The pattern a sparse kernel uses (band, fixed layout, top-k choice, fitted E/F) comes from
    `kernels.patterns`, the same functions the kernels call.
    """
    from . import patterns

    variant = case["variant"]
    if variant == "dense":
        return dense_reference(case, inputs)
    q, k, v = _core_qkv(case, inputs)
    n = q.shape[-2]
    if variant == "sliding_window":
        o = dense_attention_f64(q, k, v, patterns.band_mask(n, case["window"]))
    elif variant == "block_sparse":
        idx = patterns.block_sparse_layout(n // case["block_size"], case["density"])
        o = dense_attention_f64(q, k, v, patterns.blocks_to_mask(idx, case["block_size"], n))
    elif variant == "topk":
        idx = patterns.topk_blocks(q.float(), k.float(), case["block_size"], case["topk"])
        o = dense_attention_f64(q, k, v, patterns.blocks_to_mask(idx, case["block_size"], n))
    elif variant == "lowrank":
        e, f = patterns.lowrank_projections(case)
        o = dense_attention_f64(q, e @ k, f @ v)
    elif variant == "differential":
        o = differential_f64(q, k, v, case.get("diff_lambda", 0.5))
    elif variant == "attnres":
        assert inputs.layers is not None, "attnres inputs carry the earlier layers' outputs"
        return patterns.depth_attention(inputs.q.double(), inputs.layers.double())
    else:
        raise NotImplementedError(f"no float64 reference for variant {variant}")
    return _finish(case, inputs, o)
