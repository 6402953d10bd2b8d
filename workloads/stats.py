"""Summary statistics of raw samples: a pure core over plain sequences (numpy only).

Summaries are derived from raw samples and can be recomputed on read; nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

# pyperf warns when the standard deviation reaches 10% of the mean.
CV_WARN = 0.10


@dataclass(frozen=True)
class Summary:
    """Latency summary in the unit of the samples (ms throughout the harness)."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float

    @property
    def cv(self) -> float:
        return self.std / self.mean if self.mean > 0 else math.nan

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(samples: Sequence[float]) -> Summary:
    """Percentiles (linear interpolation), mean and sample standard deviation of raw samples."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples to summarize")
    if not np.all(np.isfinite(a)):
        raise ValueError("samples contain NaN or infinity")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return Summary(n=int(a.size), p50=float(p50), p90=float(p90), p99=float(p99), mean=float(a.mean()),
                   std=std, min=float(a.min()), max=float(a.max()))


def bootstrap_ratio_ci(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Ratio of medians median(a)/median(b) with a percentile bootstrap interval (fixed seed)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        raise ValueError("both sides need samples")
    rng = np.random.default_rng(seed)
    xb = np.median(rng.choice(x, size=(n_boot, x.size), replace=True), axis=1)
    yb = np.median(rng.choice(y, size=(n_boot, y.size), replace=True), axis=1)
    ratios = xb / yb
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha])
    return float(np.median(x) / np.median(y)), float(lo), float(hi)


def instability_warning(samples: Sequence[float], label: str, device: str, governor: str | None) -> str | None:
    """pyperf's rule (std >= 10% of the mean) as a warning that says the fact, the threshold and the fix."""
    if len(samples) < 2:
        return None
    s = summarize(samples)
    if not s.cv >= CV_WARN:
        return None
    gov = f"governor is {governor}" if governor else "governor unknown"
    return (f"latency CV is {s.cv:.0%} (over {CV_WARN:.0%}) for {label} on {device}; {gov}. "
            f"Run `harness devices check {device}` or raise measure.min_time_s.")
