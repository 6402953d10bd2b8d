"""Power sensor readers: `make_sampler` turns an inventory `power:` mapping into a Sampler.

Every reader takes a `root` path prefix for the paths it reads (default "/"), so tests replay recorded
sysfs trees. A configured sensor that reads nothing raises `DeviceError` with the reason; it never returns 0.
Imports here are standard library, numpy or psutil only: this package runs on the devices.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
from typing import Any, Callable, Mapping

from workloads.errors import ConfigError

from . import command, estimate, ina219, ina260, jetson_ina3221, nvml, rapl, tegrastats
from .base import CounterSampler, NoneSampler, PowerSampler, Sampler, check_keys, get_opt, under
from .energy import EnergyError, EnergyResult, counter_energy, integrate_power, min_window_s
from .sampling import BackgroundSampler, measure_idle

__all__ = ["SENSORS", "BackgroundSampler", "CounterSampler", "EnergyError", "EnergyResult", "NoneSampler",
           "PowerSampler", "Sampler", "available_sensors", "counter_energy", "integrate_power",
           "make_sampler", "measure_idle", "min_window_s"]


def _none(config: Mapping[str, Any], root: str) -> NoneSampler:
    check_keys(config, set(), "none")
    return NoneSampler()


SENSORS: dict[str, Callable[[Mapping[str, Any], str], Sampler]] = {
    "jetson-ina3221": jetson_ina3221.from_config,
    "tegrastats": tegrastats.from_config,
    "rapl": rapl.from_config,
    "nvml": nvml.from_config,
    "ina219": ina219.from_config,
    "ina260": ina260.from_config,
    "command": command.from_config,
    "estimate": estimate.from_config,
    "none": _none,
}


_MODULES = {"jetson-ina3221": jetson_ina3221, "tegrastats": tegrastats, "rapl": rapl, "nvml": nvml,
            "ina219": ina219, "ina260": ina260, "command": command, "estimate": estimate}


def validate_config(config: Any) -> None:
    """Check an inventory `power:` mapping without touching any sensor: the sensor name, unknown keys and
    required keys. ConfigError names the key. (Values are checked when the sampler is made, on the device.)"""
    if not isinstance(config, Mapping):
        raise ConfigError(f"must be a mapping such as {{sensor: rapl}}, got {config!r}", key="power")
    sensor = config.get("sensor")
    if sensor not in SENSORS:
        raise ConfigError(f"unknown power sensor {sensor!r}; known: {', '.join(SENSORS)}", key="sensor")
    module = _MODULES.get(sensor)
    check_keys(config, set(module.CONFIG_KEYS) if module else set(), sensor)
    for key in getattr(module, "REQUIRED_KEYS", ()):
        if key not in config:
            raise ConfigError(f"power sensor '{sensor}' needs this key", key=key)


def make_sampler(config: Mapping[str, Any], root: str = "/") -> Sampler:
    """The sampler an inventory `power:` mapping describes; a `root:` key in it overrides `root`."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"must be a mapping such as {{sensor: rapl}}, got {config!r}", key="power")
    sensor = config.get("sensor")
    if sensor not in SENSORS:
        raise ConfigError(f"unknown power sensor {sensor!r}; known: {', '.join(SENSORS)}", key="sensor")
    root = get_opt(config, "root", str, root)
    return SENSORS[sensor](config, root)


def available_sensors(root: str = "/") -> list[str]:
    """Sensors whose files or tools exist here (a cheap presence check; `make_sampler` does the reading)."""
    found = []
    if any(os.path.isdir(under(root, f"/sys/bus/i2c/drivers/{d}")) for d in ("ina3221", "ina3221x")):
        found.append("jetson-ina3221")
    if root == "/" and shutil.which("tegrastats"):
        found.append("tegrastats")
    if any(p.startswith("intel-rapl:") for p in _listdir(under(root, "/sys/class/powercap"))):
        found.append("rapl")
    if root == "/" and ctypes.util.find_library("nvidia-ml"):
        found.append("nvml")
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
