"""What a device is and what it can do, read on the device itself.

Runs on devices: standard library and psutil only at import; torch and onnxruntime are looked up, and
imported only to read their versions and check an op. `python -m devices.probe [WORKDIR]` prints the
fingerprint as JSON (what `harness devices check` and every run record).

The fingerprint separates stable facts (identity: board, CPU, ISA, memory, OS, library versions) from
volatile readings (temperature, free memory, governor): only the former decide comparability.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

# ISA features that decide int8 / fp16 / bf16 fast paths (x86 and Arm names as /proc/cpuinfo spells them).
RELEVANT_ISA = (
    "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "avx_vnni_int8",
    "amx_int8", "amx_bf16", "amx_tile",
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2",
)
INT8_DOT_ISA = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")

STABLE_FIELDS = ("arch", "cpu_model", "board", "cores", "isa", "mem_total_mb", "os", "kernel",
                 "python_version", "torch", "onnxruntime", "numpy", "cuda_device")


def _read(path: str | Path, root: str = "/") -> str | None:
    try:
        return (Path(root) / str(path).lstrip("/")).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def cpuinfo(root: str = "/") -> dict[str, Any]:
    """CPU model, ISA flags and per-core parts from /proc/cpuinfo (x86 'flags', Arm 'Features')."""
    text = _read("/proc/cpuinfo", root) or ""
    model = None
    flags: set[str] = set()
    parts: list[str] = []
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = (s.strip() for s in line.partition(":"))
        if key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "CPU part":
            parts.append(value)
    if model is None and parts:
        model = f"Arm CPU part {parts[0]}"
    return {"cpu_model": model or platform.processor() or "unknown",
            "isa": sorted(f for f in flags if f in RELEVANT_ISA), "cpu_parts": parts}


def clusters(root: str = "/") -> list[dict[str, Any]]:
    """Cores grouped by maximum frequency: more than one group means big.LITTLE."""
    groups: dict[str, list[int]] = {}
    base = Path(root) / "sys/devices/system/cpu"
    for entry in sorted(base.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        freq = _read(entry / "cpufreq/cpuinfo_max_freq") or "unknown"
        groups.setdefault(freq, []).append(int(entry.name[3:]))
    return [{"max_khz": int(f) if f.isdigit() else None, "cpus": cpus} for f, cpus in groups.items()]


def governor(root: str = "/") -> str | None:
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", root)


def cpu_sharing(root: str = "/") -> dict[str, Any]:
    """What decides whether a measurement has the CPUs to itself (volatile; pyperf records the same): the load
    average, the CPUs this process may use, the kernel's isolated CPUs (isolcpus=) and nohz_full CPUs."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    try:
        affinity: list[int] | None = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"load_avg": load, "cpu_affinity": affinity,
            "isolated_cpus": _read("/sys/devices/system/cpu/isolated", root) or None,
            "nohz_full_cpus": _read("/sys/devices/system/cpu/nohz_full", root) or None}


def os_name(root: str = "/") -> str:
    text = _read("/etc/os-release", root) or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def _module_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        from importlib.metadata import version

        return version({"onnxruntime": "onnxruntime"}.get(name, name))
    except Exception:
        # onnxruntime-gpu and NVIDIA's Jetson torch wheels have other distribution names.
        try:
            module = __import__(name)
            return str(getattr(module, "__version__", "unknown"))
        except Exception as exc:  # a broken install is a fact worth recording
            return f"broken: {type(exc).__name__}"


def torch_capabilities() -> dict[str, Any]:
    """Ops and accelerators torch really offers here, checked by tiny calls, not by version numbers."""
    out: dict[str, Any] = {"torch_ops": {}, "cuda_device": None, "default_threads": None}
    if importlib.util.find_spec("torch") is None:
        return out
    import torch

    out["default_threads"] = torch.get_num_threads()
    try:
        a = torch.ones(4, 4, dtype=torch.int8)
        out["torch_ops"]["_int_mm"] = bool(torch._int_mm(a, a)[0, 0].item() == 4)
    except Exception:
        out["torch_ops"]["_int_mm"] = False
    try:
        out["torch_ops"]["compile"] = bool(shutil.which("cc") or shutil.which("gcc"))
    except Exception:
        out["torch_ops"]["compile"] = False
    if torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
    return out


