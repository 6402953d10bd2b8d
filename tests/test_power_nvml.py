"""NVML through an injected backend replaying recorded values; the ctypes backend on a real GPU if present."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from devices.power.energy import counter_energy
from devices.power.nvml import (NVML_ERROR_NO_PERMISSION, NVML_ERROR_NOT_SUPPORTED, CtypesNvml, NvmlError,
                                open_nvml)
from workloads.errors import DeviceError


class FakeNvml:
    """Replays recorded NVML values; `None` for a field means NotSupported."""

    def __init__(self, name: str, arch: int | None, energy_mj: list[int] | None, power_mw: int | None,
                 energy_error: int = NVML_ERROR_NOT_SUPPORTED) -> None:
        self._name, self.arch, self.energy, self.power = name, arch, energy_mj, power_mw
        self.energy_error = energy_error

    def name(self, index: int) -> str:
        if index != 0:
            raise NvmlError(2, "Invalid Argument")
        return self._name

    def architecture(self, index: int) -> int | None:
        return self.arch

    def total_energy_mj(self, index: int) -> int:
        if self.energy is None:
            raise NvmlError(self.energy_error, "Not Supported")
        return self.energy.pop(0) if len(self.energy) > 1 else self.energy[0]

    def power_mw(self, index: int) -> int:
        if self.power is None:
            raise NvmlError(NVML_ERROR_NOT_SUPPORTED, "Not Supported")
        return self.power


def test_volta_and_newer_use_the_millijoule_energy_counter() -> None:
    fake = FakeNvml("NVIDIA A100-SXM4-40GB", 7, [123456789, 123456789, 123456789, 123460289], 68123)
    s = open_nvml(0, backend=fake)
    assert s.kind == "counter" and s.source == "nvml:gpu0:energy" and s.unit_j == 1e-3
    assert s.read_counters() == (123456789,)
    later = s.read_counters()
    r = counter_energy([(0.0, (123456789,)), (2.0, later)], 0.0, 2.0, unit_j=s.unit_j, ranges=s.ranges)
    assert r.energy_j == pytest.approx(3.5) and r.power_w_avg == pytest.approx(1.75)


def test_gpu_without_energy_counter_falls_back_to_milliwatt_power_and_says_so() -> None:
    s = open_nvml(0, backend=FakeNvml("Tesla P100-PCIE-16GB", 4, None, 68123))
    assert s.kind == "power" and s.source == "nvml:gpu0:power"
    assert s.read_w() == pytest.approx(68.123)
    d = s.describe()
    assert d["total_energy_consumption"] == "NotSupported" and d["power_mw"] == pytest.approx(68123)
    assert s.update_interval_s == pytest.approx(0.1)


def test_ampere_power_is_a_one_second_average_so_it_updates_once_a_second() -> None:
    s = open_nvml(0, backend=FakeNvml("NVIDIA GeForce RTX 3080", 7, None, 250000))
    assert s.update_interval_s == 1.0


def test_jetson_notsupported_is_reported_with_the_sensor_to_use() -> None:
    with pytest.raises(DeviceError, match="NotSupported for both.*jetson-ina3221"):
        open_nvml(0, backend=FakeNvml("Orin (nvgpu)", 11, None, None))


def test_permission_error_on_the_counter_is_not_hidden_behind_a_fallback() -> None:
    fake = FakeNvml("NVIDIA H100", 9, None, 70000, energy_error=NVML_ERROR_NO_PERMISSION)
    with pytest.raises(DeviceError, match="NVML error 4"):
        open_nvml(0, backend=fake)


def test_missing_gpu_index_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="no GPU 1"):
        open_nvml(1, backend=FakeNvml("NVIDIA H100", 9, [1, 2], 70000))


def test_missing_library_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="cannot load"):
        CtypesNvml("libnvidia-ml-does-not-exist.so.1")


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is None, reason="needs an NVIDIA driver")
def test_ctypes_backend_reads_a_real_gpu() -> None:
    try:
        s = open_nvml(0)
    except DeviceError as exc:
        pytest.skip(f"NVML present but no usable GPU: {exc}")
    d = s.describe()
    assert d["gpu"]
    if s.kind == "counter":
        assert d["energy_mj"] > 0
    else:
        assert d["power_mw"] > 0


class FakeLib:
    """Stands in for libnvidia-ml.so.1: fills the ctypes out-parameters the way the C library does."""

    def __init__(self, energy_code: int = 0, has_energy: bool = True) -> None:
        def ret(code: int = 0, **attrs: object):  # a function object, so restype/argtypes can be set on it
            def fn(*args: object) -> int:
                for index, value in attrs.items():
                    target = args[int(index[1:])]
                    if isinstance(target, ctypes.Array):
                        target.value = value
                    else:
                        target._obj.value = value  # type: ignore[attr-defined]  # byref() keeps the object
                return code
            return fn

        self.nvmlErrorString = lambda code: {3: b"Not Supported"}.get(code, b"Unknown Error")
        self.nvmlInit_v2 = ret()
        self.nvmlDeviceGetHandleByIndex_v2 = ret(a1=0x1234)
        self.nvmlDeviceGetName = ret(a1=b"NVIDIA H100 80GB HBM3")
        self.nvmlDeviceGetArchitecture = ret(a1=9)
        if has_energy:
            self.nvmlDeviceGetTotalEnergyConsumption = ret(energy_code, a1=123456789)
        self.nvmlDeviceGetPowerUsage = ret(a1=68123)


def test_ctypes_backend_passes_out_parameters_and_reads_mj(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLib())
    s = open_nvml(0)
    assert s.source == "nvml:gpu0:energy"
    d = s.describe()
    assert d["energy_mj"] == 123456789 and d["gpu"] == "NVIDIA H100 80GB HBM3" and d["architecture"] == 9


@pytest.mark.parametrize("lib", [FakeLib(energy_code=NVML_ERROR_NOT_SUPPORTED), FakeLib(has_energy=False)])
def test_ctypes_backend_maps_notsupported_and_missing_calls_to_the_power_fallback(
        monkeypatch: pytest.MonkeyPatch, lib: FakeLib) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda name: lib)
    s = open_nvml(0)
    assert s.source == "nvml:gpu0:power" and s.read_w() == pytest.approx(68.123)  # type: ignore[attr-defined]
