"""What a case is: its keys, their allowed values and defaults, and its canonical identity.

A case is identified by its canonical, defaulted keys (knobs that do not apply to its variant or precision
are dropped) and a short hash of them. Changing the defaults here changes identities: add a key with a
default that reproduces the old behaviour instead, so old rows stay comparable.

The bundled variants, backends and knobs are fixed here. Plugins (users' own kernels, `kernels.plugins`)
add variants with knobs of their own, and backends, through `define_variant` / `define_backend` (called by
`kernels.registry.register`); `clear_plugins` forgets them again. A plugin knob is never a bundled case key,
so the database columns keep one meaning; plugin knobs live in the case's canonical JSON (`params`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

VARIANTS = ("dense", "sliding_window", "block_sparse", "topk", "lowrank", "differential", "attnres")
# Benchmarks imported from pyperf or pytest-benchmark files (`harness results import`): a case that is only
# its `name`. Import-only: a matrix cannot hold it and no kernel runs it.
EXTERNAL = "external"
MAX_NAME = 500
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "mixed")
BACKENDS = ("torch", "onnxruntime")
SCOPES = ("core", "block")
QUANT_GRANULARITIES = ("per_tensor", "per_channel", "per_token", "per_block", "per_group")
INPUT_KINDS = ("normal", "k_outliers", "minilm")
QUANTIZED_PRECISIONS = ("int8", "int4", "mixed")


class CaseKeyError(ValueError):
    """A single case key is wrong; the matrix parser adds file and line."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


# Case integers are stored in INTEGER columns: PostgreSQL's is 32 bits.
MAX_CASE_INT = 2 ** 31 - 1
MAX_CASE_FLOAT = 1e9


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CaseKeyError(key, f"expected a positive integer, got {value!r}")
    if value <= 0:
        raise CaseKeyError(key, f"must be a positive integer, got {value}")
    if value > MAX_CASE_INT:
        raise CaseKeyError(key, f"{value} is too large (at most {MAX_CASE_INT})")
    return value


_positive_int.schema = {"type": "integer", "minimum": 1, "maximum": MAX_CASE_INT}  # type: ignore[attr-defined]


def _choice(allowed: tuple[str, ...] | Callable[[], tuple[str, ...]],
            bundled: tuple[str, ...] | None = None) -> Callable[[str, Any], str]:
    """A check for one of `allowed` (a tuple, or a function giving the values known now: plugins add
    variants and backends; the published schema lists the `bundled` ones)."""
    def check(key: str, value: Any) -> str:
        known = allowed() if callable(allowed) else allowed
        if not isinstance(value, str) or value not in known:
            near = suggest(value, known) if isinstance(value, str) else ""
            raise CaseKeyError(key, f"unknown value {value!r}; allowed: {', '.join(known)}{near}")
        return value
    check.schema = {"enum": list(bundled if callable(allowed) else allowed)}  # type: ignore[attr-defined]
    return check


def _positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_CASE_FLOAT:
        raise CaseKeyError(key, f"expected a positive number (at most {MAX_CASE_FLOAT:g}), got {value!r}")
    return float(value)


_positive_float.schema = {"type": "number", "exclusiveMinimum": 0,  # type: ignore[attr-defined]
                          "maximum": MAX_CASE_FLOAT}


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CaseKeyError(key, f"expected the benchmark's name (text), got {value!r}")
    if len(value) > MAX_NAME:
        raise CaseKeyError(key, f"is {len(value)} characters long; at most {MAX_NAME}")
    if not value.isprintable():
        raise CaseKeyError(key, "holds control characters")
    return value


_name.schema = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}  # type: ignore[attr-defined]


def _variant(key: str, value: Any) -> str:
    """A bundled or plugin variant, or `external` (imported benchmarks)."""
    if value == EXTERNAL:
        return value
    known = known_variants()
    if not isinstance(value, str) or value not in known:
        near = suggest(value, known) if isinstance(value, str) else ""
        raise CaseKeyError(key, f"unknown value {value!r}; allowed: {', '.join(known)} (and {EXTERNAL}, for "
                                f"imported benchmarks){near}")
    return value


