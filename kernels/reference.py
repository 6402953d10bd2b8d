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


def reference_output(case: Mapping[str, Any], inputs: AttnInputs) -> torch.Tensor:
    """Float64 output of the exact math the case's variant approximates (its own mask, projections...).

    For `dense` this is `dense_reference`. Sparse and low-rank variants also report accuracy against
    `dense_reference` (the `*_vs_dense` metrics), so a user sees what the approximation itself costs.
    """
    if case["variant"] == "dense":
        return dense_reference(case, inputs)
    raise NotImplementedError(f"no float64 reference for variant {case['variant']} yet")
