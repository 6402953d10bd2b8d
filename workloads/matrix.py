"""Sweep matrices: YAML with GitHub Actions matrix semantics, expanded into canonical cases.

`expand()` is the pure core (plain dicts in, plain dicts out); `load_matrix()` is the shell that reads a
file (through `workloads.yamlload`: size cap, UTF-8, alias and depth limits, duplicate keys, finite
numbers), keeps line numbers for error messages and validates every key, counts the expansion before
making it (`max_cases`) and refuses one that comes out empty. PyYAML is imported lazily so the
device-side bundle, which only needs `MeasureConfig`, does not depend on it.

`plugins: [path, ...]` names users' kernel plugins (paths relative to the matrix file). Their variants and
knobs must be known before the cases are checked, so `parse_matrix` hands the list to a `PluginHook` (the
controller's loader) between reading the top level and checking the cases; without a hook nothing is
loaded. When a plugin failed to load, the hook says so and cases of variants nobody registered are kept
(as `canonical_case(..., unknown_ok=True)` makes them) to be stored as failed with that plugin's error.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ConfigError
from .spec import EXTERNAL, CaseKeyError, canonical_case, case_hash, check_key, suggest
from .yamlload import YAML_MAX_BYTES, load_yaml, read_text

TOP_KEYS = ("name", "plugins", "defaults", "matrix", "exclude", "include", "measure")
# Plugins one matrix may name; a path's length.
MAX_PLUGINS = 64
MAX_PLUGIN_PATH = 4096
# Loads the plugins a matrix names: given (path as written, its line), returns whether every plugin (those
# named elsewhere too) loaded; raises ConfigError for one that cannot even be read.
PluginHook = Callable[[list[tuple[str, int | None]]], bool]
# A matrix expanding to more cases than this is refused unless `harness run --max-cases N` raises it.
DEFAULT_MAX_CASES = 5000
# Entries of `exclude` and of `include` (each): expansion matches every entry against every case.
MAX_RULES = 1000
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class MeasureConfig:
    """The timing protocol's knobs (seconds). Defaults follow TFLite's benchmark_model and pyperf."""

    warmup_s: float = 0.5
    min_time_s: float = 1.0
    min_samples: int = 10
    max_time_s: float = 30.0
    timeout_s: float = 120.0
    # The shortest a sample may be: the inner loop count is calibrated up to it (pyperf warns under 1 ms).
    min_sample_s: float = 0.001
    # Cool down to this CPU temperature (deg C) before each case; None: no cool-down.
    cooldown_c: float | None = None
    cooldown_max_s: float = 120.0
    # Seconds of idle power measured per device before a sweep (with a power sensor configured).
    idle_s: float = 5.0
    # A case is `contended` when other processes used more than this fraction of its CPUs in the window.
    max_cpu_other: float = 0.10
    # What to do about contention: flag it, wait (up to contention_wait_s) for a quiet device before each
    # case, or retry a contended case once.
    on_contention: str = "flag"
    contention_wait_s: float = 60.0
    # `threads` above the device's CPUs is skipped unless this is set (then it runs, with a warning).
    allow_oversubscribe: bool = False
    # Worker processes each case is measured in (one pass over the cases per process), min_time_s and
    # min_samples shared out among them (pyperf's habit): one process's median can land 20-40% from the next
    # one's on the same code, and only a run measured in several can tell that spread from a change.
    processes: int = 1

    def for_one_process(self) -> "MeasureConfig":
        """The settings each of `processes` worker processes measures a case under: the time and samples shared
        out, the warm-up whole (every process warms up)."""
        if self.processes <= 1:
            return self
        n = self.processes
        return replace(self, min_time_s=self.min_time_s / n, max_time_s=self.max_time_s / n,
                       min_samples=max(3, math.ceil(self.min_samples / n)), processes=1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MeasureConfig":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


MEASURE_KEYS = tuple(f.name for f in fields(MeasureConfig))
_WEEK_S = 7 * 24 * 3600.0
# Allowed range of each measure key (the loader and the published JSON Schema share these).
MEASURE_BOUNDS: dict[str, tuple[float, float]] = {
    "warmup_s": (0.0, 3600.0), "min_time_s": (0.0, _WEEK_S), "min_samples": (1, 10_000_000),
    "max_time_s": (0.0, _WEEK_S), "timeout_s": (0.0, _WEEK_S), "min_sample_s": (1e-6, 60.0),
    "cooldown_c": (1.0, 150.0), "cooldown_max_s": (0.0, 86400.0), "idle_s": (0.0, 3600.0),
    # Contention settings (where MeasureConfig has them): a fraction of the CPUs, and seconds.
    "max_cpu_other": (0.0, 1.0), "contention_wait_s": (0.0, _WEEK_S), "processes": (1, 64),
}
ON_CONTENTION = ("flag", "wait", "retry")
# Text measure keys and their allowed values (for the JSON Schema; the loader checks them itself).
MEASURE_CHOICES: dict[str, tuple[str, ...]] = {"on_contention": ON_CONTENTION}
# Any other numeric measure key: positive and finite.
_ANY_POSITIVE = (0.0, 1e12)


@dataclass(frozen=True)
class Sweep:
    """An expanded matrix: its name, canonical cases (in order, unique) and the measure settings."""

    name: str
    cases: tuple[dict[str, Any], ...]
    measure: MeasureConfig
    source: str = ""  # the YAML text, stored with the run so --resume needs no file
    plugins: tuple[str, ...] = ()  # the plugin paths the matrix names, as written
    @property
    def hashes(self) -> tuple[str, ...]:
        return tuple(case_hash(c) for c in self.cases)


def expand(matrix: Mapping[str, list[Any]], exclude: list[Mapping[str, Any]] | None = None,
           include: list[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """GitHub Actions matrix semantics: cartesian product, then exclude, then include.

    An include entry is merged into every combination whose original matrix values it does not
    contradict (values added by earlier includes may be overwritten); when it fits none, it is added as a
    new combination. An empty matrix with includes yields just the includes.
    """
    keys = list(matrix)
    combos: list[dict[str, Any]] = []
    if keys and all(len(matrix[k]) > 0 for k in keys):
        combos = [dict(zip(keys, values)) for values in itertools.product(*(matrix[k] for k in keys))]
    for rule in exclude or []:
        combos = [c for c in combos if not all(k in c and c[k] == v for k, v in rule.items())]
    originals = [dict(c) for c in combos]
    extra: list[dict[str, Any]] = []
    for rule in include or []:
        matched = False
        for combo, original in zip(combos, originals):
            if all(original[k] == v for k, v in rule.items() if k in original):
                combo.update(rule)
                matched = True
        if not matched:
            extra.append(dict(rule))
    return combos + extra


def parse_matrix(text: str, file: str = "<matrix>", *, max_cases: int | None = DEFAULT_MAX_CASES,
                 plugins: PluginHook | None = None) -> Sweep:
    """Validate and expand a matrix document; raise ConfigError naming file, line and key.

    `max_cases` bounds the expansion: the product of the matrix lists is counted before anything is
    expanded, so a matrix of a million cases is refused at once (None: no bound, for a run's own stored
    matrix on --resume). `plugins` loads the plugins the matrix names before its cases are checked."""
    data, located = load_yaml(text, file)
    if data is None:
        raise ConfigError("the file is empty; see sweeps/quick.yaml for the format", file=file)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping with keys " + ", ".join(TOP_KEYS), file=file, line=1)

    def err(message: str, *path: Any, key: str | None = None) -> ConfigError:
        return ConfigError(message, file=file, line=located.line(*path), key=key)

    for key in data:
        if key not in TOP_KEYS:
            raise err(f"unknown top-level key{suggest(str(key), TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}",
                      key, key=str(key))
    name = data.get("name") or Path(file).stem
    if not isinstance(name, str):
        raise err("expected a string", "name", key="name")
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise err(f"a matrix name is printable text of at most {MAX_NAME_CHARS} characters", "name", key="name")

    def mapping(value: Any, *path: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise err(f"expected a mapping, got {type(value).__name__}", *path, key=".".join(map(str, path)))
        return value

    def mapping_list(value: Any, what: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise err("expected a list of mappings", what, key=what)
        if len(value) > MAX_RULES:
            raise err(f"{len(value)} entries; at most {MAX_RULES} are allowed: split the matrix into several files",
                      what, key=what)
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise err("each entry must be a mapping such as {precision: int8}", what, i, key=f"{what}[{i}]")
        return value

    declared = _plugin_paths(data.get("plugins"), err, located)
    all_loaded = plugins(declared) if plugins is not None else True
    unknown_ok = not all_loaded
    defaults = mapping(data.get("defaults"), "defaults")
    matrix = mapping(data.get("matrix"), "matrix")
    exclude = mapping_list(data.get("exclude"), "exclude")
    include = mapping_list(data.get("include"), "include")
    measure_raw = mapping(data.get("measure"), "measure")

    # Check every key and value where the user wrote it, so the line is exact.
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise err("a matrix key takes a non-empty list of values, e.g. [128, 512]", "matrix", key, key=key)
        for i, value in enumerate(values):
            _check_value(key, value, err, ("matrix", key, i), unknown_ok)
    for key, value in defaults.items():
        _check_value(key, value, err, ("defaults", key), unknown_ok)
    for what, rules in (("exclude", exclude), ("include", include)):
        for i, rule in enumerate(rules):
            for key, value in rule.items():
                _check_value(key, value, err, (what, i, key), unknown_ok)
    for i, rule in enumerate(exclude):
        for key in rule:
            if key not in matrix:  # it could never match: a combination holds only matrix keys
                raise err(f"exclude key '{key}' is not a key of matrix:, so this entry drops nothing; exclude "
                          f"matches combinations of {', '.join(map(str, matrix)) or 'matrix values'}",
                          "exclude", i, key, key=f"exclude[{i}].{key}")
    measure = _measure(measure_raw, err)

    # Count before expanding: the product alone says whether the expansion would be too large.
    product = math.prod(len(v) for v in matrix.values()) if matrix else 0
    if max_cases is not None and product + len(include) > max_cases:
        sizes = " x ".join(f"{k} {len(v)}" for k, v in matrix.items())
        raise err(f"the matrix expands to {product + len(include):,} cases ({sizes}"
                  f"{f', plus {len(include)} include' if include else ''}), more than --max-cases {max_cases:,}; "
                  "split it into several matrices or raise --max-cases", "matrix", key="matrix")
    combos = expand(matrix, exclude, include)
    if not combos:
        if matrix or include:
            raise err("the matrix expands to no cases: exclude removes every combination; remove or narrow an "
                      "exclude entry", "exclude" if exclude else "matrix", key="exclude" if exclude else "matrix")
        if not defaults:
            raise err("the matrix expands to no cases; add values under matrix: or include:", "matrix")
        combos = [{}]  # only defaults: the one case they describe
    cases: list[dict[str, Any]] = []
    seen: set[str] = set()
    for combo in combos:
        raw = {**defaults, **combo}
        try:
            case = canonical_case(raw, unknown_ok=unknown_ok)
        except CaseKeyError as exc:
            origin = _origin(exc.key, combo, matrix, include, defaults)
            raise err(f"{exc} (in case {_brief(raw)})", *origin, key=exc.key) from None
        h = case_hash(case)
        if h not in seen:
            seen.add(h)
            cases.append(case)
    return Sweep(name=name, cases=tuple(cases), measure=measure, source=text,
                 plugins=tuple(path for path, _ in declared))


def _plugin_paths(value: Any, err: Any, located: Any) -> list[tuple[str, int | None]]:
    """The `plugins:` list: paths (text) and the line each is on."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise err("expected a list of paths to plugin files or folders, e.g. [../my_kernels/flash.py]",
                  "plugins", key="plugins")
    if len(value) > MAX_PLUGINS:
        raise err(f"{len(value)} plugins; at most {MAX_PLUGINS}", "plugins", key="plugins")
    out = []
    for i, path in enumerate(value):
        if not isinstance(path, str) or not path.strip() or len(path) > MAX_PLUGIN_PATH \
                or not path.isprintable():
            raise err(f"expected the path of a plugin file or folder (printable text), got {path!r:.60}",
                      "plugins", i, key=f"plugins[{i}]")
        out.append((path, located.line("plugins", i)))
    return out


