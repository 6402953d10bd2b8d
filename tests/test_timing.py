"""The timing protocol and the statistics it feeds, on a fake clock with planted answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workloads.matrix import MeasureConfig
from workloads.stats import bootstrap_ratio_ci, instability_warning, summarize
from workloads.timing import calibrate_loops, measure


class FakeClock:
    """A clock that advances only when the function under test 'runs'."""

    def __init__(self, call_s: float) -> None:
        self.t = 100.0
        self.call_s = call_s
        self.calls = 0

    def __call__(self) -> float:
        return self.t

    def fn(self) -> None:
        self.calls += 1
        self.t += self.call_s


def test_calibration_makes_each_sample_last_at_least_the_minimum():
    assert calibrate_loops(0.0001, 0.001) == 10
    assert calibrate_loops(0.003, 0.001) == 1
    assert calibrate_loops(0.00033, 0.001) == 4


def test_measure_warms_up_by_time_then_samples_until_min_time_and_min_samples():
    clock = FakeClock(0.0002)
    cfg = MeasureConfig(warmup_s=0.1, min_time_s=0.5, min_samples=10, max_time_s=30)
    t = measure(clock.fn, cfg, clock=clock)
    assert t.inner_loops == 5  # 5 x 0.2 ms = 1 ms per sample
    assert t.warmup_calls == 500
    assert len(t.samples_ms) == 500  # 0.5 s of 1 ms samples
    assert all(math.isclose(s, 0.2) for s in t.samples_ms)
    assert t.calls == 2500 and math.isclose(t.window_s, 0.5)
    assert t.stopped_by == "enough"


def test_min_samples_extends_a_run_of_slow_calls():
    clock = FakeClock(0.2)
    t = measure(clock.fn, MeasureConfig(warmup_s=0.0, min_time_s=0.1, min_samples=7, max_time_s=30), clock=clock)
    assert len(t.samples_ms) == 7 and t.inner_loops == 1


def test_max_time_caps_a_run_and_says_so():
    clock = FakeClock(1.0)
    t = measure(clock.fn, MeasureConfig(warmup_s=0.0, min_time_s=1, min_samples=100, max_time_s=5), clock=clock)
    assert t.stopped_by == "max_time" and len(t.samples_ms) == 5
    assert "max_time_s" in t.notes[0]


def test_min_window_stretches_the_window_for_slow_sensors():
    clock = FakeClock(0.001)
    t = measure(clock.fn, MeasureConfig(warmup_s=0.0, min_time_s=0.1, min_samples=1, max_time_s=30),
                min_window_s=2.0, clock=clock)
    assert t.window_s >= 2.0


def test_summary_percentiles_and_spread():
    s = summarize(list(range(1, 101)))
    assert s.n == 100 and s.p50 == 50.5 and math.isclose(s.p90, 90.1) and math.isclose(s.p99, 99.01)
    assert math.isclose(s.std, np.std(range(1, 101), ddof=1))


def test_summary_refuses_nan():
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_bootstrap_interval_contains_the_true_ratio():
    rng = np.random.default_rng(1)
    a = rng.normal(2.0, 0.02, 50)
    b = rng.normal(1.0, 0.01, 50)
    ratio, lo, hi = bootstrap_ratio_ci(a, b)
    assert lo < 2.0 < hi and lo < ratio < hi and hi - lo < 0.05


def test_instability_warning_names_the_fact_threshold_and_fix():
    w = instability_warning([1.0, 1.5, 0.7, 1.3], "dense int8 L=4096", "rpi4", "ondemand")
    assert w and "over 10%" in w and "rpi4" in w and "ondemand" in w and "min_time_s" in w
    assert instability_warning([1.0, 1.01, 0.99], "x", "d", None) is None
