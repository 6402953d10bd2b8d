"""NVIDIA GPU energy through NVML, called with ctypes (no pynvml on the device) (power.md §5).

`nvmlDeviceGetTotalEnergyConsumption` is a cumulative mJ counter (Volta and newer) and is preferred: it
needs no integration. Where it is NotSupported the sampler falls back to `nvmlDeviceGetPowerUsage` (mW),
which on Ampere and newer (GA100 aside) is already a 1 s average, so its update interval is taken as 1 s.
When both are NotSupported (Jetson iGPUs) that is reported as such, with the sensor to use instead.
"""

from __future__ import annotations

import ctypes
from typing import Any, Mapping, Protocol

from workloads.errors import DeviceError

from .base import CounterSampler, PowerSampler, Sampler, check_keys, check_positive_power, get_opt

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_DEVICE_ARCH_VOLTA = 5
NVML_DEVICE_ARCH_AMPERE = 7
NVML_DEVICE_ARCH_T23X = 11  # Orin
# "GPU power counters can update as slow as 10 Hz" (Zeus).
NVML_UPDATE_S = 0.1


class NvmlError(Exception):
    """An NVML call returned something other than NVML_SUCCESS."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(f"{message} (NVML error {code})")

    @property
    def not_supported(self) -> bool:
        """The GPU or driver lacks the feature (as opposed to a failure reading it)."""
        return self.code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND)


class NvmlBackend(Protocol):
    """What the sampler needs from NVML; tests inject one that replays recorded values."""

    def name(self, index: int) -> str: ...
    def architecture(self, index: int) -> int | None: ...
    def total_energy_mj(self, index: int) -> int: ...
    def power_mw(self, index: int) -> int: ...


class CtypesNvml:
    """NVML through ctypes against libnvidia-ml.so.1."""

    def __init__(self, library: str = "libnvidia-ml.so.1") -> None:
        try:
            self.lib = ctypes.CDLL(library)
        except OSError as exc:
            raise DeviceError(f"cannot load {library} (no NVIDIA driver on this device?): {exc}") from exc
        self.lib.nvmlErrorString.restype = ctypes.c_char_p
        self.lib.nvmlErrorString.argtypes = [ctypes.c_int]
        try:
            self._call("nvmlInit_v2")
        except NvmlError as exc:
            raise DeviceError(f"NVML did not initialise: {exc}") from exc
        self._handles: dict[int, ctypes.c_void_p] = {}

    def _call(self, fn: str, *args: Any) -> None:
        try:
            func = getattr(self.lib, fn)
        except AttributeError:  # a driver older than the call
            raise NvmlError(NVML_ERROR_FUNCTION_NOT_FOUND, f"{fn}: not in this driver's NVML") from None
        code = func(*args)
        if code != 0:
            raise NvmlError(code, f"{fn}: {self.lib.nvmlErrorString(code).decode(errors='replace')}")

    def _handle(self, index: int) -> ctypes.c_void_p:
        if index not in self._handles:
            handle = ctypes.c_void_p()
            self._call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(handle))
            self._handles[index] = handle
        return self._handles[index]

    def name(self, index: int) -> str:
        buf = ctypes.create_string_buffer(96)
        self._call("nvmlDeviceGetName", self._handle(index), buf, ctypes.c_uint(len(buf)))
        return buf.value.decode(errors="replace")

    def architecture(self, index: int) -> int | None:
        arch = ctypes.c_uint()
        try:
            self._call("nvmlDeviceGetArchitecture", self._handle(index), ctypes.byref(arch))
        except NvmlError:
            return None
        return arch.value

    def total_energy_mj(self, index: int) -> int:
        value = ctypes.c_ulonglong()
        self._call("nvmlDeviceGetTotalEnergyConsumption", self._handle(index), ctypes.byref(value))
        return value.value

    def power_mw(self, index: int) -> int:
        value = ctypes.c_uint()
        self._call("nvmlDeviceGetPowerUsage", self._handle(index), ctypes.byref(value))
        return value.value


class NvmlEnergySampler(CounterSampler):
    """GPU total energy counter (mJ since the driver loaded; 64-bit, does not wrap)."""

    unit_j = 1e-3
    ranges = (None,)
    update_interval_s = NVML_UPDATE_S

    def __init__(self, backend: NvmlBackend, index: int, facts: dict[str, Any]) -> None:
        self.backend, self.index, self.facts = backend, index, facts
        self.channels = (f"gpu{index}",)
        self.source = f"nvml:gpu{index}:energy"
        self.read_counters()

    def read_counters(self) -> tuple[int, ...]:
        try:
            return (self.backend.total_energy_mj(self.index),)
        except NvmlError as exc:
            raise DeviceError(f"NVML energy read failed on GPU {self.index}: {exc}") from exc

    def describe(self) -> dict[str, Any]:
        return {"sensor": "nvml", "source": self.source, "unit": "mJ", "scope": "GPU board",
                "energy_mj": self.read_counters()[0], **self.facts}


class NvmlPowerSampler(PowerSampler):
    """GPU power draw in mW, for GPUs without the energy counter."""

    def __init__(self, backend: NvmlBackend, index: int, facts: dict[str, Any]) -> None:
        self.backend, self.index, self.facts = backend, index, facts
        self.source = f"nvml:gpu{index}:power"
        arch = facts.get("architecture")
        # On Ampere and newer the value is already a 1 s moving average: a window needs 1 s per fresh value.
        averaged = arch is not None and arch >= NVML_DEVICE_ARCH_AMPERE
        self.update_interval_s = 1.0 if averaged else NVML_UPDATE_S
        check_positive_power(self.source, self.read_w())

    def read_w(self) -> float:
        try:
            return self.backend.power_mw(self.index) / 1000
        except NvmlError as exc:
            raise DeviceError(f"NVML power read failed on GPU {self.index}: {exc}") from exc

    def describe(self) -> dict[str, Any]:
        return {"sensor": "nvml", "source": self.source, "unit": "mW", "scope": "GPU board",
                "power_mw": self.read_w() * 1000, **self.facts}


def open_nvml(index: int = 0, backend: NvmlBackend | None = None,
              library: str = "libnvidia-ml.so.1") -> Sampler:
    """The energy counter of GPU `index` where supported, else its power; DeviceError if neither is."""
    nvml = backend if backend is not None else CtypesNvml(library)
    try:
        name = nvml.name(index)
    except NvmlError as exc:
        raise DeviceError(f"NVML has no GPU {index}: {exc}") from exc
    facts: dict[str, Any] = {"gpu": name, "architecture": nvml.architecture(index)}
    try:
        nvml.total_energy_mj(index)
        return NvmlEnergySampler(nvml, index, {**facts, "field": "total_energy_consumption"})
    except NvmlError as exc:
        if not exc.not_supported:
            raise DeviceError(f"NVML energy counter of {name}: {exc}") from exc
        facts["total_energy_consumption"] = "NotSupported"
    try:
        nvml.power_mw(index)
    except NvmlError as exc:
        if exc.not_supported:
            jetson = " (a Jetson iGPU: use `power: {sensor: jetson-ina3221}`)" \
                if facts["architecture"] == NVML_DEVICE_ARCH_T23X or "orin" in name.lower() else ""
            raise DeviceError(f"NVML reports NotSupported for both total energy and power usage on "
                              f"{name}{jetson}") from exc
        raise DeviceError(f"NVML power usage of {name}: {exc}") from exc
    return NvmlPowerSampler(nvml, index, {**facts, "field": "power_usage"})


# Keys of its inventory `power:` mapping besides `sensor` and `root`; REQUIRED_KEYS must be given.
CONFIG_KEYS = {"index", "library"}
REQUIRED_KEYS: tuple[str, ...] = ()


def from_config(config: Mapping[str, Any], root: str) -> Sampler:
    """`{sensor: nvml[, index: 0][, library: libnvidia-ml.so.1]}`."""
    check_keys(config, CONFIG_KEYS, "nvml")
    return open_nvml(get_opt(config, "index", int, 0), library=get_opt(config, "library", str,
                                                                        "libnvidia-ml.so.1"))
