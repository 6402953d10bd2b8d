"""x86 package (and DRAM) energy from the powercap RAPL counters (power.md §3.1, §3.2).

Zones `intel-rapl:N` named `package-N` (or `package-N-die-D`) are summed, plus their `dram` subzone where
present. `psys` contains the packages and `core`/`uncore` are inside them, so those are never added (double
counting). AMD Zen exposes the same `intel-rapl` names since kernel 5.8 (the old `amd_energy` hwmon was
removed upstream). `energy_uj` wraps at `max_energy_range_uj` (262 kJ on Intel, 65.5 kJ on AMD EPYC, which is
234 s at 280 W), and it is root-only since kernel 5.10 (CVE-2020-8694).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Mapping

from workloads.errors import DeviceError

from .base import CounterSampler, ReadFile, check_keys, get_opt, read_text, under

_ZONE = re.compile(r"^intel-rapl(-mmio)?:\d+$")
_PACKAGE = re.compile(r"^package-\d+(-die-\d+)?$")
# The counters tick about every 1 ms in hardware (stated for AMD; commonly cited for Intel).
RAPL_UPDATE_S = 0.001


def _zones(root: str) -> tuple[list[str], list[str]]:
    """Top-level MSR zones and MMIO zones, deduplicated across the two sysfs views of the same tree."""
    seen: dict[str, str] = {}
    for base in ("/sys/class/powercap", "/sys/devices/virtual/powercap/intel-rapl",
                 "/sys/devices/virtual/powercap/intel-rapl-mmio"):
        for path in sorted(glob.glob(under(root, base + "/intel-rapl*"))):
            if _ZONE.match(os.path.basename(path)):
                seen.setdefault(os.path.realpath(path), path)
    paths = sorted(seen.values(), key=os.path.basename)
    return ([p for p in paths if "-mmio:" not in os.path.basename(p)],
            [p for p in paths if "-mmio:" in os.path.basename(p)])


def permission_message(path: str, root: str, read_file: ReadFile = read_text) -> str:
    """What to tell a user whose RAPL counter is unreadable."""
    try:
        kernel = read_file(under(root, "/proc/sys/kernel/osrelease")).strip()
    except OSError:
        kernel = "unknown"
    return (f"RAPL counter {path} is not readable by this user (kernel {kernel}): since Linux 5.10 "
            f"energy_uj is root-only (CVE-2020-8694). Run as root, or `sudo chmod -R a+r "
            f"/sys/class/powercap/*` (lost at reboot; /etc/sysfs.conf makes it stick), or configure "
            f"`power: {{sensor: estimate, tdp_w: ...}}`")


class RaplSampler(CounterSampler):
    """Sum of the package (and DRAM) energy counters, in µJ."""

    unit_j = 1e-6

    def __init__(self, root: str = "/", include_dram: bool = True, read_file: ReadFile = read_text) -> None:
        self.root, self.read_file = root, read_file
        msr, mmio = _zones(root)
        # MMIO zones duplicate the MSR package zone on newer Intel; use them only when MSR ones are missing.
        tops = msr or mmio
        self.skipped: list[str] = []
        self.zones: list[tuple[str, str]] = []  # (label, directory)
        for zone in tops:
            name = self._read(os.path.join(zone, "name")).strip()
            if not _PACKAGE.match(name):
                self.skipped.append(f"{os.path.basename(zone)}: {name} (contains or overlaps the packages)")
                continue
            self.zones.append((name, zone))
            for sub in sorted(glob.glob(zone + "/" + os.path.basename(zone) + ":*")):
                sub_name = self._read(os.path.join(sub, "name")).strip()
                if sub_name == "dram" and include_dram:
                    self.zones.append((f"{name}/dram", sub))
                else:
                    self.skipped.append(f"{os.path.basename(sub)}: {sub_name} (inside {name})")
        if not self.zones:
            raise DeviceError(f"no RAPL package zones under {under(root, '/sys/class/powercap')}: not x86, "
                              f"a VM or container without powercap, or a new AMD part without powercap zones")
        self.channels = tuple(label for label, _ in self.zones)
        self.ranges = tuple(self._range(zone) for _, zone in self.zones)
        self.source = "rapl:" + "+".join(self.channels)
        self.update_interval_s = RAPL_UPDATE_S
        self.mmio_present = bool(mmio)
        self.read_counters()  # fails now, with the reason, if the counters are root-only

    def _read(self, path: str) -> str:
        try:
            return self.read_file(path)
        except PermissionError as exc:
            raise DeviceError(permission_message(path, self.root, self.read_file)) from exc
        except OSError as exc:
            raise DeviceError(f"cannot read RAPL file {path}: {exc}") from exc

    def _range(self, zone: str) -> int | None:
        # An unknown range only matters if the counter wraps in a window, and then energy.py says so.
        try:
            return int(self.read_file(os.path.join(zone, "max_energy_range_uj")))
        except (OSError, ValueError):
            return None

    def read_counters(self) -> tuple[int, ...]:
        return tuple(int(self._read(os.path.join(zone, "energy_uj"))) for _, zone in self.zones)

    def describe(self) -> dict[str, Any]:
        return {"sensor": "rapl", "source": self.source, "unit": "uJ", "scope": "CPU package"
                + (" + DRAM" if any(c.endswith("/dram") for c in self.channels) else ""),
                "zones": {label: {"path": zone, "max_energy_range_uj": rng, "energy_uj": value} for
                          (label, zone), rng, value in zip(self.zones, self.ranges, self.read_counters())},
                "skipped": self.skipped, "intel_rapl_mmio_present": self.mmio_present}


# Keys of its inventory `power:` mapping besides `sensor` and `root`; REQUIRED_KEYS must be given.
CONFIG_KEYS = {"include_dram"}
REQUIRED_KEYS: tuple[str, ...] = ()


def from_config(config: Mapping[str, Any], root: str) -> RaplSampler:
    """`{sensor: rapl[, include_dram: true]}`."""
    check_keys(config, CONFIG_KEYS, "rapl")
    return RaplSampler(root, include_dram=get_opt(config, "include_dram", bool, True))
