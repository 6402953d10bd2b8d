"""What a stored or imported value may be: the import boundary's row checks and the readers' sanity checks.

Import (`results.exchange.read_rows` then `import_rows`) trusts nothing in a file: `check_rows` validates
every row before anything is written and raises one `ConfigError` naming the file, the row and the column.
Types, ranges (latencies finite and > 0, cosine in [-1, 1], errors >= 0, integers within the database's
columns), statuses, text lengths (PostgreSQL enforces VARCHAR lengths mid-transaction), NUL characters
(PostgreSQL text cannot hold them), git revisions (hex object names: they reach `git archive`), and the
summaries against the raw samples they claim to summarize (recomputed in one vectorized pass per sample
count, so 100,000 rows cost well under a second). A hand-written table of checks rather than a pydantic or
jsonschema model: the import of 100,000 rows must stay within 3x of a bare bulk insert
(benchmarks/store.py), and a generic per-row validator costs more than the insert itself.

Readers (`regress`, `compare`, `nightly`, the dashboard) meet databases written before these checks
existed. `sane_samples` / `sane_value` say whether a stored value can be used, and `BadValue` records
where one was skipped, so a reader can skip it, say how many and where, and carry on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from devices.inventory import DEVICE_NAME, DEVICE_NAME_HELP
from workloads.errors import ConfigError
from workloads.spec import CASE_COLUMNS, KNOBS_COLUMN, NAME_HELP, NAME_RE

STATUSES = ("ok", "failed", "skipped", "timeout")
RUN_STATUSES = ("running", "complete", "partial", "interrupted", "failed")
# A git object name (abbreviated or full, SHA-1 or SHA-256), as `git rev-parse` prints it, and the
# '-dirty' mark the harness adds for a checkout with local changes.
GIT_REVISION = re.compile(r"[0-9a-f]{7,64}(-dirty)?")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,35}")
INT32_MAX = 2 ** 31 - 1
# Cosine similarity computed in float64 may pass 1 by a rounding error; not by more.
COS_SLACK = 1e-6
# Relative tolerance of a summary against the one recomputed from its samples (export writes repr floats,
# so a file written by `export` agrees exactly; the slack covers other summation orders).
SUMMARY_RTOL = 1e-9

# Text columns: longest value the database column holds.
TEXT_LIMITS = {"run_id": 36, "run_status": 16, "matrix": 200, "tag": 200, "harness_version": 40,
               "git_revision": 64, "device": 200, "status": 16, "case_hash": 16, "power_source": 200,
               "error": 1_000_000, "matrix_text": 1_000_000, "name": 500,
               # ISO 8601 times, parsed by import_rows
               "started_at": 64, "finished_at": 64, "measured_at": 64, "measured_until": 64}
# Float columns: (lowest, highest, lowest is allowed). Everything must be finite.
FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "latency_ms_p50": (0.0, math.inf, False), "latency_ms_p90": (0.0, math.inf, False),
    "latency_ms_p99": (0.0, math.inf, False), "latency_ms_mean": (0.0, math.inf, False),
    "latency_ms_std": (0.0, math.inf, True), "peak_mem_mb": (0.0, math.inf, True),
    "energy_mj_per_inf": (0.0, math.inf, True), "power_w_avg": (0.0, math.inf, True),
    "idle_power_w": (0.0, math.inf, True), "cos_sim": (-1.0 - COS_SLACK, 1.0 + COS_SLACK, True),
    "rel_err": (0.0, math.inf, True), "max_abs_err": (0.0, math.inf, True), "rmse": (0.0, math.inf, True),
    "density": (0.0, 1.0, False), "diff_lambda": (0.0, 1e9, False),
}
INT_RANGES: dict[str, tuple[int, int]] = {c: (0, INT32_MAX) for c in (
    "n_samples", "inner_loops", "threads_used", "kv_bytes", "input_bytes")}
SUMMARY_OF = {"latency_ms_p50": "p50", "latency_ms_p90": "p90", "latency_ms_p99": "p99",
              "latency_ms_mean": "mean", "latency_ms_std": "std"}
MAX_SAMPLES = 10_000_000


@dataclass(frozen=True)
class BadValue:
    """A stored value a reader skipped: where it is and what is wrong with it."""

    run_id: str
    device: str
    case: str
    column: str
    problem: str

    def __str__(self) -> str:
        return f"run {self.run_id} device {self.device} case {self.case}: {self.column} {self.problem}"


def sample_problem(samples: Sequence[float] | np.ndarray) -> str | None:
    """Why raw latency samples cannot be used (not finite, zero or negative), or None."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return None
    if not np.all(np.isfinite(a)):
        return f"holds {int(np.sum(~np.isfinite(a)))} sample(s) that are NaN or infinite"
    if np.any(a <= 0):
        return f"holds {int(np.sum(a <= 0))} sample(s) of zero or less"
    return None


