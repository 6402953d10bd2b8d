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
import threading
from pathlib import Path
from typing import Any

# ISA features that decide int8 / fp16 / bf16 fast paths (x86 and Arm names as /proc/cpuinfo spells them).
RELEVANT_ISA = (
    "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "avx_vnni_int8",
    "amx_int8", "amx_bf16", "amx_tile",
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2", "svei8mm",
    "atomics",  # ARMv8.1 LSE: builds for newer cores use it (a Cortex-A72 lacks it)
)
INT8_DOT_ISA = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
ARM_ARCHES = ("aarch64", "arm64")

# Linux arm64 hardware capabilities (arch/arm64/include/uapi/asm/hwcap.h), bit by bit, named as the kernel
# names them in /proc/cpuinfo. AT_HWCAP and AT_HWCAP2 are what the kernel tells a process its CPU can do.
HWCAP_NAMES = (
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid",
    "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm",
    "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg",
)
HWCAP2_NAMES = (
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint", "svei8mm",
    "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte", "ecv", "afp", "rpres", "mte3",
    "sme", "smei16i64", "smef64f64", "smei8i32", "smef16f32", "smeb16f32", "smef32f32", "smefa64",
)
AT_PLATFORM, AT_HWCAP, AT_HWCAP2 = 15, 16, 26

STABLE_FIELDS = ("arch", "cpu_model", "board", "cores", "isa", "mem_total_mb", "os", "kernel",
                 "python_version", "torch", "onnxruntime", "numpy", "cuda_device")


def hwcap_features(hwcap: int, hwcap2: int = 0) -> list[str]:
    """The feature names of AT_HWCAP / AT_HWCAP2 bits, in the kernel's order."""
    return ([name for bit, name in enumerate(HWCAP_NAMES) if hwcap >> bit & 1]
            + [name for bit, name in enumerate(HWCAP2_NAMES) if hwcap2 >> bit & 1])


def _read(path: str | Path, root: str = "/") -> str | None:
    try:
        return (Path(root) / str(path).lstrip("/")).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


