"""NVIDIA Jetson on-module INA3221 power monitors, both driver generations (power.md §2.1-2.3).

- JetPack <= 4 (L4T 32.x): NVIDIA's IIO driver `ina3221x`, `<dev>/iio:deviceN/rail_name_K` and
  `in_powerK_input` in mW, K = 0..2. Limit files carry unit suffixes ("3000 ma"); `*_trigger_input` reads
  0 in the default triggered mode, so it is never used.
- JetPack >= 5: the mainline hwmon driver `ina3221`, `<dev>/hwmon/hwmonN/inK_label`, `inK_input` (bus mV)
  and `currK_input` (mA), K = 1..3. There is no power file: P = mV x mA / 1000 mW. `in7` is the "sum of
  shunt voltages" pseudo-channel and channels labelled NC are not connected; both are skipped.

The board total is the first input rail present in the order VIN, POM_5V_IN, VDD_IN (Nano: POM_5V_IN, not
the sum, jetson_stats#51). Modules without one (AGX Xavier, AGX Orin, whose VIN_SYS_5V0 is *not* the total,
jetson_stats#344) use the sum of all rails. Either way it is the module only, not the carrier board.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from workloads.errors import DeviceError

from .base import (PowerSampler, ReadFile, check_keys, check_positive_power, get_opt, leading_int,
                   read_text, under)

INPUT_RAILS = ("VIN", "POM_5V_IN", "VDD_IN")
_DEVICE_NAME = re.compile(r"^\d+-[0-9a-f]{4}$")  # "1-0040"; drivers dirs also hold bind, unbind, module...
# Legacy continuous mode 0x7727: 64 averages x (1.1 ms bus + 1.1 ms shunt) x 3 channels (power.md §2.1).
IIO_CONTINUOUS_S = 64 * 2.2e-3 * 3
# Legacy triggered mode runs one conversion per read, so any poll rate gets fresh values; this only bounds
# the I2C traffic the sampler causes.
IIO_TRIGGERED_S = 0.05


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel with a name."""

    name: str
    device: str  # I2C device, e.g. "1-0040"
    channel: int
    driver: str  # "hwmon" or "iio"
    folder: str  # hwmonN or iio:deviceN directory


def choose_total(names: list[str]) -> tuple[list[str], str]:
    """Which rails make the board total, and the rule that chose them (pure; used by tegrastats too)."""
    for rail in INPUT_RAILS:
        if rail in names:
            return [rail], f"{rail} is the module's input rail"
    return list(names), "no input rail (VIN/POM_5V_IN/VDD_IN): sum of all rails"


def _device_dirs(root: str, read_file: ReadFile) -> list[str]:
    """Candidate I2C device directories of INA3221 chips, deduplicated through their symlinks."""
    found: dict[str, str] = {}
    for pattern in ("/sys/bus/i2c/drivers/ina3221/*", "/sys/bus/i2c/drivers/ina3221x/*",
                    "/sys/bus/i2c/devices/*"):
        for path in sorted(glob.glob(under(root, pattern))):
            if not _DEVICE_NAME.match(os.path.basename(path)) or not os.path.isdir(path):
                continue
            if pattern.endswith("devices/*"):
                try:
                    if "ina3221" not in read_file(os.path.join(path, "name")):
                        continue
                except OSError:
                    continue
            found.setdefault(os.path.realpath(path), path)
    return sorted(found.values(), key=os.path.basename)


def _label(path: str, read_file: ReadFile, skipped: list[str]) -> str | None:
    try:
        return read_file(path).strip()
    except OSError as exc:
        skipped.append(f"{path}: unreadable label ({exc})")
        return None


def discover(root: str = "/", read_file: ReadFile = read_text) -> tuple[list[Rail], dict[str, Any]]:
    """Every named rail under `root`, and the chip settings worth storing (update interval, mode)."""
    rails: list[Rail] = []
    chips: list[dict[str, Any]] = []
    skipped: list[str] = []
    for dev_dir in _device_dirs(root, read_file):
        dev = os.path.basename(dev_dir)
        for folder in sorted(glob.glob(os.path.join(dev_dir, "hwmon", "hwmon*"))):
            chip: dict[str, Any] = {"device": dev, "driver": "hwmon", "path": folder}
            for attr in ("update_interval", "samples"):
                try:
                    chip[attr] = leading_int(read_file(os.path.join(folder, attr)))
                except (OSError, ValueError, IndexError):
                    chip[attr] = None
            chips.append(chip)
            for label_path in sorted(glob.glob(os.path.join(folder, "in*_label"))):
                k = int(re.findall(r"in(\d+)_label$", label_path)[0])
                label = _label(label_path, read_file, skipped)
                if label is None:
                    continue
                if k > 3 or label == "sum of shunt voltages":
                    skipped.append(f"{dev} in{k}: {label!r} (shunt-sum pseudo-channel)")
                elif label == "NC":
                    skipped.append(f"{dev} in{k}: NC (not connected)")
                elif os.path.exists(os.path.join(folder, f"in{k}_input")) and \
                        os.path.exists(os.path.join(folder, f"curr{k}_input")):
                    rails.append(Rail(label, dev, k, "hwmon", folder))
        # "iio_device" is the older L4T form of the directory (TX2).
        iio = glob.glob(os.path.join(dev_dir, "iio:device*")) + glob.glob(os.path.join(dev_dir, "iio_device"))
        for folder in sorted(iio):
            chip = {"device": dev, "driver": "iio", "path": folder}
            try:
                chip["running_mode"] = leading_int(read_file(os.path.join(folder, "running_mode")))
            except (OSError, ValueError, IndexError):
                chip["running_mode"] = None
            chips.append(chip)
            for name_path in sorted(glob.glob(os.path.join(folder, "rail_name_*"))):
                k = int(name_path.rsplit("_", 1)[1])
                label = _label(name_path, read_file, skipped)
                if label is None:
                    continue
                if label == "NC":
                    skipped.append(f"{dev} channel {k}: NC (not connected)")
                elif any(os.path.exists(os.path.join(folder, f)) for f in
                         (f"in_power{k}_input", f"ui_input_{k}")):
                    rails.append(Rail(label, dev, k, "iio", folder))
    return rails, {"chips": chips, "skipped": skipped}


