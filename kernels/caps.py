"""What this machine can do, for kernels that choose a route (int8 engine, reduce_range) and for tests.

The harness's device probe records the same facts with every result; this is the local, import-cheap
version a kernel or a benchmark can call on the device itself.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
from typing import Any

# Flags that give a CPU a fast int8 dot product (x86 VNNI/AMX; Arm dot product and i8mm).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
_KNOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "avx512_bf16", "avx512_fp16",
                "amx_int8", "amx_bf16", "fma", "f16c", "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve")


def cpu_flags() -> tuple[str, ...]:
    """The known ISA flags this CPU reports in /proc/cpuinfo (Linux), sorted; () where unreadable."""
    found: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    found.update(value.split())
    except OSError:
        return ()
    return tuple(sorted(found.intersection(_KNOWN_FLAGS)))


@functools.lru_cache(maxsize=1)
def local_caps() -> dict[str, Any]:
    """Capabilities of this process's machine in the shape `Requires.missing` reads."""
    modules = {m: importlib.util.find_spec(m) is not None for m in ("torch", "numpy", "onnxruntime", "onnx")}
    ops: dict[str, bool] = {}
    if modules["torch"]:
        import torch

        try:
            a = torch.ones(17, 32, dtype=torch.int8)
            ops["_int_mm"] = bool(torch._int_mm(a, a.t().contiguous())[0, 0].item() == 32)
        except Exception:  # noqa: BLE001 - any failure means "not usable here"
            ops["_int_mm"] = False
    return {"isa": cpu_flags(), "modules": modules, "torch_ops": ops, "arch": platform.machine()}


def is_x86(caps: Any) -> bool:
    """True for an x86-64 device (the probe's `arch`; this process's machine when the caps do not say)."""
    return (caps.get("arch") or platform.machine()) in ("x86_64", "AMD64", "i686")


def has_int8_dot(caps: Any) -> bool:
    """True where the CPU has an int8 dot-product instruction (no VPMADDUBSW saturation, fast int GEMM)."""
    return bool(set(caps.get("isa", ())).intersection(INT8_DOT_FLAGS))