_variant.schema = {"enum": list(VARIANTS)}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class KeySpec:
    """One case key: how to check it, its default, and when it applies. `hidden`: a key for the test suite
    only, left out of "allowed:" lists and of exports that do not use it."""

    check: Callable[[str, Any], Any]
    default: Any = None
    # None: applies to every case; otherwise a predicate over the (partially canonical) case.
    applies: Callable[[Mapping[str, Any]], bool] | None = None
    help: str = ""
    hidden: bool = False


def _variant_in(*variants: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda c: c.get("variant") in variants


def known_variants() -> tuple[str, ...]:
    """The bundled variants, then those plugins defined (in the order they did)."""
    return VARIANTS + tuple(_PLUGIN_VARIANTS)


def known_backends() -> tuple[str, ...]:
    return BACKENDS + tuple(_PLUGIN_BACKENDS)


CASE_KEYS: dict[str, KeySpec] = {
    "variant": KeySpec(_variant, "dense", help="attention variant"),
    "precision": KeySpec(_choice(PRECISIONS), "fp32", help="compute precision"),
    "backend": KeySpec(_choice(known_backends, BACKENDS), "torch", help="execution backend"),
    "scope": KeySpec(_choice(SCOPES), "core", help="core: the attention op; block: with projections"),
    "seq_len": KeySpec(_positive_int, 128, help="tokens"),
    "batch": KeySpec(_positive_int, 1),
    "heads": KeySpec(_positive_int, 8),
    "head_dim": KeySpec(_positive_int, 64),
    "model_dim": KeySpec(_positive_int, None, lambda c: c.get("scope") == "block",
                         help="hidden size of the block's projections (scope: block)"),
    "threads": KeySpec(_positive_int, None, help="intra-op threads; unset means the device's default"),
    "inputs": KeySpec(_choice(INPUT_KINDS), "normal", help="input distribution"),
    "window": KeySpec(_positive_int, 256, _variant_in("sliding_window")),
    "block_size": KeySpec(_positive_int, 64, _variant_in("block_sparse", "topk")),
    "density": KeySpec(_positive_float, 0.25, _variant_in("block_sparse")),
    "topk": KeySpec(_positive_int, 8, _variant_in("topk")),
    "rank": KeySpec(_positive_int, 128, _variant_in("lowrank")),
    "depth": KeySpec(_positive_int, 8, _variant_in("attnres")),
    "group_size": KeySpec(_positive_int, 32,
                          lambda c: c.get("variant") == "attnres" or c.get("precision") == "int4"),
    "quant": KeySpec(_choice(QUANT_GRANULARITIES), None,
                     lambda c: c.get("precision") in QUANTIZED_PRECISIONS),
    "diff_lambda": KeySpec(_positive_float, 0.5, _variant_in("differential"),
                           help="weight of the second softmax map in differential attention"),
    # Test-only: multiplies the kernel's work to plant a known slowdown (regression tests).
    "slowdown": KeySpec(_positive_int, None, hidden=True),
    # An imported benchmark's name (variant: external); nothing else identifies such a case.
    "name": KeySpec(_name, None, _variant_in(EXTERNAL), help="an imported benchmark's name (variant: external)"),
}

# int8 and mixed default to per-token Q/K scales: per-32-token blocks lose 0.0001 of cosine against float64
# at L >= 1024 (0.99989-0.99990 at L=2048), per token keeps it >= 0.99992 up to L=4096. Cases stored with
# per_block keep that key, so old rows stay what they were; a matrix that leaves `quant` out now measures
# per_token.
DEFAULT_QUANT = {"int8": "per_token", "mixed": "per_token", "int4": "per_group"}

# Column order for tables, exports and the database (every key, hidden ones included).
CASE_COLUMNS = tuple(CASE_KEYS)
# The keys a user is told about (allowed lists, did-you-mean, export headers when unused).
PUBLIC_CASE_COLUMNS = tuple(k for k, spec in CASE_KEYS.items() if not spec.hidden)


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean X?)' for a near miss, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- plugins: variants, knobs and backends users add ----------------------------------------------------------
# Names a plugin may give a variant, a backend or a knob: they become database values and case keys.
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
NAME_HELP = "lower-case letters, digits and '_', starting with a letter, at most 32 characters"
MAX_KNOB_TEXT = 64


