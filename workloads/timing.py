"""The timing protocol: warm-up by time, inner loops calibrated to a minimum sample length, samples until
`min_time_s` and `min_samples`, capped by `max_time_s`.

Learned from pyperf (calibrated loops, shortest sample >= 1 ms), TFLite's benchmark_model (warm-up of at
least 0.5 s, `min_secs`/`max_secs`) and TVM's time_evaluator (repeat x number). The function under test
does everything a real call does (quantizing its activations included) and synchronizes any accelerator
itself, so the timed region is honest. All times come from `time.perf_counter`, which is CLOCK_MONOTONIC on
Linux: power samplers stamp their readings with the same clock so they can be aligned with the window.

Warm-up is checked, not assumed: once the window holds enough samples, a rank test asks whether its first
samples are slower than the rest (a cache, a JIT or a clock still ramping up). If they are, they become
warm-up (kept in `warmup_samples_ms`, said in `notes`) and the window goes on until it holds enough samples
again. It is checked once, so a case whose latency keeps falling cannot loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .matrix import MeasureConfig
from .stats import leading_drift


class WindowHooks(Protocol):
    """Called right before the timed window opens and right after it closes (contention sampling)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


@dataclass
class Timing:
    """What one measurement produced: raw samples (ms per call) and how they were taken."""

    samples_ms: list[float]
    inner_loops: int
    warmup_calls: int
    warmup_s: float
    window_start: float  # perf_counter seconds: start of the first sample
    window_end: float  # end of the last sample
    calls: int  # calls inside the window
    stopped_by: str  # "enough" (min_time and min_samples met) or "max_time"
    notes: list[str] = field(default_factory=list)
    # Leading samples found to be still warming up (moved out of the window), and why.
    warmup_samples_ms: list[float] = field(default_factory=list)
    warmup_extended: dict[str, Any] | None = None

    @property
    def window_s(self) -> float:
        return self.window_end - self.window_start

    def to_dict(self) -> dict[str, Any]:
        return {"samples_ms": self.samples_ms, "inner_loops": self.inner_loops,
                "warmup_calls": self.warmup_calls, "warmup_s": self.warmup_s,
                "window_start": self.window_start, "window_end": self.window_end, "calls": self.calls,
                "stopped_by": self.stopped_by, "notes": self.notes,
                "warmup_samples_ms": self.warmup_samples_ms, "warmup_extended": self.warmup_extended}


def calibrate_loops(call_s: float, min_sample_s: float, max_loops: int = 1 << 20) -> int:
    """Calls per sample so one sample lasts at least `min_sample_s` (1 when a call is already longer)."""
    if call_s <= 0:
        return max_loops
    return max(1, min(max_loops, math.ceil(min_sample_s / call_s)))


def measure(fn: Callable[[], Any], cfg: MeasureConfig, *, min_window_s: float = 0.0,
            clock: Callable[[], float] = time.perf_counter, hooks: WindowHooks | None = None) -> Timing:
    """Time `fn` under the protocol; `min_window_s` stretches the window (e.g. for a slow power sensor);
    `hooks` hear the window open and close."""
    # Warm-up by time, at least one call; the fastest warm-up call calibrates the inner loop.
    start = clock()
    fastest = math.inf
    warmup_calls = 0
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        warmup_calls += 1
        fastest = min(fastest, t1 - t0)
        if t1 - start >= cfg.warmup_s:
            break
        if t1 - start >= cfg.max_time_s:
            break
    warmup_s = clock() - start
    loops = calibrate_loops(fastest, cfg.min_sample_s)

    samples: list[float] = []
    ends: list[float] = []  # when each sample ended, to move the window's start past drifting samples
    notes: list[str] = []
    warmup_samples: list[float] = []
    extended: dict[str, Any] | None = None
    drift_checked = False
    min_time = max(cfg.min_time_s, min_window_s)
    if hooks is not None:
        hooks.begin()
    window_start = clock()
    opened = window_start  # max_time_s counts from here, even when drifting samples move window_start
    t_prev = window_start
    stopped_by = "enough"
    while True:
        for _ in range(loops):
            fn()
        t_now = clock()
        samples.append((t_now - t_prev) * 1e3 / loops)
        ends.append(t_now)
        t_prev = t_now
        elapsed = t_now - window_start
        if elapsed >= min_time and len(samples) >= cfg.min_samples:
            if not drift_checked:
                drift_checked = True
                drift = leading_drift(samples)
                if drift is not None:
                    k = drift["samples"]
                    warmup_samples = samples[:k]
                    window_start = ends[k - 1]
                    del samples[:k], ends[:k]
                    extended = {**drift, "extra_warmup_s": sum(warmup_samples) * loops / 1e3}
                    notes.append(f"warm-up extended: the first {k} samples were {drift['slower_pct']:.0f}% slower "
                                 f"than the rest (rank test p={drift['p_value']:.1g}); they count as warm-up. "
                                 f"Raise measure.warmup_s to warm up before the window")
                    continue
            break
        if t_now - opened >= cfg.max_time_s:
            stopped_by = "max_time"
            if len(samples) < cfg.min_samples:
                notes.append(f"max_time_s {cfg.max_time_s} s reached with {len(samples)} samples "
                             f"(min_samples {cfg.min_samples}); raise measure.max_time_s for more")
            break
    if hooks is not None:
        hooks.end()
    return Timing(samples_ms=samples, inner_loops=loops, warmup_calls=warmup_calls + loops * len(warmup_samples),
                  warmup_s=warmup_s + sum(warmup_samples) * loops / 1e3, window_start=window_start,
                  window_end=t_prev, calls=loops * len(samples), stopped_by=stopped_by, notes=notes,
                  warmup_samples_ms=warmup_samples, warmup_extended=extended)
