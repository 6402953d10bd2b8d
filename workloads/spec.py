"""What a case is: its keys, their allowed values and defaults, and its canonical identity.

A case is identified by its canonical, defaulted keys (knobs that do not apply to its variant or precision
are dropped) and a short hash of them. Changing the defaults here changes identities: add a key with a
default that reproduces the old behaviour instead, so old rows stay comparable.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
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


def _choice(allowed: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise CaseKeyError(key, f"unknown value {value!r}; allowed: {', '.join(allowed)}")
        return value
    check.schema = {"enum": list(allowed)}  # type: ignore[attr-defined]
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
    if not isinstance(value, str) or value not in (*VARIANTS, EXTERNAL):
        raise CaseKeyError(key, f"unknown value {value!r}; allowed: {', '.join(VARIANTS)} (and {EXTERNAL}, for "
                                "imported benchmarks)")
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


CASE_KEYS: dict[str, KeySpec] = {
    "variant": KeySpec(_variant, "dense", help="attention variant"),
    "precision": KeySpec(_choice(PRECISIONS), "fp32", help="compute precision"),
    "backend": KeySpec(_choice(BACKENDS), "torch", help="execution backend"),
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


def check_key(key: str, value: Any) -> Any:
    """Check one key and value on their own (before the combination is known)."""
    if key not in CASE_KEYS:
        raise CaseKeyError(key, f"unknown case key{suggest(key, PUBLIC_CASE_COLUMNS)}; "
                                f"allowed: {', '.join(PUBLIC_CASE_COLUMNS)}")
    return CASE_KEYS[key].check(key, value)


def canonical_case(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key of one case, fill defaults, drop knobs that do not apply; raise CaseKeyError."""
    for key, value in raw.items():
        check_key(key, value)
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
        case[key] = spec.check(key, value)
    _check_consistency(case)
    return case


def _external_case(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An imported benchmark: its name and nothing else (no precision, no seq_len: none was measured)."""
    other = sorted(k for k, v in raw.items() if k not in ("variant", "name") and v is not None)
    if other:
        raise CaseKeyError(other[0], f"an {EXTERNAL} case is only its name; '{other[0]}' does not apply to it")
    if raw.get("name") is None:
        raise CaseKeyError("name", f"an {EXTERNAL} case needs its benchmark's name")
    return {"variant": EXTERNAL, "name": raw["name"]}


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
    return " ".join(parts)
