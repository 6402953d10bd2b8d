"""Temperature, throttling and CPU governor, recorded before and after each case (power.md §6.7, §6.8).

Everything returns plain dicts. A value that cannot be read is None next to a `reason`, never 0: 0 °C or "not
throttled" would be a false statement about the device. Paths are read under a `root` prefix so tests replay
recorded trees; `vcgencmd` goes through an injectable runner. Standard library only: this runs on devices.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import time
from typing import Any, Callable

ReadFile = Callable[[str], str]
Runner = Callable[[list[str]], str]

# `vcgencmd get_throttled` bits (raspberrypi.com documentation, get_throttled). 0-3 are "now", 16-19 are
# sticky "has occurred since boot", so a case is flagged on a set now-bit or on a sticky bit that changed.
THROTTLE_BITS = {0: "under_voltage", 1: "arm_freq_capped", 2: "throttled", 3: "soft_temp_limit",
                 16: "under_voltage_occurred", 17: "arm_freq_capping_occurred", 18: "throttling_occurred",
                 19: "soft_temp_limit_occurred"}
NOW_MASK, STICKY_MASK = 0xF, 0xF0000
# Jetson zones read -256 °C when offline (tegrastats prints `CV0@-256C GPU@-256C` on Orin).
OFFLINE_C = -256.0


def read_text(path: str) -> str:
    """Read a sysfs attribute."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def run_vcgencmd(argv: list[str]) -> str:
    """The default runner: stdout of a short command, bounded in time."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-200:]}")
    return done.stdout


def _millidegrees(path: str, read_file: ReadFile) -> tuple[float | None, str | None]:
    try:
        c = int(read_file(path).split()[0]) / 1000
    except (OSError, ValueError, IndexError) as exc:
        return None, f"unreadable: {exc}"
    if c <= OFFLINE_C:
        return None, "offline (reads -256 C)"
    return c, None


def read_temperatures(root: str = "/", read_file: ReadFile = read_text) -> dict[str, Any]:
    """Every thermal zone and hwmon temperature in °C, and their maximum (`max_c`)."""
    sensors: dict[str, dict[str, Any]] = {}

    def add(key: str, entry: dict[str, Any]) -> None:
        n, unique = 2, key
        while unique in sensors:
            unique, n = f"{key}#{n}", n + 1
        sensors[unique] = entry

    zones = glob.glob(_under(root, "/sys/class/thermal/thermal_zone*"))
    for zone in sorted(zones, key=lambda p: int(re.sub(r"\D", "", os.path.basename(p)) or 0)):
        try:
            kind = read_file(os.path.join(zone, "type")).strip()
        except OSError:
            kind = os.path.basename(zone)
        c, reason = _millidegrees(os.path.join(zone, "temp"), read_file)
        entry = {"c": c, "reason": reason, "path": zone}
        if kind.upper().startswith("PMIC"):
            # Jetson PMIC zones report a fixed 100 C placeholder (tegrastats `PMIC@100C`); jtop skips them.
            entry["reason"] = "PMIC zone reports a fixed placeholder; left out of max_c"
        add(kind, entry)
    for hw in sorted(glob.glob(_under(root, "/sys/class/hwmon/hwmon*"))):
        try:
            name = read_file(os.path.join(hw, "name")).strip()
        except OSError:
            name = os.path.basename(hw)
        for inp in sorted(glob.glob(os.path.join(hw, "temp*_input"))):
            base = os.path.basename(inp)[: -len("_input")]
            try:
                label = read_file(os.path.join(hw, f"{base}_label")).strip()
            except OSError:
                label = base
            c, reason = _millidegrees(inp, read_file)
            add(f"{name}/{label}", {"c": c, "reason": reason, "path": inp})
    usable = {k: v["c"] for k, v in sensors.items() if v["c"] is not None and v["reason"] is None}
    if not usable:
        return {"sensors": sensors, "max_c": None, "max_sensor": None,
                "reason": "no readable thermal_zone or hwmon temperature under "
                          + _under(root, "/sys/class")}
    hottest = max(usable, key=lambda k: usable[k])
    return {"sensors": sensors, "max_c": usable[hottest], "max_sensor": hottest, "reason": None}


def parse_get_throttled(text: str) -> int:
    """The bitmask of `vcgencmd get_throttled` output such as `throttled=0x50000`."""
    match = re.search(r"throttled=(0x[0-9a-fA-F]+)", text)
    if match is None:
        raise ValueError(f"not get_throttled output: {text.strip()!r}")
    return int(match[1], 16)


def decode_throttled(value: int) -> dict[str, Any]:
    """Names of the set bits of a get_throttled mask, split into "now" and "since boot"."""
    return {"raw": f"0x{value:x}", "throttled_now": bool(value & NOW_MASK),
            "now": [n for b, n in THROTTLE_BITS.items() if b < 16 and value >> b & 1],
            "occurred": [n for b, n in THROTTLE_BITS.items() if b >= 16 and value >> b & 1]}


def _read_int(path: str, read_file: ReadFile) -> int | None:
    try:
        return int(read_file(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_throttling(root: str = "/", runner: Runner | None = None,
                    read_file: ReadFile = read_text) -> dict[str, Any]:
    """Throttle state: Pi `vcgencmd get_throttled`, x86 thermal_throttle counters, or None with a reason.

    The real `vcgencmd` is run only when `root` is "/" (a recorded tree comes with a recorded runner). GPU
    devfreq clocks are included where present (Jetson): there, a cur_freq below max_freq is the only sign.
    """
    out: dict[str, Any] = {"source": None, "throttled_now": None, "reason": None}
    devfreq = {}
    for dev in sorted(glob.glob(_under(root, "/sys/class/devfreq/*"))):
        devfreq[os.path.basename(dev)] = {f: _read_int(os.path.join(dev, f), read_file)
                                          for f in ("cur_freq", "max_freq")}
    if devfreq:
        out["devfreq_hz"] = devfreq
    if runner is None and root == "/":
        runner = run_vcgencmd
    if runner is not None:
        try:
            text = runner(["vcgencmd", "get_throttled"])
        except FileNotFoundError:
            pass  # not a Raspberry Pi
        except Exception as exc:  # e.g. no access to /dev/vchiq outside the video group
            return {**out, "source": "vcgencmd", "reason": f"vcgencmd get_throttled failed: {exc}"}
        else:
            try:
                return {**out, "source": "vcgencmd", **decode_throttled(parse_get_throttled(text))}
            except ValueError as exc:
                return {**out, "source": "vcgencmd", "reason": str(exc)}
    cores = glob.glob(_under(root, "/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle/core_throttle_count"))
    counts = [c for c in (_read_int(p, read_file) for p in cores) if c is not None]
    if counts:
        packages = [c for c in (_read_int(p.replace("core_throttle", "package_throttle"), read_file)
                                for p in cores) if c is not None]
        # The counters only grow, so "throttled during the case" is a change between two snapshots.
        return {**out, "source": "x86-thermal_throttle", "core_throttle_count": sum(counts),
                "package_throttle_count": max(packages) if packages else None,
                "reason": "counters since boot: compare two snapshots"}
    out["reason"] = ("no throttle flag on this platform (compare devfreq/cpufreq cur against max)" if devfreq
                     else "no vcgencmd and no x86 thermal_throttle counters")
    return out


def throttled_between(before: dict[str, Any], after: dict[str, Any]) -> bool | None:
    """Whether the device throttled between two `read_throttling` results; None when it cannot tell."""
    if before.get("source") != after.get("source") or after.get("source") is None:
        return None
    if after["source"] == "vcgencmd":
        if "raw" not in before or "raw" not in after:
            return None
        b, a = int(before["raw"], 16), int(after["raw"], 16)
        return bool((b | a) & NOW_MASK) or (b & STICKY_MASK) != (a & STICKY_MASK)
    counts = ("core_throttle_count", "package_throttle_count")
    if any(before.get(k) is None or after.get(k) is None for k in counts):
        return None
    return any(after[k] > before[k] for k in counts)


def read_governor(root: str = "/", read_file: ReadFile = read_text) -> dict[str, Any]:
    """CPU frequency governor (one value, "mixed", or None with a reason) and per-CPU frequencies in kHz."""
    per_cpu: dict[str, dict[str, Any]] = {}
    dirs = glob.glob(_under(root, "/sys/devices/system/cpu/cpu[0-9]*/cpufreq"))
    for d in sorted(dirs, key=lambda p: int(re.findall(r"cpu(\d+)/cpufreq$", p)[0])):
        cpu = os.path.basename(os.path.dirname(d))
        try:
            gov: str | None = read_file(os.path.join(d, "scaling_governor")).strip()
        except OSError:
            gov = None
        per_cpu[cpu] = {"governor": gov, **{k: _read_int(os.path.join(d, f"scaling_{k}_freq"), read_file)
                                            for k in ("cur", "min", "max")}}
    governors = {v["governor"] for v in per_cpu.values() if v["governor"] is not None}
    if not governors:
        return {"governor": None, "per_cpu": per_cpu,
                "reason": "no cpufreq scaling_governor (a VM, a container, or no cpufreq driver)"}
    return {"governor": governors.pop() if len(governors) == 1 else "mixed", "per_cpu": per_cpu,
            "reason": None}


def snapshot(root: str = "/", runner: Runner | None = None) -> dict[str, Any]:
    """Temperature, throttling and governor together: what is stored before and after each case."""
    return {"temperature": read_temperatures(root), "throttling": read_throttling(root, runner),
            "governor": read_governor(root)}


def cool_down(target_c: float, timeout_s: float, *, root: str = "/", poll_s: float = 2.0,
              sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Wait until the hottest sensor is at or below `target_c`, at most `timeout_s` (`measure.cooldown_c`)."""
    start = clock()
    while True:
        temps = read_temperatures(root)
        waited = clock() - start
        if temps["max_c"] is None:
            return {"target_c": target_c, "reached": None, "waited_s": waited, "max_c": None,
                    "reason": temps["reason"]}
        if temps["max_c"] <= target_c or waited >= timeout_s:
            reached = temps["max_c"] <= target_c
            return {"target_c": target_c, "reached": reached, "waited_s": waited, "max_c": temps["max_c"],
                    "reason": None if reached else f"still {temps['max_c']:.1f} C after {timeout_s} s"}
        sleep(poll_s)
