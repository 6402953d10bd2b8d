"""Background sampling aligned with the timed window, and the idle baseline.

The sampler thread stamps every reading with `time.perf_counter()`, the clock `workloads.timing.measure`
uses for `window_start`/`window_end`, so the energy of exactly that window can be cut out of the trace.
`start()` returns only after a first reading exists and `stop()` takes one more reading after it was called,
so a window opened after `start()` and closed before `stop()` is always covered at both ends.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from workloads.errors import DeviceError

from .base import CounterSampler, Sampler
from .energy import EnergyResult, counter_energy, integrate_power, min_window_s


class BackgroundSampler:
    """Reads `sampler` in a daemon thread at its own rate until `stop()`."""

    def __init__(self, sampler: Sampler, interval_s: float | None = None) -> None:
        self.sampler = sampler
        self.interval_s = sampler.poll_interval_s if interval_s is None else interval_s
        self.samples: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> BackgroundSampler:
        """Take a first reading now, then keep sampling in the background."""
        if self._thread is not None:
            raise RuntimeError("BackgroundSampler.start() called twice")
        if self.sampler.kind == "none":
            return self
        self.samples.append(self.sampler.sample())
        self._thread = threading.Thread(target=self._run, name=f"power:{self.sampler.source}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            if self.sampler.streaming:
                while not self._stop.is_set():
                    self.samples.append(self.sampler.sample())
            else:
                while not self._stop.wait(self.interval_s):
                    self.samples.append(self.sampler.sample())
            # One reading after stop() was called, so the window's end is covered.
            self.samples.append(self.sampler.sample())
        except BaseException as exc:  # re-raised in stop(), on the caller's thread
            self._error = exc

    def stop(self) -> list[tuple[float, Any]]:
        """End sampling; returns (t, watts) or (t, counts per channel) readings, oldest first."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise DeviceError(f"power sensor {self.sampler.source} failed while sampling: {self._error}") \
                from self._error
        return self.samples

    def energy(self, start: float, end: float, *, min_samples: int = 2) -> EnergyResult | None:
        """Energy of the window [start, end] (perf_counter seconds); None for `sensor: none`."""
        if self.sampler.kind == "none":
            return None
        if isinstance(self.sampler, CounterSampler):
            return counter_energy(self.samples, start, end, unit_j=self.sampler.unit_j,
                                  ranges=self.sampler.ranges, min_samples=min_samples)
        return integrate_power(self.samples, start, end, min_samples=min_samples)

    def min_window_s(self, min_samples: int = 20) -> float:
        """The shortest timed window that holds `min_samples` readings of this sensor (0 for none)."""
        if self.sampler.kind == "none":
            return 0.0
        return min_window_s(max(self.sampler.update_interval_s, self.interval_s), min_samples)

    def __enter__(self) -> BackgroundSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def measure_idle(sampler: Sampler, seconds: float, *,
                 sleep: Callable[[float], None] = time.sleep) -> float | None:
    """Mean power (W) of the idle device over `seconds`; None for `sensor: none` (never 0)."""
    if sampler.kind == "none":
        return None
    bg = BackgroundSampler(sampler).start()
    t0 = time.perf_counter()
    try:
        sleep(seconds)
        t1 = time.perf_counter()
    finally:
        bg.stop()
    result = bg.energy(t0, t1, min_samples=1)
    assert result is not None
    return result.power_w_avg
