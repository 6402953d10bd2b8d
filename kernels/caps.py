"""What this machine can do, for kernels that choose a route (int8 engine, reduce_range) and for tests.

The harness's device probe records the same facts with every result; this is the local, import-cheap
version a kernel or a benchmark can call on the device itself.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
from typing import Any

from devices.probe import INT8_DOT_ISA as INT8_DOT_FLAGS
from devices.probe import cpuinfo, torch_capabilities


@functools.lru_cache(maxsize=1)
def local_caps() -> dict[str, Any]:
    """Capabilities of this process's machine in the shape `Requires.missing` reads (the probe's facts)."""
    modules = {m: importlib.util.find_spec(m) is not None for m in ("torch", "numpy", "onnxruntime", "onnx")}
    torch_caps = torch_capabilities()
    return {"isa": cpuinfo()["isa"], "modules": modules, "torch_ops": torch_caps["torch_ops"],
            "cuda_device": torch_caps["cuda_device"], "arch": platform.machine()}


def is_x86(caps: Any) -> bool:
    """True for an x86-64 device (the probe's `arch`; this process's machine when the caps do not say)."""
    return (caps.get("arch") or platform.machine()) in ("x86_64", "AMD64", "i686")


def has_int8_dot(caps: Any) -> bool:
    """True where the CPU has an int8 dot-product instruction (no VPMADDUBSW saturation, fast int GEMM)."""
    return bool(set(caps.get("isa", ())).intersection(INT8_DOT_FLAGS))
