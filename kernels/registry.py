"""The kernel registry: one small module per (variant, precision, backend, scope) family.

A kernel module decorates a builder with `@register(...)`. The builder takes the canonical case, the
prepared inputs and a `Context` and returns a `Built`: the callable the timing protocol times (it does
everything a real call does: quantizing activations, synchronizing an accelerator) plus metadata saying how
it computes and how many bytes its quantized copies take. Each kernel declares what it needs; the worker
skips, with the reason, what a device cannot run.

This is also the public API of plugins (users' own kernels, loaded by `kernels.plugins`), a contract kept
stable: `from kernels.registry import Built, Knob, Requires, register` (plus `Context`, `Unsupported`).
A plugin may register new variants (with `knobs`, a `check` and the `reference` its accuracy is measured
against) and new backends; it may add kernels to a bundled variant, but never replace a registered key:
that is a `PluginError` naming both registrations, and the plugin does not load.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from workloads import spec as case_spec
from workloads.errors import HarnessError, NotRegisteredError, PluginError
from workloads.spec import Knob

__all__ = ["Built", "Context", "Knob", "Requires", "Unsupported", "register", "lookup", "all_kernels"]


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
        """The reason this kernel cannot run on a device with `caps`, or None. A module the probe did not
        look for (a plugin's own) is looked up here, in the device's python."""
        probed = caps.get("modules", {})
        for module in self.modules:
            found = probed[module] if module in probed else module_available(module)
            if not found:
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


# What a plugin variant's accuracy is measured against: a registered variant's float64 reference ("dense"),
# or a function (case, inputs) -> float64 tensor or array of the output's shape.
Reference = str | Callable[[Mapping[str, Any], Any], Any]


@dataclass(frozen=True)
class Kernel:
    key: KernelKey
    build: Builder
    requires: Requires
    description: str
    # Where it was registered: "kernels/dense_torch.py line 116", or the plugin file and line.
    where: str = ""
    # The plugin that registered it (its id, kernels.plugins.PluginSpec.id); None for a bundled kernel.
    plugin: str | None = None


_REGISTRY: dict[KernelKey, Kernel] = {}
# Plugin variants' references, by variant.
_REFERENCES: dict[str, Reference] = {}


@dataclass
class PluginScope:
    """What one plugin registered while it loads, so a plugin that fails is undone as a whole."""

    plugin: str  # its id
    label: str  # its path as the user named it, for messages
    keys: list[KernelKey] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)


_scope: PluginScope | None = None


_CODE_ROOT = str(Path(__file__).resolve().parent.parent) + "/"


def _where(depth: int) -> str:
    """'file line N' of the caller `depth` frames up (the `@register` line; the harness's own files
    relative to its root)."""
    frame = sys._getframe(depth)
    return f"{frame.f_code.co_filename.removeprefix(_CODE_ROOT)} line {frame.f_lineno}"

# Modules that register kernels; imported lazily so a device without onnxruntime can still run torch.
KERNEL_MODULES = (
    "kernels.dense_torch",
    "kernels.variants_torch",
    "kernels.ort",
)


def register(variant: str, precision: str, backend: str, scope: str = "core", *,
             requires: Requires | None = None, description: str = "", reference: Reference | None = None,
             knobs: Mapping[str, Knob] | None = None,
             check: Callable[[Mapping[str, Any]], Any] | None = None) -> Callable[[Builder], Builder]:
    """Decorator: add a builder to the registry under its key (variant, precision, backend, scope).

    The builder is `build(case, inputs, ctx) -> Built`: `case` the canonical case (a mapping with every key,
    a plugin variant's knobs included), `inputs.q/k/v` float32 tensors `[B, H, L, D]` on the CPU, `ctx` a
    `Context`. For a plugin's new variant (its first registration) also give `reference` (a registered
    variant such as "dense", or a function (case, inputs) -> float64 output), and optionally `knobs`
    ({name: Knob(default, ...)}) and `check` (a function of the case raising ValueError for a bad one).
    Registering a key twice is an error naming both places."""
    key = KernelKey(variant, precision, backend, scope)
    where = _where(2)

    def deco(build: Builder) -> Builder:
        kernel = Kernel(key, build, requires or Requires(), description or (build.__doc__ or "").strip(), where,
                        _scope.plugin if _scope else None)
        if _scope is None:  # a bundled module: a clash is a bug in the harness itself
            if key in _REGISTRY:
                raise RuntimeError(f"kernel {key} registered twice ({_REGISTRY[key].where} and {where})")
            _REGISTRY[key] = kernel
            return build
        _register_plugin_kernel(_scope, kernel, reference, knobs, check)
        return build
    return deco


def _register_plugin_kernel(scope: PluginScope, kernel: Kernel, reference: Reference | None,
                            knobs: Mapping[str, Knob] | None, check: Callable[..., Any] | None) -> None:
    key, where = kernel.key, kernel.where
    if not isinstance(kernel.requires, Requires):
        raise PluginError(f"{where}: requires= takes Requires(modules=(...), ...), got "
                          f"{type(kernel.requires).__name__}")
    if key.precision not in case_spec.PRECISIONS:
        raise PluginError(f"{where}: precision {key.precision!r} is not one the harness knows "
                          f"({', '.join(case_spec.PRECISIONS)})")
    if key.scope not in case_spec.SCOPES:
        raise PluginError(f"{where}: scope {key.scope!r} is not one the harness knows "
                          f"({', '.join(case_spec.SCOPES)})")
    if key in _REGISTRY:
        other = _REGISTRY[key]
        owner = "the bundled kernel" if other.plugin is None else "the plugin kernel"
        raise PluginError(f"{where}: {key} is already registered by {owner} at {other.where}. A plugin adds "
                          "kernels; it never replaces one: give yours a variant of its own (for example "
                          f"variant 'my_{key.variant}' with reference='{key.variant}')")
    try:
        if key.variant in case_spec.known_variants():
            if (knobs or check or reference is not None) and not _same_definition(key.variant, reference, knobs, check):
                owner = "bundled" if key.variant in case_spec.VARIANTS else \
                    f"defined at {case_spec.plugin_variant(key.variant).origin}"  # type: ignore[union-attr]
                raise ValueError(f"variant {key.variant!r} is {owner}: its knobs, check and reference are "
                                 "its own; leave knobs=, check= and reference= out, or define a new variant")
        else:
            if reference is None:
                raise ValueError(f"the new variant {key.variant!r} needs reference=: the name of a registered "
                                 "variant whose float64 output it computes (such as 'dense'), or a function "
                                 "(case, inputs) -> float64 output")
            _check_reference(key.variant, reference, knobs or {})
            case_spec.define_variant(key.variant, knobs, check, origin=where)
            scope.variants.append(key.variant)
            _REFERENCES[key.variant] = reference
        if key.backend not in case_spec.known_backends():
            case_spec.define_backend(key.backend, origin=where)
            scope.backends.append(key.backend)
    except ValueError as exc:
        raise PluginError(f"{where}: {exc}") from None
    _REGISTRY[key] = kernel
    scope.keys.append(key)


def _same_definition(variant: str, reference: Reference | None, knobs: Mapping[str, Knob] | None,
                     check: Callable[..., Any] | None) -> bool:
    """Whether a later `register` of a plugin variant repeats its definition exactly (allowed: a plugin may
    give every kernel of its variant the same arguments)."""
    vdef = case_spec.plugin_variant(variant)
    return vdef is not None and _REFERENCES.get(variant) == reference and dict(vdef.knobs) == dict(knobs or {}) \
        and vdef.check == check


def _check_reference(variant: str, reference: Reference, knobs: Mapping[str, Knob]) -> None:
    if callable(reference):
        return
    if not isinstance(reference, str) or reference not in case_spec.known_variants():
        raise ValueError(f"reference={reference!r} is not a registered variant; use one of "
                         f"{', '.join(case_spec.known_variants())}, or a function (case, inputs) -> float64 output")
    needs = _reference_knobs(reference)
    missing = [k for k in needs if k not in knobs]
    if missing:
        raise ValueError(f"reference={reference!r} needs the knob(s) {', '.join(missing)}, which variant "
                         f"{variant!r} does not have; pass a function (case, inputs) -> float64 output instead "
                         "(kernels.reference has the float64 building blocks)")


def _reference_knobs(variant: str) -> list[str]:
    """The knobs a variant's reference reads (a bundled variant's own knobs, a plugin variant's knobs)."""
    vdef = case_spec.plugin_variant(variant)
    if vdef is not None:
        return list(vdef.knobs)
    probe = {"variant": variant, "precision": "fp32", "seq_len": 1 << 20}
    return [k for k, ks in case_spec.CASE_KEYS.items()
            if ks.applies is not None and ks.applies(probe) and k not in ("model_dim", "quant", "group_size")]


def reference_of(case: Mapping[str, Any]) -> tuple[Mapping[str, Any], Callable[..., Any] | None]:
    """How to compute a case's float64 reference: (the case whose bundled reference it is, None), or
    (the case, the plugin's own reference function). A plugin variant whose reference names another
    variant is followed to it, with the knobs both share."""
    seen = set()
    while case["variant"] in _REFERENCES:
        variant = case["variant"]
        if variant in seen:
            raise PluginError(f"the references of variant {variant!r} go round in a circle")
        seen.add(variant)
        ref = _REFERENCES[variant]
        if callable(ref):
            return case, ref
        shared = {k: case[k] for k in _reference_knobs(ref) if k in case}
        base = {k: v for k, v in case.items() if k in case_spec.CASE_KEYS and case_spec.CASE_KEYS[k].applies is None}
        case = case_spec.canonical_case({**base, **{k: case[k] for k in ("quant", "group_size", "model_dim")
                                                      if k in case}, **shared, "variant": ref})
    return case, None


class plugin_scope:
    """`with plugin_scope(PluginScope(...)):` registrations belong to that plugin; when the body raises,
    everything it registered is removed again."""

    def __init__(self, scope: PluginScope) -> None:
        self.scope = scope

    def __enter__(self) -> PluginScope:
        global _scope
        _load_all()  # bundled kernels first: a plugin's clash with one is found
        if _scope is not None:
            raise RuntimeError("plugins load one at a time")
        _scope = self.scope
        return self.scope

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        global _scope
        _scope = None
        if exc_type is not None:
            unregister(self.scope)


def unregister(scope: PluginScope) -> None:
    """Remove what one plugin registered (its kernels, variants, backends and references)."""
    for key in scope.keys:
        _REGISTRY.pop(key, None)
    for variant in scope.variants:
        _REFERENCES.pop(variant, None)
    case_spec.forget(scope.variants, scope.backends)


def variant_reference(variant: str) -> Reference | None:
    """What a plugin variant's accuracy is measured against (a variant name or a function); None for a
    bundled variant (its own float64 reference)."""
    return _REFERENCES.get(variant)


def origin_of(case: Mapping[str, Any]) -> str | None:
    """The id of the plugin whose kernel runs this case, or None (bundled, or no kernel)."""
    kernel = _REGISTRY.get(key_of(case))
    return kernel.plugin if kernel else None


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
