"""The pure energy core: trapezoid integration over a window, counter wraps, minimum window length."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.power.energy import (EnergyError, counter_delta, counter_energy, integrate_power, min_window_s,
                                  unwrap_counter)

INTEL_RANGE_UJ = 262143328850
AMD_RANGE_UJ = 65532610987


def stepped_trace() -> list[tuple[float, float]]:
    """2 W at t = 0..4 s, 10 W at t = 5..10 s, one sample per second."""
    return [(float(t), 2.0 if t < 5 else 10.0) for t in range(11)]


def test_constant_power_gives_power_times_window_and_counts_in_window_samples() -> None:
    trace = [(i / 10, 5.0) for i in range(101)]
    r = integrate_power(trace, 2.05, 7.35)
    assert r.energy_j == pytest.approx(5.0 * 5.3)
    assert r.power_w_avg == pytest.approx(5.0)
    assert r.n_samples == 53  # t = 2.1 .. 7.3
    assert r.window_s == pytest.approx(5.3)


def test_stepped_trace_counts_only_the_in_window_part() -> None:
    after_step = integrate_power(stepped_trace(), 5.5, 8.5)
    assert after_step.energy_j == pytest.approx(30.0)  # 10 W x 3 s; the 2 W part before 5 s is outside
    assert after_step.n_samples == 3
    # Across the step: 2 W for 3.5..4 (1 J), the 4..5 ramp 2 -> 10 W (6 J), 10 W for 5..6.5 (15 J).
    across = integrate_power(stepped_trace(), 3.5, 6.5)
    assert across.energy_j == pytest.approx(22.0)
    assert across.power_w_avg == pytest.approx(22.0 / 3)


def test_linear_ramp_is_integrated_exactly_with_boundaries_interpolated() -> None:
    ramp = [(float(t), float(t)) for t in range(6)]  # P = t watts
    assert integrate_power(ramp, 1.25, 3.75).energy_j == pytest.approx((3.75**2 - 1.25**2) / 2)


def test_window_not_covered_by_samples_is_refused() -> None:
    with pytest.raises(EnergyError, match="start the sampler before the window"):
        integrate_power(stepped_trace(), -1.0, 3.0)
    with pytest.raises(EnergyError, match="stop it after"):
        integrate_power(stepped_trace(), 8.0, 10.5)


def test_window_with_too_few_samples_is_refused_with_the_count() -> None:
    with pytest.raises(EnergyError, match="only 0 sensor samples"):
        integrate_power(stepped_trace(), 5.2, 5.8)
    assert integrate_power(stepped_trace(), 5.2, 5.8, min_samples=0).energy_j == pytest.approx(6.0)


def test_empty_trace_and_reversed_window_are_errors() -> None:
    with pytest.raises(EnergyError, match="no power samples"):
        integrate_power([], 0.0, 1.0)
    with pytest.raises(ValueError, match="after its start"):
        integrate_power(stepped_trace(), 3.0, 3.0)


def test_rapl_wrap_delta_matches_power_md_f5() -> None:
    assert counter_delta(262143000000, 1000000, INTEL_RANGE_UJ) == 1328850


def test_counter_going_backwards_without_a_known_range_is_an_error() -> None:
    with pytest.raises(EnergyError, match="range is unknown"):
        counter_delta(10, 5, None)


def test_rapl_wrap_inside_the_window_is_counted() -> None:
    # 1 328 850 µJ per second; the counter wraps between t = 1 and t = 2.
    samples = [(0.0, (262141671150,)), (1.0, (262143000000,)), (2.0, (1000000,)), (3.0, (2328850,))]
    r = counter_energy(samples, 0.5, 2.5, unit_j=1e-6, ranges=[INTEL_RANGE_UJ])
    assert r.energy_j == pytest.approx(2 * 1.32885)
    assert r.power_w_avg == pytest.approx(1.32885)
    assert r.n_samples == 2


def test_several_wraps_are_counted_not_just_one() -> None:
    # AMD EPYC range (65.5 kJ): 30 kJ per reading wraps the counter twice over four steps.
    step = 30_000_000_000
    values = [(i * step) % AMD_RANGE_UJ for i in range(5)]
    assert unwrap_counter(values, AMD_RANGE_UJ)[-1] == 4 * step
    r = counter_energy([(float(i), (v,)) for i, v in enumerate(values)], 0.0, 4.0, unit_j=1e-6,
                       ranges=[AMD_RANGE_UJ])
    assert r.energy_j == pytest.approx(4 * 30_000.0)


def test_package_and_dram_channels_are_summed() -> None:
    samples = [(0.0, (1_000_000, 500_000)), (1.0, (11_000_000, 1_500_000)), (2.0, (21_000_000, 2_500_000))]
    r = counter_energy(samples, 0.0, 2.0, unit_j=1e-6, ranges=[INTEL_RANGE_UJ, 65712999613])
    assert r.energy_j == pytest.approx(22.0)  # 10 W package + 1 W DRAM over 2 s


def test_nvml_millijoule_counter_gives_watts_over_two_seconds() -> None:
    r = counter_energy([(0.0, (123456789,)), (2.0, (123460289,))], 0.0, 2.0, unit_j=1e-3, ranges=[None])
    assert r.energy_j == pytest.approx(3.5)
    assert r.power_w_avg == pytest.approx(1.75)


def test_counter_that_did_not_advance_is_below_resolution_not_zero_joules() -> None:
    with pytest.raises(EnergyError, match="below counter resolution"):
        counter_energy([(0.0, (123456789,)), (0.05, (123456789,))], 0.0, 0.05, unit_j=1e-3, ranges=[None])


def test_min_window_is_twenty_sensor_updates_with_a_one_second_floor() -> None:
    assert min_window_s(64 * 2.2e-3 * 3) == pytest.approx(8.448)  # legacy Jetson INA3221, continuous mode
    assert min_window_s(0.5) == pytest.approx(10.0)  # tegrastats at 500 ms
    assert min_window_s(0.007) == 1.0
    assert min_window_s(0.1, min_samples=50) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        min_window_s(0.1, min_samples=0)


@settings(max_examples=60, deadline=None)
@given(times=st.lists(st.floats(0.01, 9.99), min_size=2, max_size=30, unique=True),
       watts=st.floats(0.1, 500.0), a=st.floats(0.0, 5.0), b=st.floats(5.0, 10.0))
def test_constant_power_integrates_exactly_whatever_the_sample_times(times: list[float], watts: float,
                                                                     a: float, b: float) -> None:
    if b <= a:
        return
    trace = [(t, watts) for t in sorted({0.0, 10.0, *times})]
    assert integrate_power(trace, a, b, min_samples=0).energy_j == pytest.approx(watts * (b - a))


@settings(max_examples=60, deadline=None)
@given(powers=st.lists(st.floats(0.0, 100.0), min_size=11, max_size=11),
       cuts=st.lists(st.floats(0.0, 10.0), min_size=3, max_size=3, unique=True))
def test_energy_of_adjacent_windows_adds_up(powers: list[float], cuts: list[float]) -> None:
    a, b, c = sorted(cuts)
    if b - a < 1e-6 or c - b < 1e-6:
        return
    trace = list(zip(map(float, range(11)), powers))
    whole = integrate_power(trace, a, c, min_samples=0).energy_j
    parts = integrate_power(trace, a, b, min_samples=0).energy_j + integrate_power(trace, b, c,
                                                                                  min_samples=0).energy_j
    assert whole == pytest.approx(parts, abs=1e-9)