def value_problem(column: str, value: Any) -> str | None:
    """Why a stored number cannot be used as `column` (not finite, out of range), or None."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return f"is {value!r}, not a number"
    if not math.isfinite(x):
        return f"is {x}, not a finite number"
    low, high, closed = FLOAT_RANGES.get(column, (-math.inf, math.inf, True))
    if x < low or (x == low and not closed) or x > high:
        return f"is {x!r}, outside {'[' if closed else '('}{low:g}, {high:g}]"
    return None


def summarize_bad(bad: Sequence[BadValue], limit: int = 5) -> str:
    """'2 stored value(s) skipped (not finite or impossible): ...; ...' for a reader's output."""
    if not bad:
        return ""
    shown = "; ".join(str(b) for b in bad[:limit])
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} stored value(s) skipped (not finite or impossible): {shown}{more}"


# -- import rows --------------------------------------------------------------------------------------
class _RowError(Exception):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def _text(column: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _RowError(column, f"must be text, got {type(value).__name__} {value!r:.60}")
    if "\x00" in value:
        raise _RowError(column, "holds a NUL character")
    limit = TEXT_LIMITS.get(column)
    if limit is not None and len(value) > limit:
        raise _RowError(column, f"is {len(value):,} characters long; at most {limit:,}")


def _json_problem(value: Any, depth: int = 0) -> str | None:
    """What is wrong inside a parsed JSON value (NUL in a string, NaN, a huge integer, deep nesting)."""
    if depth > 32:
        return "is nested more than 32 levels deep"
    if isinstance(value, str):
        return "holds a NUL character" if "\x00" in value else None
    if isinstance(value, dict):
        items: Iterable[Any] = (x for kv in value.items() for x in kv)
    elif isinstance(value, list):
        items = value
    elif isinstance(value, float):
        return None if math.isfinite(value) else "holds NaN or Infinity"
    elif isinstance(value, int) and not isinstance(value, bool):
        return "holds an integer beyond 64 bits" if abs(value) >= 2 ** 63 else None
    else:
        return None
    for v in items:
        problem = _json_problem(v, depth + 1)
        if problem:
            return problem
    return None


def _json_object(column: str, value: Any, seen: dict[Any, None]) -> None:
    """A JSON object column: a dict with nothing `_json_problem` refuses. Checked once per object."""
    if id(value) in seen:
        return
    if not isinstance(value, dict):
        raise _RowError(column, f"must be a JSON object, got {type(value).__name__}")
    try:
        # The C encoder finds the common case (nothing wrong) fast; only a suspect goes through the walk.
        text = json.dumps(value, allow_nan=False)
        suspect = "\\u0000" in text or len(text) > 1_000_000
    except (ValueError, RecursionError, TypeError):
        suspect = True
    if suspect:
        problem = _json_problem(value)
        if problem:
            raise _RowError(column, problem)
    seen[id(value)] = None


_FLOAT_CHECKS = tuple((c, lo, hi, closed) for c, (lo, hi, closed) in FLOAT_RANGES.items())
_INT_CHECKS = tuple((c, lo, hi) for c, (lo, hi) in INT_RANGES.items())
_TEXT_CHECKS = tuple(TEXT_LIMITS.items())
MAX_KNOBS = 64
_NUMBER = (int, float)
_SCALAR = (int, float, str)


def check_row(row: Mapping[str, Any], seen: dict[Any, None] | None = None) -> None:
    """Raise _RowError for the first column of one (typed) row that is wrong. Case keys are checked by
    `workloads.spec.canonical_case` in `import_rows`; times by their parser; raw samples' values (and the
    summaries against them) by `check_summaries`, vectorized over all rows."""
    get = row.get
    for column in ("run_id", "device", "status"):
        if get(column) is None:
            raise _RowError(column, "is empty; every row needs it")
    for column, low, high, closed in _FLOAT_CHECKS:
        value = get(column)
        if value is None:
            continue
        if value.__class__ not in _NUMBER:
            raise _RowError(column, f"must be a number, got {value!r:.60}")
        if not (low < value < high or (closed and value == low)) or value != value:
            raise _RowError(column, value_problem(column, value) or f"is {value!r}, out of range")
    for column, low, high in _INT_CHECKS:
        value = get(column)
        if value is None:
            continue
        if value.__class__ is not int:
            raise _RowError(column, f"must be a whole number, got {value!r:.60}")
        if not low <= value <= high:
            raise _RowError(column, f"is {value}, outside [{low}, {high}]")
    for column, limit in _TEXT_CHECKS:
        value = get(column)
        if value is None:
            continue
        if value.__class__ is not str:
            raise _RowError(column, f"must be text, got {type(value).__name__} {value!r:.60}")
        if len(value) > limit:
            raise _RowError(column, f"is {len(value):,} characters long; at most {limit:,}")
        if "\x00" in value:
            raise _RowError(column, "holds a NUL character")
    for column in CASE_COLUMNS:  # their values are checked by canonical_case; here only that they are scalars
        value = get(column)
        if value is not None and value.__class__ not in _SCALAR:
            raise _RowError(column, f"must be a single value, got {type(value).__name__} {value!r:.60}")
    knobs = get(KNOBS_COLUMN)
    if knobs is not None:
        if knobs.__class__ is not dict or len(knobs) > MAX_KNOBS:
            raise _RowError(KNOBS_COLUMN, f"must be a JSON object of at most {MAX_KNOBS} knobs")
        for name, value in knobs.items():
            if not NAME_RE.fullmatch(name) or name in CASE_COLUMNS:
                raise _RowError(KNOBS_COLUMN, f"{name!r:.40} is not a plugin knob name ({NAME_HELP}, not a case "
                                              "column)")
            if value.__class__ not in (*_SCALAR, bool):
                raise _RowError(KNOBS_COLUMN, f"knob {name} must be a single value, got {value!r:.60}")
    run_id, device, status = row["run_id"], row["device"], row["status"]
    if not RUN_ID.fullmatch(run_id):
        raise _RowError("run_id", f"{run_id!r:.60} is not a run id (letters, digits, '.', '_', '-'; at most 36)")
    if not DEVICE_NAME.fullmatch(device):
        raise _RowError("device", f"{device!r:.60} is not a device name ({DEVICE_NAME_HELP})")
    if status not in STATUSES:
        raise _RowError("status", f"{status!r:.30} is not a status; allowed: {', '.join(STATUSES)}")
    run_status = get("run_status")
    if run_status is not None and run_status not in RUN_STATUSES:
        raise _RowError("run_status", f"{run_status!r:.30} is not a run status; allowed: {', '.join(RUN_STATUSES)}")
    rev = get("git_revision")
    if rev is not None and not GIT_REVISION.fullmatch(rev):
        raise _RowError("git_revision", f"{rev!r:.70} is not a git object name (7 to 64 hex digits, optionally "
                                        "'-dirty')")
    for column in ("tag", "harness_version", "matrix", "power_source"):
        value = get(column)
        if value is not None and not value.isprintable():
            raise _RowError(column, "holds control characters")
    for column in ("is_estimate", "throttled"):
        value = get(column)
        if value is not None and value.__class__ is not bool:
            raise _RowError(column, f"must be true or false, got {value!r:.30}")
    details = get("details")
    if details is not None and details.__class__ is not dict:
        raise _RowError("details", f"must be a JSON object, got {type(details).__name__}")
    # Only the first row of a run (measure) and of a run's device (fingerprint) is stored: check those.
    seen = {} if seen is None else seen
    for column, key in (("fingerprint", (run_id, device)), ("measure", (run_id,))):
        value = get(column)
        if value is not None and (column, key) not in seen:
            _json_object(column, value, seen)
            seen[(column, key)] = None
    samples = get("samples_ms")
    if samples is not None:
        if samples.__class__ is not list or not set(map(type, samples)) <= {int, float}:
            raise _RowError("samples_ms", "must be a list of numbers (milliseconds)")
        if len(samples) > MAX_SAMPLES:
            raise _RowError("samples_ms", f"holds {len(samples):,} samples; at most {MAX_SAMPLES:,}")
        n = get("n_samples")
        if samples and n is not None and n != len(samples):
            raise _RowError("n_samples", f"is {n} but samples_ms holds {len(samples)} sample(s)")
    if status == "ok" and not samples and get("latency_ms_p50") is None:
        raise _RowError("latency_ms_p50", "is empty in an ok row without samples_ms: an ok result has a latency")
    if status != "ok" and samples:
        raise _RowError("samples_ms", f"holds samples in a {status} row: only ok rows have a latency")


def check_summaries(rows: Sequence[Mapping[str, Any]], where: Any) -> dict[int, dict[str, Any]]:
    """Recompute p50/p90/p99/mean/std from `samples_ms` (one vectorized pass per sample count) and refuse a
    row whose stated summaries disagree. Returns, by row index, the summaries a row left empty (the rows
    are not changed). `where(i)` names row i."""
    fills: dict[int, dict[str, Any]] = {}
    by_n: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        samples = row.get("samples_ms")
        if samples:
            by_n.setdefault(len(samples), []).append(i)
    for n, idx in by_n.items():
        a = np.asarray([rows[i]["samples_ms"] for i in idx], dtype=np.float64)
        bad = ~np.all(np.isfinite(a) & (a > 0), axis=1)
        if bad.any():
            i = idx[int(np.argmax(bad))]
            raise ConfigError(f"{where(i)}: column 'samples_ms' {sample_problem(rows[i]['samples_ms'])}; a "
                              "latency sample is a finite number of milliseconds above zero", file=where.file)
        p50, p90, p99 = np.percentile(a, [50, 90, 99], axis=1)
        computed = {"p50": p50, "p90": p90, "p99": p99, "mean": a.mean(axis=1),
                    "std": a.std(axis=1, ddof=1) if n > 1 else np.zeros(len(idx))}
        for j, i in enumerate(idx):
            row = rows[i]
            for column, name in SUMMARY_OF.items():
                want = float(computed[name][j])
                given = row.get(column)
                if given is None:
                    fills.setdefault(i, {})[column] = want
                elif not math.isclose(given, want, rel_tol=SUMMARY_RTOL, abs_tol=1e-12):
                    raise ConfigError(f"{where(i)}: column '{column}' is {given!r} but its samples_ms give "
                                      f"{want!r}; a summary must agree with the raw samples it summarizes",
                                      file=where.file)
            if row.get("n_samples") is None:
                fills.setdefault(i, {})["n_samples"] = n
    return fills


def check_rows(rows: Sequence[Mapping[str, Any]], file: str,
               lines: Sequence[int | None] | None = None) -> dict[int, dict[str, Any]]:
    """Validate every row of an import file; ConfigError naming the file, the row (and line) and the column.
    Returns the summaries to fill in, by row index (see `check_summaries`)."""

    class Where:
        def __init__(self) -> None:
            self.file = file

        def __call__(self, i: int) -> str:
            line = lines[i] if lines is not None and i < len(lines) else None
            return f"row {i + 1}" + (f" (line {line})" if line else "")

    where = Where()
    seen: dict[Any, None] = {}
    for i, row in enumerate(rows):
        try:
            check_row(row, seen)
        except _RowError as exc:
            raise ConfigError(f"{where(i)}: column '{exc.column}' {exc}", file=file) from None
    return check_summaries(rows, where)


# -- grafting onto stored runs ---------------------------------------------------------------------------
@dataclass
class StoredRun:
    """What the database holds of one run the import file also names."""

    started_at: Any
    harness_version: str | None
    git_revision: str | None
    matrix_name: str | None
    devices: dict[str, str | None]  # device name -> env_key of its fingerprint
    cases: set[tuple[str, str]]     # (device, case hash) stored


def graft_problem(run_id: str, stored: StoredRun, file_run: Mapping[str, Any],
                  file_pairs: Iterable[tuple[str, str]], file_env: Mapping[str, str | None],
                  merge: bool) -> str | None:
    """Why importing these rows into a stored run would change what that run is, or None.

    A run already stored keeps its identity (start time, harness version and revision, matrix): rows that
    disagree belong to another run that reused the id. Rows for (device, case) pairs the run already holds
    are skipped by the merge. New devices or new cases change the run: refused unless `merge`, and then
    only where the device's fingerprint in the file agrees with the stored one."""
    for field, ours, theirs in (("started_at", stored.started_at, file_run.get("started_at")),
                                ("harness_version", stored.harness_version, file_run.get("harness_version")),
                                ("git_revision", stored.git_revision, file_run.get("git_revision")),
                                ("matrix", stored.matrix_name, file_run.get("matrix_name"))):
        if theirs is not None and ours is not None and theirs != ours:
            return (f"run {run_id} is already stored with {field} {ours!s:.40} but the file says {theirs!s:.40}: "
                    "it is another run under the same id; nothing was imported")
    new_devices = sorted({d for d, _ in file_pairs if d not in stored.devices})
    new_cases = sorted({(d, h) for d, h in file_pairs if d in stored.devices and (d, h) not in stored.cases})
    if not new_devices and not new_cases:
        return None
    what = []
    if new_devices:
        what.append(f"device(s) {', '.join(new_devices)}")
    if new_cases:
        what.append(f"{len(new_cases)} case(s) it did not run on {', '.join(sorted({d for d, _ in new_cases}))}")
    change = f"the file adds {' and '.join(what)} to run {run_id}, which is already stored"
    if not merge:
        return f"{change}; pass --merge to add them (the devices' fingerprints must agree)"
    for device in sorted({d for d, _ in new_cases}):
        ours, theirs = stored.devices.get(device), file_env.get(device)
        if ours is None or theirs is None or ours != theirs:
            return (f"{change}, and {device}'s fingerprint in the file "
                    f"{'is missing' if theirs is None else 'differs from the stored one' if ours else 'cannot be checked (none stored)'}"
                    "; results from another environment cannot join this run")
    return None
