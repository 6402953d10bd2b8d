"""How much memory a case needs, estimated before it runs, so a case that cannot fit is skipped, not OOM-killed.

Pure functions over a canonical case: no torch, no I/O. The agent calls `memory_skip_reason` on the device
with the memory available there; the estimate is deliberately on the high side (the float64 reference the
worker computes for accuracy dominates at long sequences), because a case that gets OOM-killed takes the
worker down and can take the board with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

MB = 2 ** 20
# Resident size of a worker before a case: python + torch (220 MB measured on x86_64, torch 2.13 CPU).
WORKER_BASE_MB = 250.0
# `inputs: minilm` loads the MiniLM-L6 weights and runs the model to capture Q/K/V.
MINILM_MB = 200.0
# Variants whose float64 reference materializes a mask as large as the scores.
MASKED_VARIANTS = ("sliding_window", "block_sparse", "topk")
# Skip when the estimate exceeds this share of the memory available on the device.
DEFAULT_HEADROOM = 0.9


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak resident memory of a worker running the case, in MB, with the parts that make it up."""

    total_mb: float
    parts_mb: dict[str, float] = field(default_factory=dict)

    def largest(self) -> str:
        """The biggest part by name (what a user should shrink)."""
        return max(self.parts_mb, key=self.parts_mb.__getitem__) if self.parts_mb else "base"


def estimate_peak_mb(case: Mapping[str, Any]) -> MemoryEstimate:
    """Peak memory of one case: worker base + inputs + the larger of the kernel's and the reference's
    working sets + outputs. Kernel and reference do not live at once (the worker frees the kernel first)."""
    b, h, n, d = (int(case.get(k) or v) for k, v in (("batch", 1), ("heads", 8), ("seq_len", 128),
                                                    ("head_dim", 64)))
    qkv = b * h * n * d  # elements of one of Q, K, V
    scores = b * h * n * n  # elements of one L x L score matrix per (batch, head)
    parts: dict[str, float] = {"base": WORKER_BASE_MB}
    inputs = 3 * qkv * 4
    if case.get("variant") == "attnres":
        inputs += (int(case.get("depth") or 8) + 1) * qkv * 4
    if case.get("scope") == "block":
        m = int(case.get("model_dim") or h * d)
        inputs += b * n * m * 4 + 4 * m * h * d * 4
    parts["inputs"] = inputs / MB
    if case.get("inputs") == "minilm":
        parts["minilm model"] = MINILM_MB
    # The kernel: an fp32 score matrix and its softmax (SDPA's math path on the CPU), plus quantized copies.
    kernel = 2 * scores * 4 + 3 * qkv * 4
    # The float64 reference: Q/K/V copies, scores and softmax (and a mask of the same size where masked).
    reference = 3 * qkv * 8 + (3 if case.get("variant") in MASKED_VARIANTS else 2) * scores * 8
    if case.get("variant") == "attnres":
        reference += (int(case.get("depth") or 8) + 1) * qkv * 8
    if kernel >= reference:
        parts["kernel scores"] = kernel / MB
    else:
        parts["float64 reference"] = reference / MB
    parts["outputs"] = 2 * qkv * 8 / MB
    return MemoryEstimate(total_mb=sum(parts.values()), parts_mb=parts)


def memory_skip_reason(case: Mapping[str, Any], available_mb: float | None,
                       headroom: float = DEFAULT_HEADROOM) -> str | None:
    """Why the case cannot fit in `available_mb` (None when it fits, or when availability is unknown)."""
    if available_mb is None or available_mb <= 0:
        return None
    est = estimate_peak_mb(case)
    budget = available_mb * headroom
    if est.total_mb <= budget:
        return None
    largest = est.largest()
    return (f"needs an estimated {est.total_mb:,.0f} MB ({largest} {est.parts_mb[largest]:,.0f} MB) but the "
            f"device has {available_mb:,.0f} MB available ({headroom:.0%} usable); lower seq_len or batch, or "
            "run this case on a device with more memory")
