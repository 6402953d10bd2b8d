"""Sweep matrices: YAML with GitHub Actions matrix semantics, expanded into canonical cases.

`expand()` is the pure core (plain dicts in, plain dicts out); `load_matrix()` is the shell that reads a
file, keeps line numbers for error messages and validates every key. PyYAML is imported lazily so the
device-side bundle, which only needs `MeasureConfig`, does not depend on it.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .spec import CaseKeyError, canonical_case, case_hash, check_key, suggest

TOP_KEYS = ("name", "defaults", "matrix", "exclude", "include", "measure")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MeasureConfig":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


MEASURE_KEYS = tuple(f.name for f in fields(MeasureConfig))


@dataclass(frozen=True)
class Sweep:
    """An expanded matrix: its name, canonical cases (in order, unique) and the measure settings."""

    name: str
    cases: tuple[dict[str, Any], ...]
    measure: MeasureConfig
    source: str = ""  # the YAML text, stored with the run so --resume needs no file

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


class _Located:
    """Line numbers (1-based) of every mapping key and sequence item in a YAML document."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}

    def line(self, *path: Any) -> int | None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None


def _walk(node: Any, path: tuple[Any, ...], located: _Located) -> None:
    import yaml

    located.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            located.lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), located)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            located.lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), located)


def _parse_yaml(text: str, file: str) -> tuple[Any, _Located]:
    import yaml

    located = _Located()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}; fix the syntax at this line", file=file,
                          line=line) from None
    if node is not None:
        _walk(node, (), located)
    return data, located


def parse_matrix(text: str, file: str = "<matrix>") -> Sweep:
    """Validate and expand a matrix document; raise ConfigError naming file, line and key."""
    data, located = _parse_yaml(text, file)
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
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise err("each entry must be a mapping such as {precision: int8}", what, i, key=f"{what}[{i}]")
        return value

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
            _check_value(key, value, err, ("matrix", key, i))
    for key, value in defaults.items():
        _check_value(key, value, err, ("defaults", key))
    for what, rules in (("exclude", exclude), ("include", include)):
        for i, rule in enumerate(rules):
            for key, value in rule.items():
                _check_value(key, value, err, (what, i, key))
    measure = _measure(measure_raw, err)

    combos = expand(matrix, exclude, include)
    if not combos and not defaults:
        raise err("the matrix expands to no cases; add values under matrix: or include:", "matrix")
    if not combos:
        combos = [{}]
    cases: list[dict[str, Any]] = []
    seen: set[str] = set()
    for combo in combos:
        raw = {**defaults, **combo}
        try:
            case = canonical_case(raw)
        except CaseKeyError as exc:
            origin = _origin(exc.key, combo, matrix, include, defaults)
            raise err(f"{exc} (in case {_brief(raw)})", *origin, key=exc.key) from None
        h = case_hash(case)
        if h not in seen:
            seen.add(h)
            cases.append(case)
    return Sweep(name=name, cases=tuple(cases), measure=measure, source=text)


def _check_value(key: Any, value: Any, err: Any, path: tuple[Any, ...]) -> None:
    """Check one key/value where it was written (the combination is checked again after expansion)."""
    try:
        check_key(str(key), value)
    except CaseKeyError as exc:
        raise err(str(exc), *path, key=str(key)) from None


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


ON_CONTENTION = ("flag", "wait", "retry")


def _measure(raw: Mapping[str, Any], err: Any) -> MeasureConfig:
    values: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(MeasureConfig)}
    for key, value in raw.items():
        if key not in MEASURE_KEYS:
            raise err(f"unknown measure key{suggest(key, MEASURE_KEYS)}; allowed: {', '.join(MEASURE_KEYS)}",
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (value == 0 and key not in ("warmup_s",)):
            raise err(f"expected a positive number, got {value!r}", "measure", key, key=f"measure.{key}")
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


def load_matrix(path: str | Path) -> Sweep:
    """Read and expand a matrix file; ConfigError if it is missing or wrong."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError("no such file; pass --matrix with a path such as sweeps/quick.yaml",
                          file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    return parse_matrix(text, str(path))
