"""The kernel registry: one small module per (variant, precision, backend, scope) family.

A kernel module decorates a builder with `@register(...)`. The builder takes the canonical case, the
prepared inputs and a `Context` and returns a `Built`: the callable the timing protocol times (it does
everything a real call does: quantizing activations, synchronizing an accelerator) plus metadata saying how
it computes and how many bytes its quantized copies take. Each kernel declares what it needs; the worker
skips, with the reason, what a device cannot run.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from workloads.errors import HarnessError, NotRegisteredError


class Unsupported(HarnessError):
    """A registered kernel cannot run this particular case (a knob it does not implement, a device it
    does not support). The case is stored as skipped with this message, never as failed."""


@dataclass(frozen=True)
class KernelKey:
    variant: str
    precision: str
    backend: str
    scope: str = "core"

    def __str__(self) -> str:
        return f"{self.variant}/{self.precision}/{self.backend}/{self.scope}"


@dataclass(frozen=True)
class Requires:
    """What a kernel needs from the device. Checked against the probe's capabilities before running."""

    modules: tuple[str, ...] = ("torch",)
    # At least one of these ISA flags (e.g. int8 fast paths); empty means none needed.
    isa_any: tuple[str, ...] = ()
    # When isa_any is unmet: True skips the case, False runs it and records that the fast path is absent.
    isa_strict: bool = False
    torch_ops: tuple[str, ...] = ()  # e.g. "_int_mm": checked by a tiny call, not by version numbers

    def missing(self, caps: Mapping[str, Any]) -> str | None:
        """The reason this kernel cannot run on a device with `caps`, or None."""
        for module in self.modules:
            if not caps.get("modules", {}).get(module):
                return f"{module} is not installed in the device's python"
        for op in self.torch_ops:
            if not caps.get("torch_ops", {}).get(op):
                return f"torch.{op} is not available in this torch build"
        if self.isa_any and self.isa_strict:
            flags = set(caps.get("isa", ()))
            if not flags.intersection(self.isa_any):
                return f"needs one of the CPU features {', '.join(self.isa_any)}; the device has none"
        return None


@dataclass
class Context:
    """Where a kernel runs: 'cpu' or 'cuda', the device's capabilities (from the probe), and the device's
    workdir (where kernels compiled on the device are cached; None: ~/.cache/attn-harness)."""

    device: str = "cpu"
    caps: Mapping[str, Any] = field(default_factory=dict)
    workdir: str | None = None


@dataclass
class Built:
    """A kernel ready to time. `fn()` returns the output (a torch tensor or numpy array)."""

    fn: Callable[[], Any]
    # How it computes, in words a user can check ("QK^T int8 x int8 -> int32 via torch._int_mm; ...").
    compute: str
    # Bytes of the tensors the kernel keeps (quantized K/V copies, packed weights), by name.
    bytes: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[Mapping[str, Any], Any, Context], Built]


@dataclass(frozen=True)
class Kernel:
    key: KernelKey
    build: Builder
    requires: Requires
    description: str


_REGISTRY: dict[KernelKey, Kernel] = {}

# Modules that register kernels; imported lazily so a device without onnxruntime can still run torch.
KERNEL_MODULES = (
    "kernels.dense_torch",
    "kernels.variants_torch",
    "kernels.ort",
)


def register(variant: str, precision: str, backend: str, scope: str = "core", *,
             requires: Requires | None = None, description: str = "") -> Callable[[Builder], Builder]:
    """Decorator: add a builder to the registry under its key."""
    key = KernelKey(variant, precision, backend, scope)

    def deco(build: Builder) -> Builder:
        if key in _REGISTRY:
            raise RuntimeError(f"kernel {key} registered twice")
        _REGISTRY[key] = Kernel(key, build, requires or Requires(), description or (build.__doc__ or "").strip())
        return build
    return deco


_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for name in KERNEL_MODULES:
        importlib.import_module(name)
    _loaded = True


def all_kernels() -> dict[KernelKey, Kernel]:
    _load_all()
    return dict(_REGISTRY)


def key_of(case: Mapping[str, Any]) -> KernelKey:
    return KernelKey(case["variant"], case["precision"], case["backend"], case.get("scope", "core"))


KEY_FIELDS = ("variant", "precision", "backend", "scope")


def nearest(key: KernelKey, limit: int = 3) -> list[KernelKey]:
    """Registered kernels closest to `key`: fewest differing fields, then the same variant, precision,
    backend (in that order of importance)."""
    _load_all()

    def distance(k: KernelKey) -> tuple[int, ...]:
        diff = tuple(int(getattr(k, f) != getattr(key, f)) for f in KEY_FIELDS)
        return (sum(diff), *diff, )

    return sorted(_REGISTRY, key=lambda k: (distance(k), str(k)))[:limit]


def unknown_values(cases: Any) -> list[tuple[str, Any, list[str]]]:
    """(key, value, values kernels know) for each variant/precision/backend/scope value of `cases` that no
    registered kernel has: such a value is an error, not a hole in a sweep."""
    _load_all()
    known = {f: sorted({getattr(k, f) for k in _REGISTRY}) for f in KEY_FIELDS}
    out = []
    seen = set()
    for case in cases:
        key = key_of(case)
        for f in KEY_FIELDS:
            value = getattr(key, f)
            if value not in known[f] and (f, value) not in seen:
                seen.add((f, value))
                out.append((f, value, known[f]))
    return out


def lookup(case: Mapping[str, Any]) -> Kernel:
    """The kernel for a case, or NotRegisteredError ("not implemented: no kernel for ...; nearest: ...")."""
    _load_all()
    key = key_of(case)
    try:
        return _REGISTRY[key]
    except KeyError:
        close = ", ".join(str(k) for k in nearest(key))
        raise NotRegisteredError(
            f"not implemented: no kernel for {key} (variant/precision/backend/scope); nearest: {close or 'none'}. "
            "`harness kernels` lists them all.") from None


def module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