@dataclass(frozen=True)
class Knob:
    """A knob of a plugin's variant: its default, and what values it takes.

    The type is the default's: an int (within `minimum`..`maximum`, default 32-bit), a float (finite, within
    them), a bool, or a str (one of `choices` when given, else printable text of at most 64 characters).
    The default is part of every case's identity: change it and old rows no longer match new ones."""

    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    def check(self, key: str, value: Any) -> Any:
        kind = type(self.default)
        if kind is bool:
            if not isinstance(value, bool):
                raise CaseKeyError(key, f"expected true or false, got {value!r}")
            return value
        if kind is str:
            if not isinstance(value, str):
                raise CaseKeyError(key, f"expected text, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise CaseKeyError(key, f"unknown value {value!r}; allowed: {', '.join(self.choices)}"
                                        f"{suggest(value, self.choices)}")
            if len(value) > MAX_KNOB_TEXT or not value.isprintable():
                raise CaseKeyError(key, f"expected printable text of at most {MAX_KNOB_TEXT} characters")
            return value
        low = -MAX_CASE_INT - 1 if self.minimum is None else self.minimum
        high = MAX_CASE_INT if self.maximum is None else self.maximum
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise CaseKeyError(key, f"expected a whole number, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CaseKeyError(key, f"expected a number, got {value!r}")
        if not low <= value <= high:
            raise CaseKeyError(key, f"{value!r} is out of range; allowed: {low:g} to {high:g}")
        return value if kind is int else float(value)


@dataclass(frozen=True)
class VariantDef:
    """A variant a plugin defined: its knobs, an optional check over the whole case, and where it was
    defined (for messages)."""

    name: str
    knobs: Mapping[str, Knob] = field(default_factory=dict)
    # Raises ValueError (or CaseKeyError naming the knob) when a combination of values is wrong.
    check: Callable[[Mapping[str, Any]], Any] | None = None
    origin: str = ""


_PLUGIN_VARIANTS: dict[str, VariantDef] = {}
_PLUGIN_BACKENDS: dict[str, str] = {}  # name -> where it was first used


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a valid name ({NAME_HELP})")


def define_variant(name: str, knobs: Mapping[str, Knob] | None = None,
                   check: Callable[[Mapping[str, Any]], Any] | None = None, origin: str = "") -> VariantDef:
    """Add a plugin's variant; ValueError when the name or a knob is not allowed (the plugin loader says
    which file and line)."""
    _check_name("variant", name)
    if name in VARIANTS:
        raise ValueError(f"variant {name!r} is bundled; a plugin adds kernels to it but cannot redefine it")
    if name in _PLUGIN_VARIANTS:
        raise ValueError(f"variant {name!r} is already defined by {_PLUGIN_VARIANTS[name].origin}")
    knobs = dict(knobs or {})
    for knob, spec in knobs.items():
        _check_name("knob", knob)
        if knob in CASE_KEYS or knob in RESERVED_NAMES:
            raise ValueError(f"knob {knob!r} is a bundled case key or a column of the results; give your knob a "
                             "name of its own")
        if not isinstance(spec, Knob):
            raise ValueError(f"knob {knob!r}: expected Knob(default, ...), got {type(spec).__name__}")
        if type(spec.default) not in (int, float, bool, str):
            raise ValueError(f"knob {knob!r}: the default must be an int, float, bool or str, got "
                             f"{spec.default!r}")
        try:
            spec.check(knob, spec.default)
        except CaseKeyError as exc:
            raise ValueError(f"knob {knob!r}: its default is not allowed: {exc}") from None
    if check is not None and not callable(check):
        raise ValueError(f"variant {name!r}: check must be a function of the case")
    vdef = VariantDef(name, knobs, check, origin)
    _PLUGIN_VARIANTS[name] = vdef
    return vdef


def define_backend(name: str, origin: str = "") -> None:
    """Add a backend name a plugin's kernel uses (a no-op for a known one)."""
    _check_name("backend", name)
    if name not in BACKENDS and name not in _PLUGIN_BACKENDS:
        _PLUGIN_BACKENDS[name] = origin


def forget(variants: list[str], backends: list[str]) -> None:
    """Undo what a plugin defined (it failed to load, or the plugin set changed)."""
    for name in variants:
        _PLUGIN_VARIANTS.pop(name, None)
    for name in backends:
        _PLUGIN_BACKENDS.pop(name, None)


def clear_plugins() -> None:
    _PLUGIN_VARIANTS.clear()
    _PLUGIN_BACKENDS.clear()


def plugin_variant(name: str) -> VariantDef | None:
    return _PLUGIN_VARIANTS.get(name)


def plugin_knobs() -> dict[str, list[tuple[str, Knob]]]:
    """Every plugin knob name -> (variant, Knob) for each variant that has it."""
    out: dict[str, list[tuple[str, Knob]]] = {}
    for vdef in _PLUGIN_VARIANTS.values():
        for knob, spec in vdef.knobs.items():
            out.setdefault(knob, []).append((vdef.name, spec))
    return out


def all_keys() -> tuple[str, ...]:
    """The bundled case keys users write (test-only keys left out), then the plugins' knobs (sorted)."""
    return PUBLIC_CASE_COLUMNS + tuple(sorted(plugin_knobs()))


# An export row (results.exchange) holds a plugin variant's knobs in this column, next to its other columns.
KNOBS_COLUMN = "plugin_knobs"
_ROW_MARKERS = ("case_hash", "status", KNOBS_COLUMN)
# Names a knob may not take: they mean something else in a result row (a case is told from a row by them).
RESERVED_NAMES = (*_ROW_MARKERS, "run_id", "device", "error", "details", "fingerprint", "samples_ms", "measure",
                  "matrix", "matrix_text", "tag", "hash", "params", "id", "case", "label")


def extra_keys(case: Mapping[str, Any]) -> dict[str, Any]:
    """A plugin variant's knobs, sorted by name: the keys of a case that are not bundled case keys, or the
    `plugin_knobs` of an export row (a row's other columns are not knobs)."""
    if any(marker in case for marker in _ROW_MARKERS):
        knobs = case.get(KNOBS_COLUMN)
        return {k: knobs[k] for k in sorted(knobs)} if isinstance(knobs, dict) else {}
    return {k: case[k] for k in sorted(case) if k not in CASE_KEYS}


def _scalar(key: str, value: Any) -> Any:
    """A value of a key no loaded plugin knows (its plugin failed to load, or an import file): a scalar
    within the bounds the database holds."""
    if isinstance(value, bool) or isinstance(value, str) and len(value) <= MAX_KNOB_TEXT and value.isprintable():
        return value
    if isinstance(value, int) and -MAX_CASE_INT - 1 <= value <= MAX_CASE_INT:
        return value
    if isinstance(value, float) and math.isfinite(value) and abs(value) <= MAX_CASE_FLOAT:
        return value
    raise CaseKeyError(key, f"expected a number, true/false or short text, got {value!r:.60}")


def check_key(key: str, value: Any, *, unknown_ok: bool = False) -> Any:
    """Check one key and value on their own (before the combination is known).

    `unknown_ok`: a key no bundled or loaded plugin variant knows, and a variant or backend name nobody
    registered, are accepted as plain values (a plugin that should define them failed to load; the case is
    then stored as failed with that plugin's error)."""
    if key in CASE_KEYS:
        if unknown_ok and key in ("variant", "backend") and isinstance(value, str) and NAME_RE.fullmatch(value):
            return value
        return CASE_KEYS[key].check(key, value)
    knobs = plugin_knobs().get(key)
    if knobs:
        errors = []
        for _, spec in knobs:
            try:
                return spec.check(key, value)
            except CaseKeyError as exc:
                errors.append(exc)
        raise errors[0]
    if unknown_ok and isinstance(key, str) and NAME_RE.fullmatch(key):
        return _scalar(key, value)
    known = all_keys()
    raise CaseKeyError(key, f"unknown case key{suggest(key, known)}; allowed: {', '.join(known)}")


def canonical_case(raw: Mapping[str, Any], *, unknown_ok: bool = False) -> dict[str, Any]:
    """Check every key of one case, fill defaults, drop knobs that do not apply; raise CaseKeyError.

    A plugin variant's knobs follow the bundled keys, defaulted from its definition, then its own check
    runs. `unknown_ok` (see `check_key`): a case whose variant nobody registered keeps the keys it was
    given that are not bundled ones, as they are; `is_known(case)` tells such a case apart."""
    for key, value in raw.items():
        check_key(key, value, unknown_ok=unknown_ok)
    if raw.get("variant") == EXTERNAL:
        return _external_case(raw)
    case: dict[str, Any] = {}
    # Identity keys first: later keys' applicability depends on them.
    for key, spec in CASE_KEYS.items():
        if spec.applies is not None and not spec.applies(case):
            continue
        value = raw.get(key)
        if value is None:
            if key == "model_dim":
                value = case["heads"] * case["head_dim"]
            elif key == "quant":
                value = DEFAULT_QUANT[case["precision"]]
            else:
                value = spec.default
        if value is None:
            continue
        case[key] = value if unknown_ok and key in ("variant", "backend") else spec.check(key, value)
    vdef = _PLUGIN_VARIANTS.get(case["variant"])
    if vdef is not None:
        for knob in sorted(vdef.knobs):
            spec = vdef.knobs[knob]
            value = raw.get(knob)
            case[knob] = spec.check(knob, spec.default if value is None else value)
    elif unknown_ok and case["variant"] not in VARIANTS:
        for key in sorted(raw):
            if key not in CASE_KEYS and raw[key] is not None:
                case[key] = _scalar(key, raw[key])
    if unknown_ok and case["variant"] in known_variants():
        # Only a variant nobody registered may carry keys nobody knows: elsewhere they are typos.
        known = all_keys()
        for key in raw:
            if key not in known:
                raise CaseKeyError(key, f"unknown case key{suggest(key, known)}; allowed: {', '.join(known)}")
    _check_consistency(case)
    if vdef is not None and vdef.check is not None:
        _run_variant_check(vdef, case)
    return case


def _external_case(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An imported benchmark: its name and nothing else (no precision, no seq_len: none was measured)."""
    other = sorted(k for k, v in raw.items() if k not in ("variant", "name") and v is not None)
    if other:
        raise CaseKeyError(other[0], f"an {EXTERNAL} case is only its name; '{other[0]}' does not apply to it")
    if raw.get("name") is None:
        raise CaseKeyError("name", f"an {EXTERNAL} case needs its benchmark's name")
    return {"variant": EXTERNAL, "name": raw["name"]}


def is_known(case: Mapping[str, Any]) -> bool:
    """Whether the case's variant and backend are bundled or defined by a loaded plugin."""
    return case.get("variant") in known_variants() and case.get("backend") in known_backends()


def _run_variant_check(vdef: VariantDef, case: Mapping[str, Any]) -> None:
    """A plugin's own check of a whole case: ValueError (or CaseKeyError naming the knob) is a bad case."""
    assert vdef.check is not None
    try:
        vdef.check(dict(case))
    except CaseKeyError:
        raise
    except ValueError as exc:
        raise CaseKeyError(getattr(exc, "key", None) or "variant",
                           f"variant {vdef.name} ({vdef.origin}): {exc}") from None


def _check_consistency(case: dict[str, Any]) -> None:
    if case["variant"] == "sliding_window" and case["window"] > case["seq_len"]:
        # Not an error: a window of the whole sequence is dense; say so rather than silently measure it.
        raise CaseKeyError("window", f"window {case['window']} is longer than seq_len {case['seq_len']}; "
                                     "use variant: dense or a smaller window")
    if case["variant"] == "block_sparse" and case["density"] > 1:
        raise CaseKeyError("density", f"density is a fraction of key blocks in (0, 1], got {case['density']}")
    if case["variant"] == "lowrank" and case["rank"] > case["seq_len"]:
        raise CaseKeyError("rank", f"rank {case['rank']} exceeds seq_len {case['seq_len']}; "
                                   "a low-rank projection must be shorter than the sequence")


def case_hash(case: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit identity of a canonical case."""
    blob = json.dumps(dict(case), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def case_label(case: Mapping[str, Any]) -> str:
    """A short human label: 'dense int8 torch L=2048 quant=per_block', knobs after the identity keys;
    an imported benchmark is 'external <its name>'."""
    if case.get("variant") == EXTERNAL:
        return f"{EXTERNAL} {case.get('name')}"
    parts = [case["variant"], case["precision"], case["backend"], f"L={case['seq_len']}"]
    for key in CASE_COLUMNS:
        if key in ("variant", "precision", "backend", "seq_len") or case.get(key) is None:
            continue
        if case[key] == CASE_KEYS[key].default and key in ("scope", "batch", "heads", "head_dim", "inputs"):
            continue
        parts.append(f"{key}={case[key]}")
    parts += [f"{key}={value}" for key, value in extra_keys(case).items() if value is not None]
    return " ".join(parts)
