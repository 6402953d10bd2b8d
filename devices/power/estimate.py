"""A CPU-utilization power model for devices without a sensor: always labelled as an estimate.

P = idle_w + (tdp_w - idle_w) x u^3 with u the system-wide CPU utilization in [0, 1]. With the default
idle_w = 0.1 x tdp_w this is CodeCarbon's `cpu_load` model, TDP x (0.1 + 0.9 u^3) (power.md §4.4).
CodeCarbon logs which model it used but does not store it; here `is_estimate` is True and the source says
"estimate:..." so no stored number passes for a measurement.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import psutil

from workloads.errors import ConfigError

from .base import PowerSampler, check_keys, get_opt, get_req

ESTIMATE_INTERVAL_S = 0.2  # utilization comes from /proc/stat ticks (100 Hz): 0.2 s holds 20 per core


class CpuUtilization:
    """System-wide CPU busy percentage since the previous call.

    Own state rather than `psutil.cpu_percent(interval=None)`, whose module-level state any other caller in
    the process would reset.
    """

    def __init__(self) -> None:
        self.last = psutil.cpu_times()

    def __call__(self) -> float:
        now = psutil.cpu_times()
        deltas = {f: getattr(now, f) - getattr(self.last, f) for f in now._fields}
        self.last = now
        total = sum(deltas.values()) - deltas.get("guest", 0.0) - deltas.get("guest_nice", 0.0)
        idle = deltas.get("idle", 0.0) + deltas.get("iowait", 0.0)
        return 0.0 if total <= 0 else 100.0 * (total - idle) / total


def cubic_power_w(utilization: float, tdp_w: float, idle_w: float) -> float:
    """The model's power at utilization `utilization` in [0, 1]."""
    u = min(max(utilization, 0.0), 1.0)
    return idle_w + (tdp_w - idle_w) * u ** 3


class EstimateSampler(PowerSampler):
    """Modelled power from CPU utilization."""

    is_estimate = True
    update_interval_s = ESTIMATE_INTERVAL_S

    def __init__(self, tdp_w: float, idle_w: float | None = None,
                 cpu_percent: Callable[[], float] | None = None) -> None:
        self.tdp_w = tdp_w
        self.idle_w = 0.1 * tdp_w if idle_w is None else idle_w
        self.cpu_percent = cpu_percent or CpuUtilization()
        self.source = "estimate:cpu-util-cubic"

    def read_w(self) -> float:
        return cubic_power_w(self.cpu_percent() / 100, self.tdp_w, self.idle_w)

    def describe(self) -> dict[str, Any]:
        return {"sensor": "estimate", "source": self.source, "is_estimate": True,
                "model": "idle_w + (tdp_w - idle_w) * u**3", "tdp_w": self.tdp_w, "idle_w": self.idle_w}


# Keys of its inventory `power:` mapping besides `sensor` and `root`; REQUIRED_KEYS must be given.
CONFIG_KEYS = {"tdp_w", "idle_w"}
REQUIRED_KEYS: tuple[str, ...] = ("tdp_w",)


def from_config(config: Mapping[str, Any], root: str) -> EstimateSampler:
    """`{sensor: estimate, tdp_w: 6.4[, idle_w: 2.7]}`."""
    check_keys(config, CONFIG_KEYS, "estimate")
    tdp = float(get_req(config, "tdp_w", (int, float), "estimate"))
    idle = get_opt(config, "idle_w", (int, float), None)
    if tdp <= 0:
        raise ConfigError("must be > 0", key="tdp_w")
    if idle is not None and not 0 <= idle <= tdp:
        raise ConfigError("must be between 0 and tdp_w", key="idle_w")
    return EstimateSampler(tdp, None if idle is None else float(idle))