def fingerprint(workdir: str | None = None, root: str = "/") -> dict[str, Any]:
    """Everything `harness devices check` shows and every run stores for this device."""
    import psutil

    cpu = cpuinfo(root)
    mem = psutil.virtual_memory()
    fp: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "arch": platform.machine(),
        "cpu_model": cpu["cpu_model"],
        "board": _read("/proc/device-tree/model", root) or _read("/sys/class/dmi/id/product_name", root),
        "cores": os.cpu_count(),
        "clusters": clusters(root),
        "isa": cpu["isa"],
        "int8_dot": sorted(set(cpu["isa"]) & set(INT8_DOT_ISA)),
        "mem_total_mb": round(mem.total / 2**20),
        "mem_available_mb": round(mem.available / 2**20),
        "os": os_name(root),
        "kernel": platform.release(),
        "python": sys.executable,
        "python_version": platform.python_version(),
        "torch": _module_version("torch"),
        "onnxruntime": _module_version("onnxruntime"),
        "numpy": _module_version("numpy"),
        "governor": governor(root),
        **cpu_sharing(root),
        "modules": {m: importlib.util.find_spec(m) is not None
                    for m in ("torch", "onnxruntime", "numpy", "psutil", "onnx")},
    }
    fp.update(torch_capabilities())
    try:
        from devices import thermal

        fp["thermal"] = thermal.snapshot(root=root)
    except Exception as exc:  # thermal readers are optional telemetry
        fp["thermal"] = {"error": f"{type(exc).__name__}: {exc}"}
    if workdir:
        path = Path(os.path.expanduser(workdir))
        path.mkdir(parents=True, exist_ok=True)
        fp["workdir"] = str(path)
        fp["disk_free_mb"] = round(shutil.disk_usage(path).free / 2**20)
    return fp


def capabilities(fp: dict[str, Any]) -> dict[str, Any]:
    """The part of a fingerprint kernels check their requirements against."""
    return {"modules": fp.get("modules", {}), "isa": fp.get("isa", []), "torch_ops": fp.get("torch_ops", {}),
            "cuda_device": fp.get("cuda_device"), "arch": fp.get("arch")}


def stable(fp: dict[str, Any]) -> dict[str, Any]:
    """The fields that identify a device configuration (comparability key)."""
    return {k: fp.get(k) for k in STABLE_FIELDS}


def power_report(power_cfg: dict[str, Any] | None, root: str = "/") -> dict[str, Any]:
    """Sensors present, and for a configured sensor its rails and a live reading, or why it reads nothing."""
    from devices.power import available_sensors, make_sampler

    report: dict[str, Any] = {"available": available_sensors(root), "configured": power_cfg}
    if not power_cfg:
        return report
    try:
        sampler = make_sampler(power_cfg, root)
        report["describe"] = sampler.describe()
        report["source"] = sampler.source
        report["is_estimate"] = bool(sampler.is_estimate)
        sampler.close()
    except Exception as exc:  # HarnessError subclasses carry the reason a user can act on
        report["error"] = f"{type(exc).__name__}: {exc}"
    return report


def main(argv: list[str]) -> None:
    """`python -m devices.probe [WORKDIR] [--power JSON]`: the fingerprint (and power report) as JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devices.probe")
    parser.add_argument("workdir", nargs="?")
    parser.add_argument("--power", default=None, help="the inventory's power mapping as JSON")
    args = parser.parse_args(argv)
    fp = fingerprint(args.workdir)
    if args.power is not None:
        fp["power_report"] = power_report(json.loads(args.power) or None)
    print(json.dumps(fp, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
