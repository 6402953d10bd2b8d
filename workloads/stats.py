"""Summary statistics of raw samples: a pure core over plain sequences (numpy only).

Summaries are derived from raw samples and can be recomputed on read; nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

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


# Warm-up drift: the leading samples must be at least this much slower (median against median) and a
# one-sided rank test must reject "no difference" at this family-wise level, shared (Bonferroni) among the
# prefix lengths tried, so a steady case is called drifting about once in a hundred at most.
DRIFT_MIN_SLOWER = 0.05
DRIFT_ALPHA = 0.01
DRIFT_MIN_SAMPLES = 8


def leading_drift(samples: Sequence[float]) -> dict[str, Any] | None:
    """Whether the first samples of a window are still warming up: the prefix (at most half the window)
    whose samples rank slowest against the rest by a one-sided Mann-Whitney test (normal approximation with
    ties), when that test rejects at DRIFT_ALPHA (Bonferroni over the prefixes) and the prefix's median is DRIFT_MIN_SLOWER above the
    rest's. None when no prefix qualifies. Pure: numpy only."""
    a = np.asarray(samples, dtype=np.float64)
    n = int(a.size)
    if n < DRIFT_MIN_SAMPLES or not np.all(np.isfinite(a)):
        return None
    ranks = _ranks(a)
    # Tie correction of the U statistic's variance is the same for every split.
    _, counts = np.unique(a, return_counts=True)
    tie = float((counts ** 3 - counts).sum()) / (n * (n - 1))
    best: dict[str, Any] | None = None
    alpha = DRIFT_ALPHA / (n // 2)
    prefix_rank = np.cumsum(ranks)
    for k in range(1, n // 2 + 1):
        m = n - k
        u = float(prefix_rank[k - 1]) - k * (k + 1) / 2  # times a prefix sample is slower than a later one
        var = k * m / 12.0 * ((n + 1) - tie)
        if var <= 0:
            continue
        z = (u - k * m / 2.0 - 0.5) / math.sqrt(var)
        p = 0.5 * math.erfc(z / math.sqrt(2))
        slower = float(np.median(a[:k]) / np.median(a[k:]) - 1.0)
        if p < alpha and slower >= DRIFT_MIN_SLOWER and (best is None or z > best["z"]):
            best = {"samples": k, "p_value": p, "z": z, "slower_pct": 100.0 * slower}
    if best is None:
        return None
    best.pop("z")
    return best


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) with ties sharing their mean rank."""
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.arange(1, a.size + 1, dtype=np.float64)
    values, inverse = np.unique(a, return_inverse=True)
    if values.size != a.size:
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks


def instability_warning(samples: Sequence[float], label: str, device: str, governor: str | None, *,
                        cpu_other: float | None = None, max_cpu_other: float = 0.10,
                        throttled: bool | None = None, warmup_extended: bool = False,
                        min_samples: int = 10) -> str | None:
    """pyperf's rule (std >= 10% of the mean) as a warning that names the case, the fact, the threshold, the
    likely cause from what was measured (contention, throttling, warm-up drift, the governor, too few
    samples) and the fix."""
    if len(samples) < 2:
        return None
    s = summarize(samples)
    if not s.cv >= CV_WARN:
        return None
    fact = f"latency CV is {s.cv:.0%} (over {CV_WARN:.0%}) for {label} on {device}"
    if cpu_other is not None and cpu_other > max_cpu_other:
        cause = (f"other processes used {cpu_other:.0%} of its CPUs during the window (measure.max_cpu_other is "
                 f"{max_cpu_other:.0%}). Stop them, or set measure.on_contention: wait (or retry)")
    elif throttled:
        cause = ("the device throttled during the case. Cool it (measure.cooldown_c), improve its cooling, or "
                 "check its power supply")
    elif warmup_extended:
        cause = "its latency was still falling when the window opened. Raise measure.warmup_s"
    elif governor and governor != "performance":
        cause = (f"the CPU frequency governor is {governor}, which moves the clock under load. Set it to "
                 "performance (`cpupower frequency-set -g performance`) and check `harness devices check "
                 f"{device}`")
    elif s.n < min_samples:
        cause = f"only {s.n} samples were taken. Raise measure.min_time_s or measure.max_time_s"
    else:
        gov = f"governor {governor}" if governor else "governor unknown"
        cause = (f"no contention, throttling or warm-up drift was measured ({gov}): the kernel's own time varies. "
                 f"Raise measure.min_time_s, or fix `threads` for the case")
    return f"{fact}; likely cause: {cause}."