def _check_value(key: Any, value: Any, err: Any, path: tuple[Any, ...], unknown_ok: bool = False) -> None:
    """Check one key/value where it was written (the combination is checked again after expansion)."""
    try:
        check_key(str(key), value, unknown_ok=unknown_ok)
    except CaseKeyError as exc:
        raise err(str(exc), *path, key=str(key)) from None
    if (key == "variant" and value == EXTERNAL) or key == "name":
        raise err(f"'{key}: {value}' describes benchmarks imported from pyperf or pytest-benchmark files "
                  "(`harness results import FILE`); a sweep cannot run them. Use a variant a kernel computes "
                  "(`harness kernels`)", *path, key=str(key))


def _origin(key: str, combo: Mapping[str, Any], matrix: Mapping[str, Any],
            include: list[Mapping[str, Any]], defaults: Mapping[str, Any]) -> tuple[Any, ...]:
    if key in matrix:
        return ("matrix", key)
    for i, rule in enumerate(include):
        if key in rule and rule[key] == combo.get(key):
            return ("include", i, key)
    if key in defaults:
        return ("defaults", key)
    return ("matrix",)


def _brief(case: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in case.items()) + "}"


def _measure(raw: Mapping[str, Any], err: Any) -> MeasureConfig:
    values: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(MeasureConfig)}
    for key, value in raw.items():
        if key not in MEASURE_KEYS:
            raise err(f"unknown measure key{suggest(str(key), MEASURE_KEYS)}; allowed: {', '.join(MEASURE_KEYS)}",
                      "measure", key, key=f"measure.{key}")
        if key == "cooldown_c" and value is None:
            values[key] = None
            continue
        if key == "on_contention":
            if value not in ON_CONTENTION:
                raise err(f"expected one of {', '.join(ON_CONTENTION)}, got {value!r}", "measure", key,
                          key=f"measure.{key}")
            values[key] = value
            continue
        if key == "allow_oversubscribe":
            if not isinstance(value, bool):
                raise err(f"expected true or false, got {value!r}", "measure", key, key=f"measure.{key}")
            values[key] = value
            continue
        if key == "max_cpu_other" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                       or not 0 <= value <= 1):
            raise err(f"expected a fraction of the CPUs between 0 and 1 (0.10 is 10%), got {value!r}", "measure",
                      key, key=f"measure.{key}")
        if key == "max_cpu_other":
            values[key] = float(value)
            continue
        low, high = MEASURE_BOUNDS.get(key, _ANY_POSITIVE)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (value == 0 and key not in ("warmup_s",)):
            raise err(f"expected a positive number, got {value!r}", "measure", key, key=f"measure.{key}")
        if not low <= value <= high:
            raise err(f"{value!r} is out of range; allowed: {low:g} to {high:g}", "measure", key,
                      key=f"measure.{key}")
        if types[key] in ("int", int):
            if int(value) != value:
                raise err(f"expected a whole number, got {value!r}", "measure", key, key=f"measure.{key}")
            value = int(value)
        values[key] = float(value) if types[key] not in ("int", int) else value
    measure = MeasureConfig(**values)
    if measure.max_time_s < measure.min_time_s:
        raise err(f"max_time_s ({measure.max_time_s}) is below min_time_s ({measure.min_time_s})",
                  "measure", "max_time_s", key="measure.max_time_s")
    if measure.timeout_s < measure.max_time_s:
        raise err(f"timeout_s ({measure.timeout_s}) must be at least max_time_s ({measure.max_time_s}), "
                  "or every slow case is cut off", "measure", "timeout_s", key="measure.timeout_s")
    return measure


