"""RAPL powercap readers on recorded Intel and AMD trees: zones, units, wraps and root-only counters."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from devices.power import make_sampler
from devices.power.energy import counter_energy
from devices.power.rapl import RaplSampler
from workloads.errors import ConfigError, DeviceError

FIX = Path(__file__).parent / "fixtures" / "power"
PKG = "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0"


def copy_tree(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIX / name, dest, symlinks=True)
    return dest


def test_intel_package_and_dram_are_read_in_microjoules_and_psys_core_uncore_are_not_added() -> None:
    s = RaplSampler(str(FIX / "rapl_intel"))
    assert s.source == "rapl:package-0+package-0/dram"
    assert s.kind == "counter" and s.unit_j == 1e-6
    assert s.read_counters() == (65997277274, 4210375620)
    assert s.ranges == (262143328850, 65712999613)
    skipped = " ".join(s.describe()["skipped"])
    assert "psys" in skipped and "core" in skipped and "uncore" in skipped


def test_zone_seen_through_class_symlink_and_devices_path_is_counted_once() -> None:
    s = RaplSampler(str(FIX / "rapl_intel"), include_dram=False)
    assert s.channels == ("package-0",)
    assert make_sampler({"sensor": "rapl", "include_dram": False}, root=str(FIX / "rapl_intel")).source \
        == "rapl:package-0"


def test_amd_zones_are_named_intel_rapl_and_both_packages_are_summed() -> None:
    s = RaplSampler(str(FIX / "rapl_amd"))
    assert s.source == "rapl:package-0+package-1"
    assert s.ranges == (65532610987, 65532610987)
    assert s.read_counters() == (12018843306, 11210011872)


def test_counter_wrap_inside_the_window_on_a_recorded_tree(tmp_path: Path) -> None:
    root = copy_tree("rapl_intel", tmp_path)
    s = RaplSampler(str(root), include_dram=False)
    energy = root / PKG / "energy_uj"
    samples = []
    for t, value in ((0.0, 262141671150), (1.0, 262143000000), (2.0, 1000000), (3.0, 2328850)):
        energy.write_text(f"{value}\n")
        samples.append((t, s.read_counters()))
    r = counter_energy(samples, 0.5, 2.5, unit_j=s.unit_j, ranges=s.ranges)
    assert r.energy_j == pytest.approx(2 * 1.32885)  # 1 328 850 µJ per second across the wrap
    assert r.power_w_avg == pytest.approx(1.32885)


def test_root_only_counter_names_the_cve_the_kernel_and_the_fix() -> None:
    def read_file(path: str) -> str:
        if path.endswith("energy_uj"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return Path(path).read_text()

    with pytest.raises(DeviceError) as err:
        RaplSampler(str(FIX / "rapl_intel"), read_file=read_file)
    message = str(err.value)
    assert "root-only" in message and "5.10" in message and "CVE-2020-8694" in message
    assert "6.8.0-45-generic" in message and "chmod" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file; the injected path covers root")
def test_mode_000_counter_is_reported_as_permission_not_zero(tmp_path: Path) -> None:
    root = copy_tree("rapl_intel", tmp_path)
    (root / PKG / "energy_uj").chmod(0)
    with pytest.raises(DeviceError, match="root-only"):
        RaplSampler(str(root))


def test_unreadable_range_leaves_wrap_unknown_rather_than_guessed(tmp_path: Path) -> None:
    root = copy_tree("rapl_amd", tmp_path)
    (root / PKG / "max_energy_range_uj").unlink()
    s = RaplSampler(str(root))
    assert s.ranges == (None, 65532610987)


def test_machine_without_powercap_fails_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no RAPL package zones"):
        RaplSampler(str(tmp_path))


def test_wrong_type_for_include_dram_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        make_sampler({"sensor": "rapl", "include_dram": "yes"}, root=str(FIX / "rapl_intel"))
    assert err.value.key == "include_dram"
