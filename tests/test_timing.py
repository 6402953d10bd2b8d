"""The timing protocol and the statistics it feeds, on a fake clock with planted answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workloads.matrix import MeasureConfig
from workloads.stats import bootstrap_ratio_ci, instability_warning, leading_drift, summarize
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
    # The fix now follows the measured cause: for a governor that moves the clock, it is the governor.
    w = instability_warning([1.0, 1.5, 0.7, 1.3], "dense int8 L=4096", "rpi4", "ondemand")
    assert w and "over 10%" in w and "rpi4" in w and "dense int8 L=4096" in w
    assert "governor is ondemand" in w and "performance" in w
    assert instability_warning([1.0, 1.01, 0.99], "x", "d", None) is None
    # With nothing measured to blame, the fix is more samples.
    w = instability_warning([1.0, 1.5, 0.7, 1.3] * 5, "x", "d", "performance")
    assert w and "min_time_s" in w and "no contention, throttling or warm-up drift" in w


NOISY = [1.0, 1.5, 0.7, 1.3] * 5


@pytest.mark.parametrize("kwargs, cause, fix", [
    ({"cpu_other": 0.45}, "other processes used 45% of its CPUs", "on_contention: wait"),
    ({"throttled": True}, "throttled", "cooldown_c"),
    ({"warmup_extended": True}, "still falling", "warmup_s"),
    ({"governor": "schedutil"}, "governor is schedutil", "performance"),
])
def test_instability_warning_blames_what_was_measured_first(kwargs, cause, fix):
    governor = kwargs.pop("governor", "performance")
    w = instability_warning(NOISY, "dense fp32 L=512", "pi", governor, **kwargs)
    assert w and cause in w and fix in w and "dense fp32 L=512 on pi" in w


def test_instability_warning_calls_few_samples_the_cause_when_nothing_else_explains_it():
    w = instability_warning([1.0, 1.5, 0.7, 1.3], "x", "d", "performance", min_samples=10)
    assert w and "only 4 samples" in w


def test_contention_under_the_threshold_is_not_blamed():
    w = instability_warning(NOISY, "x", "d", "performance", cpu_other=0.05, max_cpu_other=0.10)
    assert w and "other processes" not in w


class DriftingClock(FakeClock):
    """Calls start at 3x their steady cost and settle after `settle` calls (a clock ramping up)."""

    def __init__(self, call_s: float, settle: int) -> None:
        super().__init__(call_s)
        self.settle = settle

    def fn(self) -> None:
        self.calls += 1
        factor = 1.0 + 2.0 * max(0.0, 1.0 - self.calls / self.settle)
        self.t += self.call_s * factor


def test_warmup_drift_moves_the_slow_leading_samples_out_of_the_window_and_says_so():
    clock = DriftingClock(0.01, settle=30)
    cfg = MeasureConfig(warmup_s=0.0, min_time_s=0.2, min_samples=20, max_time_s=30)
    t = measure(clock.fn, cfg, clock=clock)
    assert t.warmup_extended is not None and t.warmup_samples_ms
    assert len(t.samples_ms) >= 20  # the window went on until it held enough samples again
    assert max(t.samples_ms) < min(t.warmup_samples_ms)  # what was kept is the settled part
    assert t.window_s >= 0.2 - 1e-9 and math.isclose(t.window_s * 1e3, sum(t.samples_ms), rel_tol=1e-9)
    assert any("warm-up extended" in n and "warmup_s" in n for n in t.notes)


def test_a_steady_case_keeps_its_whole_window():
    clock = FakeClock(0.002)
    t = measure(clock.fn, MeasureConfig(warmup_s=0.0, min_time_s=0.1, min_samples=20, max_time_s=30), clock=clock)
    assert t.warmup_extended is None and t.warmup_samples_ms == []


def test_leading_drift_finds_a_planted_ramp_and_leaves_noise_alone():
    rng = np.random.default_rng(3)
    ramp = np.concatenate([np.linspace(1.6, 1.1, 10), rng.normal(1.0, 0.02, 40)])
    found = leading_drift(ramp)
    assert found is not None and 6 <= found["samples"] <= 12 and found["slower_pct"] > 10
    false_alarms = sum(leading_drift(rng.lognormal(0.0, 0.1, 60)) is not None for _ in range(300))
    assert false_alarms <= 6  # about 1% by construction (Bonferroni over the prefixes)


class RecordingHooks:
    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.events = clock, []

    def begin(self) -> None:
        self.events.append(("begin", self.clock.t))

    def end(self) -> None:
        self.events.append(("end", self.clock.t))


def test_window_hooks_bracket_exactly_the_timed_window():
    clock = FakeClock(0.001)
    hooks = RecordingHooks(clock)
    t = measure(clock.fn, MeasureConfig(warmup_s=0.05, min_time_s=0.1, min_samples=5, max_time_s=30),
                clock=clock, hooks=hooks)
    assert [e[0] for e in hooks.events] == ["begin", "end"]
    assert hooks.events[0][1] == t.window_start and hooks.events[1][1] == t.window_end
