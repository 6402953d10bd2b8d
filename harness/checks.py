"""`harness devices check`: probe each device and summarize what the harness needs to know."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Mapping

from devices.inventory import DeviceConfig, Inventory
from harness.controller import REPO_ROOT
from workloads.errors import DeviceError, HarnessError


def probe_local(device: DeviceConfig) -> dict[str, Any]:
    """Run the probe with the device's own python, as a run would."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([device.python or sys.executable, "-m", "devices.probe", device.workdir,
                           "--power", json.dumps(dict(device.power) if device.power else None)],
                          capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise DeviceError(f"probe failed on {device.name}: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def summarize_fingerprint(fp: Mapping[str, Any]) -> dict[str, Any]:
    clusters = fp.get("clusters") or []
    cores = f"{fp.get('cores')}"
    if len(clusters) > 1:
        cores += " (" + " + ".join(f"{len(c['cpus'])}x {c['max_khz'] // 1000 if c['max_khz'] else '?'} MHz"
                                   for c in clusters) + ")"
    return {
        "emulated": _emulated(fp),
        "arch": fp.get("arch"), "cpu": fp.get("cpu_model"), "board": fp.get("board") or "-", "cores": cores,
        "isa": " ".join(fp.get("isa") or []) or "-",
        "int8 dot product": " ".join(fp.get("int8_dot") or []) or "none (int8 runs without a fast path)",
        "memory": f"{fp.get('mem_total_mb')} MB ({fp.get('mem_available_mb')} MB free)",
        "os": f"{fp.get('os')}, kernel {fp.get('kernel')}",
        "python": f"{fp.get('python')} ({fp.get('python_version')})",
        "torch": fp.get("torch") or "not installed", "onnxruntime": fp.get("onnxruntime") or "not installed",
        "backend canary": _canary(fp.get("canary")),
        "cuda": fp.get("cuda_device") or "-", "governor": fp.get("governor") or "unknown",
        "temperature": _temperature(fp.get("thermal") or {}),
        "throttling": _throttling(fp.get("thermal") or {}),
        "disk free": f"{fp.get('disk_free_mb')} MB in {fp.get('workdir')}",
        **_power_lines(fp.get("power_report")),
    }


def _emulated(fp: Mapping[str, Any]) -> str:
    """'no', or in capitals what emulates the device: its timings must never pass for a real CPU's."""
    if not fp.get("emulated"):
        return "no"
    emu = fp.get("emulation") or {}
    cpu = f" -cpu {emu['cpu']}" if emu.get("cpu") else ""
    return (f"YES: {emu.get('emulator') or 'an emulator'}{cpu} on {emu.get('host_cpu') or 'an unknown host CPU'}. "
            "Timings are the emulator's, not a real device's; runs are kept apart from real ones")


def _canary(canary: Mapping[str, str] | None) -> str:
    if not canary:
        return "not run (no torch or onnxruntime)"
    failed = {op: outcome for op, outcome in canary.items() if outcome != "ok"}
    if not failed:
        return f"{len(canary)} ops ok"
    return "; ".join(f"{op}: {outcome}" for op, outcome in failed.items()) + " (cases that need them are skipped)"


def _temperature(thermal: Mapping[str, Any]) -> str:
    temp = thermal.get("temperature") or {}
    if temp.get("max_c") is None:
        return f"unknown ({temp.get('reason') or thermal.get('error') or 'no sensor'})"
    return f"{temp['max_c']:.1f} C (hottest sensor)"


def _throttling(thermal: Mapping[str, Any]) -> str:
    thr = thermal.get("throttling") or {}
    if thr.get("source") is None:
        return f"unknown ({thr.get('reason') or 'no source'})"
    flags = [k for k, v in thr.items() if v is True]
    return f"{thr['source']}: {', '.join(flags) or 'none'}"


def _power_lines(report: Mapping[str, Any] | None) -> dict[str, Any]:
    if not report:
        return {}
    lines: dict[str, Any] = {"sensors found": ", ".join(report.get("available") or []) or "none"}
    if not report.get("configured"):
        lines["power"] = "not configured (energy columns stay empty)"
    elif "error" in report:
        lines["power"] = f"FAILED: {report['error']}"
    else:
        lines["power"] = f"{report['source']}" + (" (an estimate)" if report.get("is_estimate") else "")
        lines["power detail"] = json.dumps(report.get("describe"), default=str)
    return lines


def power_failed(summary: Mapping[str, Any]) -> bool:
    """A configured sensor that reads nothing fails the check."""
    return str(summary.get("power", "")).startswith("FAILED")


def check_devices(inventory: Inventory, configs: list[DeviceConfig]) -> dict[str, dict[str, Any] | HarnessError]:
    """Per device: a summary dict, or the error that kept it from being probed (never stops at the first)."""
    out: dict[str, dict[str, Any] | HarnessError] = {}
    for device in configs:
        try:
            if device.is_local:
                out[device.name] = summarize_fingerprint(probe_local(device))
            else:
                from harness.ssh import probe_remote

                out[device.name] = probe_remote(device, inventory)
        except HarnessError as exc:
            out[device.name] = exc
    return out