def read_rail_mw(rail: Rail, read_file: ReadFile = read_text) -> float:
    """One rail's power in mW."""
    if rail.driver == "hwmon":
        mv = leading_int(read_file(os.path.join(rail.folder, f"in{rail.channel}_input")))
        ma = leading_int(read_file(os.path.join(rail.folder, f"curr{rail.channel}_input")))
        return mv * ma / 1000
    power = os.path.join(rail.folder, f"in_power{rail.channel}_input")
    if os.path.exists(power):
        return float(leading_int(read_file(power)))
    # Older variants without a power file: ui_input_K gives mV and mA from one conversion.
    mv, ma = (int(v) for v in read_file(os.path.join(rail.folder, f"ui_input_{rail.channel}")).split()[:2])
    return mv * ma / 1000


class JetsonIna3221Sampler(PowerSampler):
    """The board total from the Jetson's INA3221 rails (module only, not the carrier board)."""

    def __init__(self, root: str = "/", rail: str | None = None, read_file: ReadFile = read_text) -> None:
        self.root = root
        self.read_file = read_file
        self.rails, self.settings = discover(root, read_file)
        if not self.rails:
            raise DeviceError(f"no INA3221 rails under {under(root, '/sys/bus/i2c')}: not a Jetson, or its "
                              f"ina3221/ina3221x driver is not loaded")
        names = [r.name for r in self.rails]
        if rail is not None:
            if rail not in names:
                raise DeviceError(f"rail {rail!r} not found; rails present: {', '.join(names)}")
            self.total, self.rule = [rail], "chosen by the inventory's `rail:` key"
        else:
            self.total, self.rule = choose_total(names)
        self.total_rails = [r for r in self.rails if r.name in self.total]
        self.source = "jetson-ina3221:" + (self.total[0] if len(self.total) == 1
                                           else "sum(" + "+".join(self.total) + ")")
        self.update_interval_s = self._update_interval_s()
        check_positive_power(self.source, self.read_w())

    def _update_interval_s(self) -> float:
        intervals = []
        for chip in self.settings["chips"]:
            if chip["driver"] == "hwmon":
                # Unknown interval: 0 lets the poll floor decide; describe() shows it was missing.
                ms = chip.get("update_interval")
                intervals.append(ms / 1000 if ms else 0.0)
            else:
                intervals.append(IIO_CONTINUOUS_S if chip.get("running_mode") == 1 else IIO_TRIGGERED_S)
        return max(intervals)

    def _rail_mw(self, rail: Rail) -> float:
        try:
            return read_rail_mw(rail, self.read_file)
        except PermissionError as exc:
            raise DeviceError(f"cannot read {rail.name} ({exc.filename}): permission denied; some JetPack 4 "
                              f"images restrict the INA3221 files (chgrp i2c + chmod 660, or run as root)") \
                from exc
        except (OSError, ValueError, IndexError) as exc:
            raise DeviceError(f"cannot read INA3221 rail {rail.name} on {rail.device}: {exc}") from exc

    def read_w(self) -> float:
        return sum(self._rail_mw(r) for r in self.total_rails) / 1000

    def describe(self) -> dict[str, Any]:
        return {"sensor": "jetson-ina3221", "source": self.source,
                "scope": "module (carrier board not measured)",
                "rails": {r.name: {"device": r.device, "driver": r.driver, "channel": r.channel,
                                   "power_mw": self._rail_mw(r)} for r in self.rails},
                "total": self.total, "total_rule": self.rule, "update_interval_s": self.update_interval_s,
                **self.settings}


# Keys of its inventory `power:` mapping besides `sensor` and `root`; REQUIRED_KEYS must be given.
CONFIG_KEYS = {"rail"}
REQUIRED_KEYS: tuple[str, ...] = ()


def from_config(config: Mapping[str, Any], root: str) -> JetsonIna3221Sampler:
    """`{sensor: jetson-ina3221[, rail: NAME]}`."""
    check_keys(config, CONFIG_KEYS, "jetson-ina3221")
    return JetsonIna3221Sampler(root, rail=get_opt(config, "rail", str, None))
