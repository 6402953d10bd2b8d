"""The discrete choices sparse and low-rank variants make, shared by their kernels and float64 references.

Pure functions: a reference built from the same pattern measures the kernel's arithmetic; the `*_vs_dense`
metrics measure what the pattern itself costs.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import torch

# Seed of the calibration inputs a low-rank projection is fitted on (never the seed a case is measured on).
CALIBRATION_SEED = 1_000_003


def band_mask(n: int, window: int) -> torch.Tensor:
    """Bool [n, n], True where |i - j| <= window // 2 (Longformer's convention: `window` keys in all)."""
    i = torch.arange(n)
    return (i[:, None] - i[None, :]).abs() <= window // 2


def block_sparse_layout(n_blocks: int, density: float, seed: int = 0) -> torch.Tensor:
    """Key-block indices [n_blocks, k] for each query block: its own block plus k - 1 others drawn at random.

    k = max(1, round(density * n_blocks)); the same fixed pattern for every head (BigBird-like random blocks
    around a diagonal), sorted so gathered keys keep their order.
    """
    k = max(1, min(n_blocks, round(density * n_blocks)))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n_blocks):
        others = torch.tensor([j for j in range(n_blocks) if j != i], dtype=torch.long)
        pick = others[torch.randperm(len(others), generator=gen)[: k - 1]]
        rows.append(torch.sort(torch.cat([torch.tensor([i]), pick])).values)
    return torch.stack(rows)


def topk_blocks(q: torch.Tensor, k: torch.Tensor, block: int, topk: int) -> torch.Tensor:
    """Key blocks [B, H, nq, topk] each query block attends to, chosen in a compressed space.

    Q and K are mean-pooled per block (nb x d per head), block scores are pooled-Q . pooled-K^T
    (O(nb^2 d)), the diagonal block is always kept, and the top-k scoring blocks are taken (sorted by index).
    """
    b, h, n, d = q.shape
    nb = n // block
    topk = min(topk, nb)
    qp = q.float().reshape(b, h, nb, block, d).mean(dim=3)
    kp = k.float().reshape(b, h, nb, block, d).mean(dim=3)
    scores = qp @ kp.transpose(-1, -2)
    scores.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    return torch.sort(torch.topk(scores, topk, dim=-1).indices, dim=-1).values


def blocks_to_mask(idx: torch.Tensor, block: int, n: int) -> torch.Tensor:
    """Token-level bool mask [..., n, n] from key-block indices [..., nq, k]."""
    nb = n // block
    blocks = torch.zeros(*idx.shape[:-1], nb, dtype=torch.bool)
    blocks.scatter_(-1, idx, True)
    return blocks.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)


@functools.lru_cache(maxsize=256)
def _lowrank_fit(n: int, rank: int, b: int, h: int, d: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .inputs import make_inputs

    calib = make_inputs({"batch": b, "heads": h, "seq_len": n, "head_dim": d, "inputs": kind},
                        seed=CALIBRATION_SEED)

    def top_directions(x: torch.Tensor) -> torch.Tensor:
        flat = x.double().reshape(-1, n, x.shape[-1]).transpose(0, 1).reshape(n, -1)  # [n, B*H*d]
        u, _, _ = torch.linalg.svd(flat, full_matrices=False)
        return u[:, :rank].t().contiguous()  # [rank, n]

    return top_directions(calib.k), top_directions(calib.v)


def lowrank_projections(case: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Linformer E and F ([rank, seq_len], float64) fitted on calibration inputs of the case's kind.

    E spans the top `rank` principal directions along the sequence axis of calibration K (F of V): the
    projection that keeps most of K's and V's energy, fitted once per shape, never on the measured inputs.
    """
    return _lowrank_fit(case["seq_len"], case["rank"], case["batch"], case["heads"], case["head_dim"],
                        case.get("inputs", "normal"))


def rms_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / rms(x) over the last dim (the keys of attention over depth)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def depth_attention(query: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
    """Attention residuals: per token, softmax over depth of query . rmsnorm(layer output) / sqrt(d).

    query [B, H, L, D], layers [depth, B, H, L, D] -> sum over depth of weight * layer output.
    """
    d = query.shape[-1]
    logits = (rms_normalize(layers) * query.unsqueeze(0)).sum(dim=-1) / math.sqrt(d)  # [depth, B, H, L]
    w = torch.softmax(logits, dim=0)
    return (w.unsqueeze(-1) * layers).sum(dim=0)
