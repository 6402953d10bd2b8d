"""Unit tests of the change-point core on synthetic nightly histories with planted answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from results.detect import (
    ENVIRONMENT_CHANGED,
    ChangePoint,
    Run,
    detect_change_points,
    latest_regression,
    median_interval,
)


def nightly(
    seed: int,
    nights: int = 60,
    *,
    level: float = 10.0,
    cv: float = 0.02,
    between: float = 0.005,
    samples: int = 20,
    steps: dict[int, float] | None = None,
    throttled: dict[int, float] | None = None,
    bimodal: dict[int, float] | None = None,
    random_events: float = 0.0,
) -> list[list[float]]:
    """Raw latency samples per night.

    ``steps`` maps a night to a lasting factor from that night on; ``throttled`` maps a night to a factor
    on all its samples; ``bimodal`` maps a night to the share of its samples in a 20% slower mode.
    ``random_events`` is the chance per night of a random throttled, half-throttled or bimodal night.
    """
    rng = np.random.default_rng(seed)
    steps, throttled, bimodal = steps or {}, throttled or {}, bimodal or {}
    factor = 1.0
    runs: list[list[float]] = []
    for night in range(nights):
        factor *= steps.get(night, 1.0)
        x = level * factor * np.exp(rng.normal(0.0, between)) * np.exp(rng.normal(0.0, cv, samples))
        tail = rng.random(samples) < 0.05
        x[tail] *= 1.0 + rng.exponential(3 * cv, int(tail.sum()))
        x *= throttled.get(night, 1.0)
        if night in bimodal:
            x[rng.random(samples) < bimodal[night]] *= 1.2
        event = rng.random()
        if event < random_events / 3:
            x *= rng.uniform(1.15, 1.6)
        elif event < 2 * random_events / 3:
            x[int(rng.integers(0, samples)):] *= rng.uniform(1.2, 1.6)
        elif event < random_events:
            x[rng.random(samples) < rng.uniform(0.2, 0.7)] *= rng.uniform(1.1, 1.3)
        runs.append(list(x))
    return runs


def indices(cps: list[ChangePoint]) -> list[int]:
    return [cp.index for cp in cps]


# --- whole-history detection ---------------------------------------------------------------------------


@pytest.mark.parametrize("cv", [0.005, 0.02, 0.04])
def test_clean_histories_with_spikes_and_bimodal_nights_report_no_change_points(cv: float) -> None:
    found = {seed: indices(detect_change_points(nightly(seed, 90, cv=cv, between=cv / 3 + 0.002,
                                                         random_events=0.08)))
             for seed in range(12)}
    assert found == {seed: [] for seed in range(12)}


@pytest.mark.parametrize("factor", [1.05, 1.10, 1.25])
def test_planted_slowdown_is_found_at_its_night(factor: float) -> None:
    cps = detect_change_points(nightly(3, 60, cv=0.01, between=0.003, steps={37: factor}))
    assert indices(cps) == [37]
    assert cps[0].direction == "regression"
    assert cps[0].change_pct == pytest.approx(100 * (factor - 1), abs=1.5)


def test_planted_slowdown_is_found_through_throttled_and_bimodal_nights() -> None:
    runs = nightly(4, 70, cv=0.03, between=0.008, steps={41: 1.10},
                   throttled={12: 1.5, 39: 1.4, 55: 1.3}, bimodal={20: 0.6, 40: 0.3, 60: 0.7})
    assert indices(detect_change_points(runs)) == [41]


def test_throttled_nights_on_both_sides_of_a_step_do_not_hide_it() -> None:
    # Four of thirty nights throttled by 40-50%: an untrimmed test drowns the 10% step in their variance.
    runs = nightly(0, 30, cv=0.02, between=0.006, steps={15: 1.10}, throttled={3: 1.5, 9: 1.4, 19: 1.5, 25: 1.4})
    assert indices(detect_change_points(runs)) == [15]


def test_a_real_5pct_step_measured_just_under_5pct_is_still_reported() -> None:
    # min_effect drops only steps demonstrably smaller than it; a 5% step measured at 4.8% is not that.
    (cp,) = detect_change_points(nightly(1, 40, cv=0.01, between=0.006, steps={20: 1.05}))
    assert cp.index == 20 and 4.0 < cp.change_pct < 5.0


def test_planted_speedup_is_an_improvement() -> None:
    cps = detect_change_points(nightly(5, 50, steps={20: 0.90}))
    assert [(cp.index, cp.direction) for cp in cps] == [(20, "improvement")]
    assert cps[0].change_pct < 0 and cps[0].statistic < 0


def test_temporary_regression_is_found_as_a_step_up_then_a_step_down() -> None:
    cps = detect_change_points(nightly(6, 60, steps={20: 1.15, 32: 1 / 1.15}))
    assert [(cp.index, cp.direction) for cp in cps] == [(20, "regression"), (32, "improvement")]


@pytest.mark.parametrize("nights", [[30], [30, 31], [30, 31, 32]])
def test_a_few_throttled_nights_in_a_row_are_not_a_change_point(nights: list[int]) -> None:
    runs = nightly(7, 60, throttled={n: 1.4 for n in nights})
    assert detect_change_points(runs) == []


def test_a_night_with_most_samples_in_a_slow_mode_is_not_a_change_point() -> None:
    assert detect_change_points(nightly(8, 60, bimodal={25: 0.8})) == []


def test_a_significant_change_below_min_effect_is_not_reported_unless_min_effect_is_lowered() -> None:
    runs = nightly(9, 60, cv=0.005, between=0.001, steps={30: 1.02})
    assert detect_change_points(runs) == []
    assert indices(detect_change_points(runs, min_effect=0.01)) == [30]


def test_a_step_on_few_runs_passes_a_loose_alpha_and_fails_a_strict_one() -> None:
    runs = nightly(10, 12, cv=0.02, between=0.01, steps={6: 1.08})
    assert indices(detect_change_points(runs, alpha=0.01)) == [6]
    assert detect_change_points(runs, alpha=1e-9) == []


def test_for_higher_is_better_metrics_a_drop_is_a_regression() -> None:
    cps = detect_change_points(nightly(11, 40, steps={20: 0.85}), lower_is_better=False)
    assert [(cp.index, cp.direction) for cp in cps] == [(20, "regression")]


def test_change_point_carries_levels_with_intervals_runs_and_the_deciding_test() -> None:
    raw = nightly(12, 40, level=20.0, steps={25: 1.10})
    runs = [Run(samples=s, run_id=f"r{i}", started_at=f"2026-01-{i + 1:02d}") for i, s in enumerate(raw)]
    (cp,) = detect_change_points(runs)
    assert (cp.index, cp.run_id, cp.started_at) == (25, "r25", "2026-01-26")
    assert cp.before_runs == tuple(range(0, 25)) and cp.after_runs == tuple(range(25, 40))
    assert cp.before.low <= cp.before.median <= cp.before.high < cp.after.low <= cp.after.median <= cp.after.high
    assert cp.before.median == pytest.approx(20.0, rel=0.02) and cp.after.median == pytest.approx(22.0, rel=0.02)
    assert cp.change_pct == pytest.approx(100 * (cp.after.median / cp.before.median - 1))
    assert cp.statistic_name == "yuen_welch_t" and cp.statistic > 0 and cp.p_value < 1e-6
    assert cp.cause is None


def test_a_step_where_the_environment_changes_is_reported_with_that_cause() -> None:
    raw = nightly(13, 50, steps={30: 1.12})
    runs = [Run(samples=s, key=("bookworm", "torch 2.4") if i < 30 else ("bookworm", "torch 2.5"))
            for i, s in enumerate(raw)]
    (cp,) = detect_change_points(runs)
    assert (cp.index, cp.direction, cp.cause) == (30, "regression", ENVIRONMENT_CHANGED)
    assert cp.key_before == ("bookworm", "torch 2.4") and cp.key_after == ("bookworm", "torch 2.5")


def test_an_environment_change_with_no_level_change_is_not_reported() -> None:
    runs = [Run(samples=s, key="a" if i < 30 else "b") for i, s in enumerate(nightly(14, 50))]
    assert detect_change_points(runs) == []


def test_steps_inside_an_environment_block_are_not_blamed_on_the_environment() -> None:
    raw = nightly(15, 80, steps={55: 1.10})
    runs = [Run(samples=s, key="a" if i < 30 else "b") for i, s in enumerate(raw)]
    assert [(cp.index, cp.cause) for cp in detect_change_points(runs)] == [(55, None)]


def test_runs_without_samples_are_skipped_but_keep_their_index() -> None:
    raw = nightly(16, 40, steps={20: 1.10})
    raw[10] = []
    raw[21] = []
    (cp,) = detect_change_points(raw)
    assert cp.index == 20 and 10 not in cp.before_runs and 21 not in cp.after_runs


def test_a_non_positive_sample_is_refused_naming_the_run() -> None:
    runs = [Run(samples=s, run_id=f"r{i}") for i, s in enumerate(nightly(17, 10))]
    runs[4] = Run(samples=[1.0, 0.0, 1.0], run_id="r4")
    with pytest.raises(ValueError, match="r4"):
        detect_change_points(runs)


@settings(max_examples=15, deadline=None)
@given(scale=st.floats(min_value=1e-3, max_value=1e4), seed=st.integers(0, 2**16))
def test_detection_does_not_depend_on_the_unit(scale: float, seed: int) -> None:
    raw = nightly(seed, 40, steps={22: 1.08}, random_events=0.1)
    scaled = [[v * scale for v in night] for night in raw]
    assert indices(detect_change_points(scaled)) == indices(detect_change_points(raw))


def test_median_interval_uses_binomial_order_statistics() -> None:
    # P(Binomial(10, 1/2) <= 1) = 0.011 <= 0.025 < P(<= 2) = 0.055, so the 95% interval is [x(2), x(9)].
    level = median_interval([10, 1, 9, 2, 8, 3, 7, 4, 6, 5], 0.95)
    assert (level.median, level.low, level.high, level.n) == (5.5, 2.0, 9.0, 10)
    assert (median_interval([3, 1, 2]).low, median_interval([3, 1, 2]).high) == (1.0, 3.0)


# --- newest-run mode -----------------------------------------------------------------------------------


def test_latest_flags_a_clearly_slower_newest_night() -> None:
    runs = nightly(20, 31, steps={30: 1.15})
    verdict = latest_regression(runs)
    assert verdict.is_regression and verdict.index == 30
    assert verdict.change_pct == pytest.approx(15, abs=2.5)
    assert verdict.statistic_name == "prediction_t" and verdict.p_value < 1e-3
    assert verdict.history_runs == tuple(range(30))


def test_latest_finds_nothing_in_an_ordinary_night() -> None:
    assert [latest_regression(nightly(seed, 31, cv=0.03, between=0.01)).status for seed in range(20)] == ["ok"] * 20


def test_latest_calls_a_faster_newest_night_an_improvement() -> None:
    assert latest_regression(nightly(21, 31, steps={30: 0.85})).status == "improvement"


def test_latest_does_not_call_a_small_slowdown_a_regression() -> None:
    verdict = latest_regression(nightly(22, 31, cv=0.003, between=0.001, steps={30: 1.03}))
    assert verdict.status == "ok" and verdict.change_pct == pytest.approx(3, abs=0.5)


def test_latest_calls_a_half_throttled_newest_night_unstable_not_a_regression() -> None:
    runs = nightly(23, 31)
    runs[30] = runs[30][:8] + [v * 1.4 for v in runs[30][8:]]
    assert latest_regression(runs).status == "unstable"


def test_latest_calls_a_bimodal_newest_night_unstable_not_a_regression() -> None:
    runs = nightly(24, 31, cv=0.01)
    rng = np.random.default_rng(0)
    runs[30] = [v * (1.3 if rng.random() < 0.6 else 1.0) for v in runs[30]]
    assert latest_regression(runs).status == "unstable"


def test_latest_calls_a_slower_night_that_is_narrower_than_its_history_a_regression() -> None:
    # A kernel slowed by doing its work four times per call averages its own jitter: 4x slower, half the
    # relative spread. Narrower is no sign of an unstable device (the two-sided shape test said "unstable").
    runs = nightly(27, 8, cv=0.05, samples=200)  # a few hundred samples a night, as a real ~50 us case gives
    rng = np.random.default_rng(1)
    runs[7] = list(40.0 * np.exp(rng.normal(0.0, 0.02, len(runs[7]))))  # level 10, 4x
    verdict = latest_regression(runs)
    assert verdict.status == "regression", verdict.reason
    # The same slowdown with a second mode in it is still unstable.
    runs[7] = [v * (1.3 if rng.random() < 0.5 else 1.0) for v in runs[7]]
    assert latest_regression(runs).status == "unstable"


def test_latest_does_not_judge_a_night_the_device_reported_throttled() -> None:
    raw = nightly(25, 31, steps={30: 1.3})
    runs = [Run(samples=s, throttled=(i == 30)) for i, s in enumerate(raw)]
    assert latest_regression(runs).status == "unstable"
    assert latest_regression(raw).status == "regression"


def test_latest_compares_against_the_history_since_the_last_step() -> None:
    runs = nightly(26, 41, steps={10: 1.25})
    verdict = latest_regression(runs)
    assert verdict.status == "ok" and verdict.history_runs == tuple(range(10, 40))


def test_latest_reports_a_step_the_newest_run_confirms() -> None:
    # Four nights 6% slower in a quiet series: the last one alone is not enough, the four together are.
    runs = nightly(27, 44, cv=0.01, between=0.004, steps={40: 1.06})
    verdict = latest_regression(runs)
    assert verdict.is_regression and verdict.change_point is not None
    assert verdict.change_point.index == 40 and verdict.change_point.after_runs == (40, 41, 42, 43)


def test_latest_against_another_environment_names_the_environment() -> None:
    raw = nightly(28, 31, steps={30: 1.2})
    runs = [Run(samples=s, key="old" if i < 30 else "new") for i, s in enumerate(raw)]
    verdict = latest_regression(runs)
    assert verdict.is_regression and verdict.cause == ENVIRONMENT_CHANGED


def test_latest_needs_enough_history() -> None:
    assert latest_regression(nightly(29, 4, steps={3: 1.5})).status == "insufficient_history"


def test_latest_with_an_empty_newest_run_has_no_data() -> None:
    runs = nightly(30, 20)
    runs[-1] = []
    assert latest_regression(runs).status == "no_data"


def test_latest_does_not_judge_a_contended_night_and_keeps_contended_nights_out_of_the_baseline() -> None:
    raw = nightly(25, 31, steps={30: 1.3})
    runs = [Run(samples=s, contended=(i == 30)) for i, s in enumerate(raw)]
    assert latest_regression(runs).status == "unstable"
    assert "contended" in latest_regression(runs).reason
    # Slow contended nights in the baseline would hide a real slowdown of the newest one.
    raw = nightly(28, 31, steps={30: 1.3})
    noisy = [[v * 1.3 for v in s] if i in (27, 28, 29) else s for i, s in enumerate(raw)]
    runs = [Run(samples=s, contended=(i in (27, 28, 29))) for i, s in enumerate(noisy)]
    verdict = latest_regression(runs)
    assert verdict.status == "regression" and 27 not in verdict.history_runs