# MIDR_EL1 part numbers of Arm Ltd (implementer 0x41) cores, and NVIDIA's (0x4e) in Jetsons.
ARM_PARTS = {
    (0x41, 0xD03): "Cortex-A53", (0x41, 0xD04): "Cortex-A35", (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57", (0x41, 0xD08): "Cortex-A72", (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75", (0x41, 0xD0B): "Cortex-A76", (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77", (0x41, 0xD40): "Neoverse-V1", (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE", (0x41, 0xD44): "Cortex-X1", (0x41, 0xD46): "Cortex-A510",
    (0x41, 0xD47): "Cortex-A710", (0x41, 0xD48): "Cortex-X2", (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4B): "Cortex-A78C", (0x41, 0xD4F): "Neoverse-V2", (0x4E, 0x003): "NVIDIA Denver 2",
    (0x4E, 0x004): "NVIDIA Carmel",
}


def auxv(root: str = "/") -> dict[int, int]:
    """The auxiliary vector the kernel gave this process (type -> value), from /proc/self/auxv.

    64-bit little-endian pairs (every arm64 and x86-64 Linux). An emulator shows its guest's vector here.
    Where /proc cannot be read, libc's getauxval answers for the hardware capabilities. Empty when neither
    works.
    """
    import struct

    try:
        data = (Path(root) / "proc/self/auxv").read_bytes()
    except OSError:
        data = b""
    if data:
        return {k: v for k, v in struct.iter_unpack("<QQ", data[: len(data) // 16 * 16]) if k}
    if root != "/":
        return {}
    getauxval = getattr(os, "getauxval", None)
    out: dict[int, int] = {}
    try:
        if getauxval is None:
            import ctypes

            libc = ctypes.CDLL(None)
            libc.getauxval.restype = ctypes.c_ulong
            libc.getauxval.argtypes = [ctypes.c_ulong]
            getauxval = libc.getauxval
        for key in (AT_HWCAP, AT_HWCAP2):
            value = int(getauxval(key))
            if value:
                out[key] = value
    except (OSError, AttributeError):
        pass
    return out


def arm_hwcaps(root: str = "/") -> dict[str, Any] | None:
    """AT_HWCAP / AT_HWCAP2 of an arm64 process and the features they name; None where the vector says nothing."""
    vector = auxv(root)
    if AT_HWCAP not in vector:
        return None
    hwcap, hwcap2 = vector[AT_HWCAP], vector.get(AT_HWCAP2, 0)
    return {"hwcap": f"0x{hwcap:x}", "hwcap2": f"0x{hwcap2:x}", "features": hwcap_features(hwcap, hwcap2)}


def _midr(root: str) -> int | None:
    text = _read("/sys/devices/system/cpu/cpu0/regs/identification/midr_el1", root)
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def arm_core_name(implementer: int, part: int) -> str:
    return ARM_PARTS.get((implementer, part), f"Arm CPU implementer 0x{implementer:02x} part 0x{part:03x}")


def cpuinfo(root: str = "/", arch: str | None = None) -> dict[str, Any]:
    """CPU model, ISA flags and per-core parts, the way the kernel tells them.

    x86: /proc/cpuinfo's `model name` and `flags`. Arm (`arch` aarch64, this machine's by default): the
    hardware capabilities in the auxiliary vector (AT_HWCAP/AT_HWCAP2), which a container or an emulator
    cannot swap for the host's, and the core from MIDR_EL1 (sysfs) or cpuinfo's `CPU implementer/part`;
    /proc/cpuinfo's `Features` only where the vector is unreadable (under qemu 7.2 /proc/cpuinfo is the
    x86 host's: its flags must never pass for an Arm device's).
    """
    arch = arch or platform.machine()
    is_arm = arch in ARM_ARCHES
    text = _read("/proc/cpuinfo", root) or ""
    model = board_model = None
    flags: set[str] = set()
    parts: list[str] = []
    implementers: list[str] = []
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name" and not model:
            model = value
        elif key in ("Model", "Hardware") and not board_model:
            board_model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "CPU part":
            parts.append(value)
        elif key == "CPU implementer":
            implementers.append(value)
    hw = arm_hwcaps(root) if is_arm else None
    if hw is not None:
        flags = set(hw["features"])
    if is_arm:
        names: list[str] = []
        midr = _midr(root)
        if midr is not None and not parts:
            names.append(arm_core_name(midr >> 24, (midr >> 4) & 0xFFF))
        for impl, part in zip(implementers or ["0x41"] * len(parts), parts):
            try:
                name = arm_core_name(int(impl, 16), int(part, 16))
            except ValueError:
                continue
            if name not in names:
                names.append(name)
        if names:
            model = " + ".join(names)  # big.LITTLE: every kind of core, in cpuinfo's order
        model = model or board_model
        if hw is None and "vendor_id" in text:
            flags = set()  # an x86 host's cpuinfo seen through an emulator: no Arm flags to read there
    else:
        model = model or board_model
    return {"cpu_model": model or platform.processor() or "unknown",
            "isa": sorted(f for f in flags if f in RELEVANT_ISA), "cpu_parts": parts, "hwcaps": hw}


def emulation(root: str = "/") -> dict[str, Any] | None:
    """How this process is emulated (user-mode qemu), or None when it runs on the CPU it reports.

    qemu-user shows the guest's name in /proc/self/stat but the kernel's `comm` (and status `Name:`) is
    qemu's; /proc/thread-self/exe and its maps name the qemu binary (qemu fakes only /proc/self/exe and
    /proc/self/maps). Under binfmt_misc `comm` is the guest's, the exe link still qemu's. Reads a few small
    /proc files: nothing measurable on real hardware.
    """
    evidence: list[str] = []
    comm = _read("/proc/self/comm", root)
    stat = _read("/proc/self/stat", root) or ""
    stat_name = stat[stat.find("(") + 1: stat.rfind(")")] if "(" in stat else None
    if comm and stat_name and comm != stat_name[:15] and comm.startswith("qemu-"):
        evidence.append(f"comm is {comm!r} but stat names {stat_name!r}")
    exe = None
    for link in ("/proc/thread-self/exe", f"/proc/self/task/{threading.get_native_id()}/exe"):
        try:
            exe = os.readlink(Path(root) / link.lstrip("/"))
            break
        except (OSError, ValueError):
            continue
    if exe and os.path.basename(exe).startswith("qemu-"):
        evidence.append(f"the process image is {exe}")
    if not evidence:
        return None
    emulator = os.path.basename(exe) if exe and os.path.basename(exe).startswith("qemu-") else comm
    host = _read("/proc/self/root/proc/cpuinfo", root) or ""
    host_cpu = next((ln.partition(":")[2].strip() for ln in host.splitlines() if ln.startswith("model name")), None)
    return {"emulator": emulator, "emulator_path": exe, "cpu": os.environ.get("QEMU_CPU") or None,
            "host_cpu": host_cpu, "evidence": evidence}


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


# Tiny calls of what cases lean on, each in a forked child of the probe: a build that uses an instruction the CPU
# lacks kills the child (SIGILL), not the probe, and the cases that need the op are skipped with the reason
# instead of failing one by one (each failure would also cost a fresh worker: 20 s of `import torch` under
# qemu). PyPI's aarch64 torch builds that link Arm Performance Libraries use ARMv8.1 atomics in BLAS, which a
# Pi 4's Cortex-A72 lacks. Forks of a process that has torch imported cost a few ms; onnxruntime's import
# (0.2 s on a desktop, 1.3 s under qemu) is paid once, in its own child.
CANARY_TIMEOUT_S = 30.0
# What each backend's cases need: every case builds its inputs and its float64 reference with torch.
CANARY_NEEDS = {"torch": ("torch.mm fp32", "torch.mm fp64", "torch.sdpa fp32"),
                "onnxruntime": ("torch.mm fp32", "torch.mm fp64", "onnxruntime")}


def _torch_canaries() -> dict[str, Any]:
    import torch

    def mm(dtype: Any) -> Any:
        return lambda: torch.mm(torch.ones(64, 64, dtype=dtype), torch.ones(64, 64, dtype=dtype))

    def int_mm() -> None:
        a = torch.ones(32, 32, dtype=torch.int8)
        if int(torch._int_mm(a, a)[0, 0]) != 32:
            raise ArithmeticError("torch._int_mm gave a wrong sum")

    def sdpa() -> None:
        q = torch.ones(1, 2, 64, 16)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return {"torch.mm fp32": mm(torch.float32), "torch.mm fp64": mm(torch.float64), "torch.sdpa fp32": sdpa,
            "torch._int_mm": int_mm}


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(field: int, value: int | bytes | str) -> bytes:
    """One protobuf field: a varint (wire type 0) or length-delimited bytes (wire type 2)."""
    if isinstance(value, int):
        return _pb_varint(field << 3) + _pb_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _pb_varint(field << 3 | 2) + _pb_varint(len(data)) + data


def canary_onnx_model() -> bytes:
    """A serialized ONNX model (IR 8, opset 17): i = MatMulInteger(a u8[32,32], b s8[32,32]) and
    f = MatMul(x f32[64,64], x). Written field by field: importing the onnx package to build it costs 0.7 s."""
    def value(name: str, elem: int, dims: tuple[int, ...]) -> bytes:  # ValueInfoProto
        shape = b"".join(_pb(1, _pb(1, d)) for d in dims)  # TensorShapeProto.dim.dim_value
        tensor = _pb(1, elem) + _pb(2, shape)  # TypeProto.Tensor
        return _pb(1, name) + _pb(2, _pb(1, tensor))

    def node(op: str, inputs: tuple[str, ...], output: str) -> bytes:  # NodeProto
        return b"".join(_pb(1, i) for i in inputs) + _pb(2, output) + _pb(4, op)
    uint8, int8, int32, float32 = 2, 3, 6, 1
    graph = (_pb(1, node("MatMulInteger", ("a", "b"), "i")) + _pb(1, node("MatMul", ("x", "x"), "f"))
             + _pb(2, "canary") + _pb(11, value("a", uint8, (32, 32))) + _pb(11, value("b", int8, (32, 32)))
             + _pb(11, value("x", float32, (64, 64))) + _pb(12, value("i", int32, (32, 32)))
             + _pb(12, value("f", float32, (64, 64))))
    return _pb(1, 8) + _pb(7, graph) + _pb(8, _pb(1, "") + _pb(2, 17))


def _ort_canary() -> None:
    """Import onnxruntime, run an int8 and an fp32 MatMul on its CPU provider."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(canary_onnx_model(), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"a": np.ones((32, 32), np.uint8), "b": np.ones((32, 32), np.int8),
                          "x": np.ones((64, 64), np.float32)})
    if int(out[0][0, 0]) != 32 or float(out[1][0, 0]) != 64.0:
        raise ArithmeticError("onnxruntime's MatMulInteger or MatMul gave a wrong sum")


def run_canary(fn: Any, timeout_s: float = CANARY_TIMEOUT_S) -> str:
    """Run `fn()` in a forked child: "ok", or what happened to it ("SIGILL (illegal instruction)", an error)."""
    import select
    import signal
    import time

    if not hasattr(os, "fork"):
        try:
            fn()
            return "ok"
        except Exception as exc:
            return f"error: {type(exc).__name__}: {exc}"[:300]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one thread (no OpenMP pool to inherit), the op, a word back
        os.close(read_end)
        code = 0
        try:
            import faulthandler

            faulthandler.disable()  # a dying op is the expected answer here, not a crash to dump
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)
            fn()
        except BaseException as exc:  # anything it raises is the answer
            os.write(write_end, f"error: {type(exc).__name__}: {exc}"[:300].encode())
            code = 3
        os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout_s
    message = b""
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return f"hung: no answer within {timeout_s:g} s (killed)"
            if select.select([read_end], [], [], 0.005)[0]:
                message += os.read(read_end, 4096)
        while select.select([read_end], [], [], 0)[0]:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            message += chunk
    finally:
        os.close(read_end)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        what = {signal.SIGILL: "illegal instruction: the build uses an instruction this CPU lacks",
                signal.SIGBUS: "bus error", signal.SIGSEGV: "segmentation fault"}.get(sig, "killed")
        return f"{name} ({what})"
    if os.WEXITSTATUS(status) != 0:
        return message.decode(errors="replace") or f"exit status {os.WEXITSTATUS(status)}"
    return "ok"


def backend_canary(with_onnxruntime: bool = True) -> dict[str, str]:
    """Each canary op's outcome ("ok" or what killed it) for the backends installed here."""
    out: dict[str, str] = {}
    if importlib.util.find_spec("torch") is not None:
        for name, fn in _torch_canaries().items():
            out[name] = run_canary(fn)
    if with_onnxruntime and importlib.util.find_spec("onnxruntime") is not None:
        out["onnxruntime"] = run_canary(_ort_canary)
    return out


def canary_skip_reason(case: dict[str, Any], caps: dict[str, Any]) -> str | None:
    """Why a case cannot run here because an op it needs died in the probe's canary, or None."""
    failed = caps.get("canary_failed") or {}
    for op in CANARY_NEEDS.get(case.get("backend", "torch"), CANARY_NEEDS["torch"]):
        if op in failed:
            return (f"{op} dies on this device in the probe's canary: {failed[op]}. Every case of this backend "
                    "would fail the same way; install a build for this CPU (a Cortex-A72 needs one without "
                    "ARMv8.1 atomics)")
    return None


def torch_capabilities(canary: dict[str, str] | None = None) -> dict[str, Any]:
    """Ops and accelerators torch really offers here, checked by tiny calls (in forked children), not by
    version numbers."""
    out: dict[str, Any] = {"torch_ops": {}, "cuda_device": None, "default_threads": None}
    if importlib.util.find_spec("torch") is None:
        return out
    import torch

    out["default_threads"] = torch.get_num_threads()
    if canary is None:
        canary = {name: run_canary(fn) for name, fn in _torch_canaries().items() if name == "torch._int_mm"}
    out["torch_ops"]["_int_mm"] = canary.get("torch._int_mm") == "ok"
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
    emulated = emulation(root)
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
        "hwcaps": cpu["hwcaps"],
        # Timings under an emulator say nothing about the real CPU: compare and regress keep them apart.
        "emulated": emulated is not None,
        "emulation": emulated,
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
    canary = backend_canary()
    fp["canary"] = canary
    fp.update(torch_capabilities(canary))
    if emulated is not None and fp["torch_ops"].get("compile"):
        fp["torch_ops"]["compile"] = False  # the compiler found is the host's: it builds for the host's CPU
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
    failed = {op: outcome for op, outcome in (fp.get("canary") or {}).items() if outcome != "ok"}
    return {"modules": fp.get("modules", {}), "isa": fp.get("isa", []), "torch_ops": fp.get("torch_ops", {}),
            "cuda_device": fp.get("cuda_device"), "arch": fp.get("arch"), "canary_failed": failed}


def emulation_key(fp: dict[str, Any] | None) -> dict[str, Any] | None:
    """What about an emulated device decides comparability (emulator, emulated CPU, the host's CPU that really
    ran it); None for a real device (and for fingerprints recorded before emulation was detected)."""
    if not fp or not fp.get("emulated"):
        return None
    emu = fp.get("emulation") or {}
    return {"emulator": emu.get("emulator"), "cpu": emu.get("cpu"), "host_cpu": emu.get("host_cpu")}


def stable(fp: dict[str, Any]) -> dict[str, Any]:
    """The fields that identify a device configuration (comparability key).

    An emulated device adds its emulation (a real one adds nothing, so keys stored before emulation was
    detected stay valid): emulated and real runs never share a history.
    """
    out = {k: fp.get(k) for k in STABLE_FIELDS}
    emulated = emulation_key(fp)
    if emulated is not None:
        out["emulation"] = emulated
    return out


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
