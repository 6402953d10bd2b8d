"""The common shape of every power sensor reader, plus the small helpers they share.

A sampler is one of three kinds:
- "power": `read_w()` returns the instantaneous power in watts (INA3221, tegrastats, INA219/260, command,
  estimate, NVML power);
- "counter": `read_counters()` returns raw cumulative energy counts per channel (RAPL in µJ, NVML in mJ); the
  pure core in `energy.py` unwraps and differences them;
- "none": there is no sensor, so energy stays empty (never zero).

Readers touch the device only through a `root` path prefix (sysfs trees in tests) and injectable callables
(file reader, process runner, I2C bus, NVML backend), so every one of them replays recorded data in tests.
This module imports only the standard library: it runs on the device.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping

from workloads.errors import ConfigError, DeviceError

# The background thread never polls faster than this: a 50 Hz Python loop is cheap even on a Pi 4, while a
# 1 kHz loop (RAPL's hardware rate) would steal measurable CPU from the workload it measures.
POLL_FLOOR_S = 0.02

ReadFile = Callable[[str], str]


def read_text(path: str) -> str:
    """Read a sysfs attribute (the default `read_file` of every sysfs reader)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def under(root: str, path: str) -> str:
    """`path` (absolute, as on the device) inside the tree rooted at `root`."""
    return os.path.join(root, path.lstrip("/"))


def leading_int(text: str) -> int:
    """The integer that starts a sysfs value: legacy Jetson files carry unit suffixes ("3000 ma")."""
    return int(text.split()[0])


class Sampler(ABC):
    """One configured power sensor."""

    kind: ClassVar[str]
    #: Samplers whose `sample()` blocks until the sensor prints a fresh value (tegrastats): the background
    #: thread must not sleep between their samples.
    streaming: ClassVar[bool] = False
    source: str
    is_estimate: bool = False
    update_interval_s: float

    @property
    def poll_interval_s(self) -> float:
        """How often the background thread samples: the sensor's own rate, floored at `POLL_FLOOR_S`."""
        return max(self.update_interval_s, POLL_FLOOR_S)

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What was found (rails, zones, settings worth storing with a run) and one live reading."""

    @abstractmethod
    def sample(self) -> tuple[float, Any]:
        """One reading stamped with `time.perf_counter()` (the clock of the timed window)."""

    def close(self) -> None:
        """Release processes or buses the sampler holds."""


class PowerSampler(Sampler):
    """A sensor that reports instantaneous power."""

    kind = "power"

    @abstractmethod
    def read_w(self) -> float:
        """Instantaneous power in watts; raises DeviceError when nothing could be read."""

    def sample(self) -> tuple[float, float]:
        # Stamp the middle of the read: the value belongs to the moment the sensor was asked, and a slow read
        # (I2C, a subprocess) would otherwise skew every stamp late by its own duration.
        t0 = time.perf_counter()
        watts = self.read_w()
        t1 = time.perf_counter()
        return (t0 + t1) / 2, watts


class CounterSampler(Sampler):
    """A sensor that exposes cumulative energy counters (one per channel, summed)."""

    kind = "counter"
    unit_j: float  # joules per count
    channels: tuple[str, ...]
    ranges: tuple[int | None, ...]  # counts at which each channel wraps; None: it never wraps

    @abstractmethod
    def read_counters(self) -> tuple[int, ...]:
        """Raw counter values, one per channel, in `unit_j` units."""

    def sample(self) -> tuple[float, tuple[int, ...]]:
        t0 = time.perf_counter()
        counts = self.read_counters()
        t1 = time.perf_counter()
        return (t0 + t1) / 2, counts


class NoneSampler(Sampler):
    """`sensor: none`: the device has no power sensor; energy columns stay empty."""

    kind = "none"
    source = "none"
    update_interval_s = 0.0

    def describe(self) -> dict[str, Any]:
        return {"sensor": "none", "source": self.source, "reason": "no power sensor configured"}

    def sample(self) -> tuple[float, Any]:
        raise DeviceError("sensor 'none' has no readings; energy is not measured on this device")


def check_keys(config: Mapping[str, Any], allowed: set[str], sensor: str) -> None:
    """Raise ConfigError naming the first key that `sensor` does not understand."""
    for key in config:
        if key not in allowed | {"sensor", "root"}:
            raise ConfigError(f"unknown key for power sensor '{sensor}'; allowed: "
                              f"{', '.join(sorted(allowed | {'sensor', 'root'}))}", key=key)


def get_opt(config: Mapping[str, Any], key: str, types: type | tuple[type, ...], default: Any) -> Any:
    """`config[key]` checked against `types` (bool is never accepted as a number)."""
    if key not in config:
        return default
    value = config[key]
    numeric = types in (int, float) or (isinstance(types, tuple) and int in types)
    if not isinstance(value, types) or (numeric and isinstance(value, bool)):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise ConfigError(f"must be {names}, got {value!r}", key=key)
    return value


def get_req(config: Mapping[str, Any], key: str, types: type | tuple[type, ...], sensor: str) -> Any:
    """A required key of `sensor`'s config."""
    if key not in config:
        raise ConfigError(f"power sensor '{sensor}' needs this key", key=key)
    return get_opt(config, key, types, None)


def check_positive_power(source: str, watts: float) -> float:
    """A probe reading of a board's own supply must be > 0 W: 0 means the sensor is not measuring it."""
    if not watts > 0:
        raise DeviceError(f"power sensor {source} reads {watts} W: a running device cannot draw that, so the "
                          f"sensor is not measuring it (wiring, rail choice or permissions)")
    return watts