def load_matrix(path: str | Path, *, max_cases: int | None = DEFAULT_MAX_CASES,
                plugins: PluginHook | None = None) -> Sweep:
    """Read and expand a matrix file; ConfigError if it is missing, too large, not UTF-8 or wrong."""
    text = read_text(str(path), max_bytes=YAML_MAX_BYTES, what="matrix",
                     missing_hint="pass --matrix with a path such as sweeps/quick.yaml")
    return parse_matrix(text, str(path), max_cases=max_cases, plugins=plugins)


def matrix_schema(with_plugins: bool = False) -> dict[str, Any]:
    """The JSON Schema of the matrix format, from the definitions `parse_matrix` checks against (the case
    keys' checks, MEASURE_BOUNDS, TOP_KEYS); published as schemas/matrix.schema.json for editors, and a test
    keeps the two in agreement. What a schema cannot say (a window longer than seq_len, a kernel that
    does not exist) is left to the loader. `with_plugins`: also the variants, backends and knobs of the
    plugins loaded in this process (`python -m harness.schemas --plugin PATH`)."""
    from .spec import CASE_KEYS, known_backends, known_variants, plugin_knobs

    case_props: dict[str, Any] = {}
    for key, spec in CASE_KEYS.items():
        if key == "name":  # import-only (variant: external): a matrix cannot hold it
            continue
        schema = dict(getattr(spec.check, "schema", {}))
        if with_plugins and key in ("variant", "backend"):
            schema["enum"] = list(known_variants() if key == "variant" else known_backends())
        if spec.help:
            schema["description"] = spec.help
        case_props[key] = schema
    for knob, specs in (plugin_knobs() if with_plugins else {}).items():
        options = []
        for variant, knob_spec in specs:
            kind = type(knob_spec.default)
            one: dict[str, Any] = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[kind]}
            if knob_spec.choices:
                one = {"enum": list(knob_spec.choices)}
            if kind in (int, float):
                if knob_spec.minimum is not None:
                    one["minimum"] = knob_spec.minimum
                if knob_spec.maximum is not None:
                    one["maximum"] = knob_spec.maximum
            options.append(one)
        case_props[knob] = options[0] if len(options) == 1 else {"anyOf": options}
        case_props[knob]["description"] = "; ".join(f"{variant}: {spec.help or 'plugin knob'} (default "
                                                    f"{spec.default!r})" for variant, spec in specs)
    case = {"type": "object", "additionalProperties": False, "properties": case_props}
    lists = {"type": "object", "additionalProperties": False,
             "properties": {k: {"type": "array", "minItems": 1, "items": {k2: v for k2, v in s.items()
                                                                          if k2 != "description"}}
                            for k, s in case_props.items()}}
    types = {f.name: f.type for f in fields(MeasureConfig)}
    measure_props: dict[str, Any] = {}
    for key in MEASURE_KEYS:
        ftype = types[key]
        if ftype in ("bool", bool):
            measure_props[key] = {"type": "boolean"}
            continue
        if ftype in ("str", str):
            measure_props[key] = {"enum": list(MEASURE_CHOICES[key])} if key in MEASURE_CHOICES else {"type": "string"}
            continue
        low, high = MEASURE_BOUNDS.get(key, _ANY_POSITIVE)
        integer = ftype in ("int", int)
        schema = {"type": "integer" if integer else "number", "maximum": high}
        if key == "warmup_s":
            schema["minimum"] = low
        else:
            schema["exclusiveMinimum" if low == 0 else "minimum"] = low
        if key == "cooldown_c":
            schema = {"oneOf": [schema, {"type": "null"}]}
        measure_props[key] = schema
    rules = {"type": "array", "maxItems": MAX_RULES, "items": case}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/attn-harness/attn-harness/schemas/matrix.schema.json",
        "title": "attn-harness sweep matrix",
        "description": "GitHub Actions matrix semantics: the cartesian product of `matrix`, then `exclude`, "
                       "then `include`; `defaults` fill keys a case does not set.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": MAX_NAME_CHARS},
            "plugins": {"type": "array", "maxItems": MAX_PLUGINS,
                        "description": "Users' kernel plugins (Python files or packages), relative to this file. "
                                       "Their variants and knobs are not in this schema: `python -m "
                                       "harness.schemas --plugin PATH DIR` writes one that knows them.",
                        "items": {"type": "string", "minLength": 1, "maxLength": MAX_PLUGIN_PATH}},
            "defaults": case,
            "matrix": lists,
            "exclude": rules,
            "include": rules,
            "measure": {"type": "object", "additionalProperties": False, "properties": measure_props},
        },
    }
