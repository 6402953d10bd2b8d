"""Energy over a timed window: the pure core (no I/O, no clocks).

Power traces are integrated with the trapezoid rule, which has no load-dependent bias (Zeus's Pi 5 backend
does this; rectangle rules over-count rising power). Only the part inside [start, end] counts: the trace is
linearly interpolated at both boundaries. Counters (RAPL µJ, NVML mJ) are unwrapped by counting decreases,
any number of times (one wrap per reading interval at most, so the sampler must poll faster than the counter
wraps), then their cumulative value is interpolated at the boundaries the same way.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass
from typing import Sequence

from workloads.errors import DeviceError


class EnergyError(DeviceError):
    """The samples cannot give an honest energy for this window (too few, not covering it, no advance)."""


@dataclass(frozen=True)
class EnergyResult:
    """Energy inside one window, and how many sensor samples fell inside it."""

    energy_j: float
    power_w_avg: float
    n_samples: int
    window_s: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def min_window_s(update_interval_s: float, min_samples: int = 20, floor_s: float = 1.0) -> float:
    """How long a timed window must be to hold `min_samples` fresh sensor values (at least `floor_s`).

    power.md §6.1: loop the kernel until the window is >= max(1 s, 20 x the sensor's update period), e.g.
    8.5 s for a legacy Jetson INA3221 in continuous mode (422 ms per value), 10 s for tegrastats at 500 ms.
    """
    if update_interval_s < 0 or min_samples < 1 or floor_s < 0:
        raise ValueError("update_interval_s and floor_s must be >= 0 and min_samples >= 1")
    return max(floor_s, min_samples * update_interval_s)


def _check_window(times: Sequence[float], start: float, end: float, min_samples: int) -> int:
    if not end > start:
        raise ValueError(f"window end {end} must be after its start {start}")
    if not times:
        raise EnergyError("no power samples were recorded")
    if any(b < a for a, b in zip(times, times[1:])):
        raise ValueError("sample times must be non-decreasing")
    if times[0] > start or times[-1] < end:
        raise EnergyError(f"samples cover [{times[0]:.3f}, {times[-1]:.3f}] s but the window is "
                          f"[{start:.3f}, {end:.3f}] s: start the sampler before the window and stop it "
                          f"after")
    n_in = bisect.bisect_right(times, end) - bisect.bisect_left(times, start)
    if n_in < min_samples:
        raise EnergyError(f"only {n_in} sensor samples inside the {end - start:.3f} s window (need "
                          f"{min_samples}); lengthen the window to at least min_window_s(update interval)")
    return n_in


def _interp(times: Sequence[float], values: Sequence[float], t: float) -> float:
    """Linear interpolation of a trace that covers `t`."""
    i = bisect.bisect_left(times, t)
    if times[i] == t:
        return values[i]
    t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def integrate_power(samples: Sequence[tuple[float, float]], start: float, end: float, *,
                    min_samples: int = 2) -> EnergyResult:
    """Trapezoid energy (J) of a (t [s], P [W]) trace over [start, end], interpolating at both boundaries."""
    times = [t for t, _ in samples]
    watts = [float(w) for _, w in samples]
    n_in = _check_window(times, start, end, min_samples)
    lo, hi = bisect.bisect_right(times, start), bisect.bisect_left(times, end)
    pts = [(start, _interp(times, watts, start)), *zip(times[lo:hi], watts[lo:hi]),
           (end, _interp(times, watts, end))]
    energy = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:]))
    return EnergyResult(energy_j=energy, power_w_avg=energy / (end - start), n_samples=n_in,
                        window_s=end - start)


def counter_delta(before: int, after: int, max_range: int | None) -> int:
    """Counts between two readings of one counter, allowing one wrap at `max_range`.

    RAPL `energy_uj` restarts from 0 after `max_energy_range_uj`: 262143000000 then 1000000 with range
    262143328850 is 1328850 µJ (power.md F5).
    """
    if after >= before:
        return after - before
    if max_range is None:
        raise EnergyError(f"energy counter went backwards ({before} -> {after}) and its range is unknown "
                          f"(unreadable max_energy_range_uj, or a driver reload)")
    return after + max_range - before


def unwrap_counter(values: Sequence[int], max_range: int | None) -> list[int]:
    """Cumulative counts since the first reading, counting every wrap between consecutive readings."""
    out = [0]
    for before, after in zip(values, values[1:]):
        out.append(out[-1] + counter_delta(before, after, max_range))
    return out


def counter_energy(samples: Sequence[tuple[float, Sequence[int]]], start: float, end: float, *,
                   unit_j: float, ranges: Sequence[int | None], min_samples: int = 2) -> EnergyResult:
    """Energy (J) over [start, end] from (t, counts per channel) readings, summed over channels."""
    times = [t for t, _ in samples]
    n_in = _check_window(times, start, end, min_samples)
    if any(len(counts) != len(ranges) for _, counts in samples):
        raise ValueError(f"every reading must hold {len(ranges)} channels")
    total = [0] * len(samples)
    for ch, max_range in enumerate(ranges):
        for i, c in enumerate(unwrap_counter([counts[ch] for _, counts in samples], max_range)):
            total[i] += c
    cumulative_j = [c * unit_j for c in total]
    energy = _interp(times, cumulative_j, end) - _interp(times, cumulative_j, start)
    if energy <= 0:
        # NVML's mJ counter can read equal values across a short window (Zeus): that is "below the counter's
        # resolution", not zero joules.
        raise EnergyError(f"the energy counter did not advance inside the {end - start:.3f} s window "
                          f"(below counter resolution); lengthen the window")
    return EnergyResult(energy_j=energy, power_w_avg=energy / (end - start), n_samples=n_in,
                        window_s=end - start)
