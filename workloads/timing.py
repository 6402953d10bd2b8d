"""The timing protocol: warm-up by time, inner loops calibrated to a minimum sample length, samples until
`min_time_s` and `min_samples`, capped by `max_time_s`.

Learned from pyperf (calibrated loops, shortest sample >= 1 ms), TFLite's benchmark_model (warm-up of at
least 0.5 s, `min_secs`/`max_secs`) and TVM's time_evaluator (repeat x number). The function under test
does everything a real call does (quantizing its activations included) and synchronizes any accelerator
itself, so the timed region is honest. All times come from `time.perf_counter`, which is CLOCK_MONOTONIC on
Linux: power samplers stamp their readings with the same clock so they can be aligned with the window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .matrix import MeasureConfig


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

    @property
    def window_s(self) -> float:
        return self.window_end - self.window_start

    def to_dict(self) -> dict[str, Any]:
        return {"samples_ms": self.samples_ms, "inner_loops": self.inner_loops,
                "warmup_calls": self.warmup_calls, "warmup_s": self.warmup_s,
                "window_start": self.window_start, "window_end": self.window_end, "calls": self.calls,
                "stopped_by": self.stopped_by, "notes": self.notes}


def calibrate_loops(call_s: float, min_sample_s: float, max_loops: int = 1 << 20) -> int:
    """Calls per sample so one sample lasts at least `min_sample_s` (1 when a call is already longer)."""
    if call_s <= 0:
        return max_loops
    return max(1, min(max_loops, math.ceil(min_sample_s / call_s)))


def measure(fn: Callable[[], Any], cfg: MeasureConfig, *, min_window_s: float = 0.0,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time `fn` under the protocol; `min_window_s` stretches the window (e.g. for a slow power sensor)."""
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
    notes: list[str] = []
    min_time = max(cfg.min_time_s, min_window_s)
    window_start = clock()
    t_prev = window_start
    stopped_by = "enough"
    while True:
        for _ in range(loops):
            fn()
        t_now = clock()
        samples.append((t_now - t_prev) * 1e3 / loops)
        t_prev = t_now
        elapsed = t_now - window_start
        if elapsed >= min_time and len(samples) >= cfg.min_samples:
            break
        if elapsed >= cfg.max_time_s:
            stopped_by = "max_time"
            if len(samples) < cfg.min_samples:
                notes.append(f"max_time_s {cfg.max_time_s} s reached with {len(samples)} samples "
                             f"(min_samples {cfg.min_samples}); raise measure.max_time_s for more")
            break
    return Timing(samples_ms=samples, inner_loops=loops, warmup_calls=warmup_calls, warmup_s=warmup_s,
                  window_start=window_start, window_end=t_prev, calls=loops * len(samples),
                  stopped_by=stopped_by, notes=notes)
