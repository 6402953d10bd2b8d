"""Export and import: one row per (run, device, case), the columns SPEC.md lists, CSV or JSON.

Export then import into an empty database then export again gives the same rows: raw samples travel in
`samples_ms`, the device's environment in `fingerprint`, the run's identity in `run_id`. Import merges
into a database that already has other runs and skips rows it already holds (by run, device and case), so
histories from several labs merge without duplicates. Empty cells mean "not measured", never zero. JSON
never holds NaN or Infinity; CSV text cells that a spreadsheet would run as a formula are neutralised
with a leading `'` on export and restored on import.

Import reads the file through the same bounded reader as every input (`workloads.yamlload.read_text`:
regular files only, a size cap, UTF-8), validates every row before it writes anything
(`results.validate`), refuses rows that would graft devices or cases onto a run already stored unless
`merge`, then hands the rows to `Store.merge`: one transaction per file, the engine's bulk path (executemany on SQLite, COPY on PostgreSQL). Export reads runs,
devices and cases once and streams measurements with their samples in one query.
"""

from __future__ import annotations

import csv
import io
import json
import math
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import select

from harness.safe_text import spreadsheet_cell, spreadsheet_restore
from workloads.errors import ConfigError
from workloads.spec import (CASE_COLUMNS, KNOBS_COLUMN, PUBLIC_CASE_COLUMNS, VARIANTS, CaseKeyError, canonical_case,
                            case_hash, extra_keys)
from workloads.yamlload import read_text

from .models import Case, Device, Measurement, Run, RunDevice, SampleSet
from .store import IN_CHUNK, MEASUREMENT_VALUE_COLUMNS, MergeRow, Store, select_in, unpack_samples
from .validate import StoredRun, check_rows, graft_problem

RUN_COLUMNS = ("run_id", "started_at", "finished_at", "run_status", "matrix", "tag", "harness_version",
               "git_revision")
MEASUREMENT_COLUMNS = (
    "device", "status", "error", "case_hash", *CASE_COLUMNS, KNOBS_COLUMN,
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_std", "n_samples",
    "inner_loops", "threads_used", "peak_mem_mb", "kv_bytes", "input_bytes",
    "energy_mj_per_inf", "power_w_avg", "idle_power_w", "power_source", "is_estimate",
    "cos_sim", "rel_err", "max_abs_err", "rmse", "throttled", "cpu_other", "contended", "measured_at",
    "measured_until",
)
EXTRA_COLUMNS = ("samples_ms", "details", "fingerprint", "matrix_text", "measure")
COLUMNS = RUN_COLUMNS + MEASUREMENT_COLUMNS + EXTRA_COLUMNS
# Test-only case keys (`workloads.spec.KeySpec.hidden`): written only when a row uses them.
HIDDEN_COLUMNS = tuple(c for c in CASE_COLUMNS if c not in PUBLIC_CASE_COLUMNS)


def columns_for(rows: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The export columns of these rows: every column, but a hidden one only if some row has a value in it."""
    rows = list(rows)
    used = {c for c in HIDDEN_COLUMNS if any(r.get(c) is not None for r in rows)}
    return tuple(c for c in COLUMNS if c not in HIDDEN_COLUMNS or c in used)
JSON_COLUMNS = {"samples_ms", "details", "fingerprint", "measure", KNOBS_COLUMN}
INT_COLUMNS = {"seq_len", "batch", "heads", "head_dim", "model_dim", "threads", "window", "block_size", "topk",
               "rank", "depth", "group_size", "slowdown", "n_samples", "inner_loops", "threads_used", "kv_bytes",
               "input_bytes"}
FLOAT_COLUMNS = {"density", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
                 "latency_ms_std", "peak_mem_mb", "energy_mj_per_inf", "power_w_avg", "idle_power_w", "cos_sim",
                 "rel_err", "max_abs_err", "rmse", "cpu_other"}
BOOL_COLUMNS = {"is_estimate", "throttled", "contended"}
TIME_COLUMNS = {"started_at", "finished_at", "measured_at", "measured_until"}
REQUIRED_COLUMNS = ("run_id", "device", "status", "variant", "precision")
# Largest import file read (`harness results import --max-size` changes it): 100,000 rows with their raw
# samples, fingerprints and matrices are about 400 MB of JSON.
IMPORT_MAX_BYTES = 1_000_000_000


def _iso(t: datetime | None) -> str | None:
    # Stored times are naive UTC: same text as t.replace(tzinfo=timezone.utc).isoformat(), at half the cost.
    return t.isoformat() + "+00:00" if t else None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    if text.endswith("+00:00"):  # what export writes: UTC already, parsed without building a tz-aware value
        return datetime.fromisoformat(text[:-6])
    t = datetime.fromisoformat(text)
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def export_rows(store: Store, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Rows for the given runs (all runs when None), ordered by run start, device, measurement.

    Runs, devices, cases and each device's part in a run are read once into maps; measurements and their
    samples stream in one joined query (no query per row), so exporting 100,000 rows takes seconds."""
    m, smp = Measurement.__table__, SampleSet.__table__
    ids = None if run_ids is None else list(run_ids)
    with store.Session() as s:
        run_q = select(Run.id, Run.started_at, Run.finished_at, Run.status, Run.matrix_name, Run.tag,
                       Run.harness_version, Run.git_revision, Run.matrix_text, Run.measure)
        rd_q = select(RunDevice.run_id, RunDevice.device_id, RunDevice.idle_power_w, RunDevice.fingerprint)
        if ids is None:
            runs = {r[0]: r for r in s.execute(run_q)}
            parts = {(r[0], r[1]): r for r in s.execute(rd_q)}
        else:
            runs = {r[0]: r for r in select_in(s, run_q, Run.id, ids)}
            parts = {(r[0], r[1]): r for r in select_in(s, rd_q, RunDevice.run_id, ids)}
        devices = dict(s.execute(select(Device.id, Device.name)).all())
        cases = {cid: (h, params) for cid, h, params in s.execute(select(Case.id, Case.hash, Case.params))}
        query = (select(m, smp.c["values"])
                 .join(Run.__table__, Run.id == m.c.run_id)
                 .join(Device.__table__, Device.id == m.c.device_id)
                 .outerjoin(smp, smp.c.measurement_id == m.c.id)
                 .order_by(Run.started_at, Run.id, Device.name, m.c.id))
        chunks = [None] if ids is None else [ids[i:i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]
        result_rows = []
        for chunk in chunks:
            q = query if chunk is None else query.where(m.c.run_id.in_(chunk))
            result_rows.extend(s.connection().execute(q).mappings().all())  # Core rows, fetched at once
    if ids is not None and len(chunks) > 1:  # chunks each come sorted; restore the global order
        result_rows.sort(key=lambda r: (runs[r["run_id"]][1], r["run_id"], devices[r["device_id"]], r["id"]))
    run_head = {rid: {"run_id": run[0], "started_at": _iso(run[1]), "finished_at": _iso(run[2]),
                      "run_status": run[3], "matrix": run[4], "tag": run[5], "harness_version": run[6],
                      "git_revision": run[7]} for rid, run in runs.items()}
    # A plugin variant's knobs are no columns of their own: they travel as one JSON object.
    case_keys = {cid: (h, {**{key: params.get(key) for key in CASE_COLUMNS},
                           KNOBS_COLUMN: extra_keys(params) or None}) for cid, (h, params) in cases.items()}
    rows = []
    for r in result_rows:
        run = runs[r["run_id"]]
        rd = parts.get((r["run_id"], r["device_id"]))
        h, keys = case_keys[r["case_id"]]
        row: dict[str, Any] = dict(run_head[r["run_id"]])
        row.update(device=devices[r["device_id"]], status=r["status"], error=r["error"], case_hash=h)
        row.update(keys)
        blob = r["values"]
        row.update({
            "latency_ms_p50": r["latency_ms_p50"], "latency_ms_p90": r["latency_ms_p90"],
            "latency_ms_p99": r["latency_ms_p99"], "latency_ms_mean": r["latency_ms_mean"],
            "latency_ms_std": r["latency_ms_std"], "n_samples": r["n_samples"], "inner_loops": r["inner_loops"],
            "threads_used": r["threads"], "peak_mem_mb": r["peak_mem_mb"], "kv_bytes": r["kv_bytes"],
            "input_bytes": r["input_bytes"], "energy_mj_per_inf": r["energy_mj_per_inf"],
            "power_w_avg": r["power_w_avg"], "idle_power_w": rd[2] if rd else None,
            "power_source": r["power_source"], "is_estimate": r["is_estimate"], "cos_sim": r["cos_sim"],
            "rel_err": r["rel_err"], "max_abs_err": r["max_abs_err"], "rmse": r["rmse"], "throttled": r["throttled"],
            "cpu_other": r["cpu_other"], "contended": r["contended"],
            "measured_at": _iso(r["started_at"]), "measured_until": _iso(r["finished_at"]),
            "samples_ms": unpack_samples(blob) if blob is not None else None,
            "details": r["details"], "fingerprint": rd[3] if rd else None,
            "matrix_text": run[8], "measure": run[9],
        })
        rows.append(row)
    return rows


def _finite_json(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities (which JSON cannot hold) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except ValueError:  # a NaN kept in details (a kernel's NaN accuracy): null in the file
        return json.dumps(_finite_json(value), sort_keys=True, allow_nan=False)


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if column in JSON_COLUMNS:
        return spreadsheet_cell(_json_text(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""  # shortest repr round-trips exactly
    if column in INT_COLUMNS or column in FLOAT_COLUMNS:
        return str(value)
    return spreadsheet_cell(str(value))


def write_csv(rows: list[dict[str, Any]], fh: io.TextIOBase | Any) -> None:
    """CSV as SPEC.md lists the columns. Text cells a spreadsheet would read as a formula (starting with
    = + - @, tab or CR) get a leading `'` (`harness.safe_text.spreadsheet_cell`); import removes it."""
    columns = columns_for(rows)
    writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c), c) for c in columns})


def write_json(rows: list[dict[str, Any]], fh: Any) -> None:
    """A JSON list of rows; never NaN or Infinity (JSON has neither: they are written as null)."""
    hidden = [c for c in HIDDEN_COLUMNS if c not in columns_for(rows)]
    if hidden:
        rows = [{k: v for k, v in r.items() if k not in hidden} for r in rows]
    try:
        text = json.dumps(rows, indent=1, sort_keys=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite_json(rows), indent=1, sort_keys=False, allow_nan=False)
    fh.write(text)
    fh.write("\n")


class _NotFinite(ValueError):
    def __init__(self, constant: str) -> None:
        super().__init__(constant)
        self.constant = constant


def _reject_constant(constant: str) -> Any:
    raise _NotFinite(constant)


def _json_loads(text: str) -> Any:
    """json.loads that refuses NaN/Infinity (Python's json accepts them; JSON does not)."""
    return json.loads(text, parse_constant=_reject_constant)


def _typed(value: Any, column: str, where: str, csv_cell: bool = False, file: str | None = None,
           line: int | None = None) -> Any:
    """A CSV cell (or JSON value) back to its type; '' is None. CSV text cells lose the mark export added."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value
    try:
        if column in JSON_COLUMNS:
            return _json_loads(spreadsheet_restore(value) if csv_cell else value)
        if column in INT_COLUMNS:
            return int(value)
        if column in FLOAT_COLUMNS:
            return float(value)
        if column in BOOL_COLUMNS:
            if value not in ("true", "false"):
                raise ValueError(value)
            return value == "true"
    except _NotFinite as exc:
        raise ConfigError(f"{where}: column '{column}' holds {exc.constant}, which JSON does not allow",
                          file=file, line=line) from None
    except RecursionError:
        raise ConfigError(f"{where}: column '{column}' is nested too deeply", file=file, line=line) from None
    except ValueError:
        raise ConfigError(f"{where}: column '{column}' has {value[:80]!r}, which is not a valid value",
                          file=file, line=line) from None
    return spreadsheet_restore(value) if csv_cell else value


class Rows(list):  # type: ignore[type-arg]
    """The rows of an import file, with the line each starts on (for messages)."""

    lines: list[int | None]


def _where(i: int, line: int | None) -> str:
    return f"row {i + 1}" + (f" (line {line})" if line else "")


def read_rows(path: str, *, max_bytes: int = IMPORT_MAX_BYTES, device: str | None = None,
              tag: str | None = None) -> Rows:
    """Rows from a file `export` wrote: JSON (a list of objects) or CSV, by extension, else by content;
    or from a pyperf or pytest-benchmark JSON file (`results.interop`: one new run on `device`, tagged
    `tag`, its benchmarks cases of variant external).

    Refuses, before anything is written: a path that is not a regular file, a file over `max_bytes`,
    text that is not UTF-8, JSON with NaN/Infinity or that is not a list of objects, CSV that does not
    parse, columns export never writes, rows without the columns every row needs. Values are typed here;
    `import_rows` checks their ranges."""
    try:
        text = read_text(path, max_bytes=max_bytes, what="results file",
                         missing_hint="give a file `harness results export` wrote")
        lower = path.lower()
        is_json = lower.endswith(".json") or (not lower.endswith(".csv") and text.lstrip()[:1] in ("[", "{"))
        if is_json:
            raw, lines = _read_json(text, path), None
            if isinstance(raw, dict):
                from .interop import foreign_rows

                raw = foreign_rows(raw, text.encode(), path, device=device, tag=tag)
            elif device is not None or tag is not None:
                raise ConfigError("--device and --tag are for pyperf and pytest-benchmark files; a harness export "
                                  "keeps its own devices and tags", file=path)
        else:
            raw, lines = _read_csv(text, path, max_bytes)
    except MemoryError:
        raise ConfigError("does not fit in memory; split it into smaller exports (one run each: "
                          "`harness results export RUN`)", file=path) from None
    rows = Rows()
    rows.lines = lines or [None] * len(raw)
    known = set(COLUMNS)
    for i, r in enumerate(raw):
        line = rows.lines[i]
        if not isinstance(r, dict):
            raise ConfigError(f"row {i + 1} is not an object with the export columns", file=path, line=line)
        unknown = [str(c) for c in r if c not in known]
        if unknown:
            raise ConfigError(f"row {i + 1} has column(s) export never writes: {', '.join(unknown[:5])}; import "
                              "reads what `harness results export` writes", file=path, line=line, key=unknown[0])
        missing = [c for c in REQUIRED_COLUMNS if c not in r]
        if missing:
            raise ConfigError(f"row {i + 1} lacks column(s) {', '.join(missing)}; import reads what "
                              "`harness results export` writes", file=path, line=line, key=missing[0])
        where = _where(i, line)
        rows.append({c: _typed(v, c, where, csv_cell=lines is not None, file=path) for c, v in r.items()})
    return rows


def _read_json(text: str, path: str) -> list[Any] | dict[str, Any]:
    try:
        raw = _json_loads(text)
    except _NotFinite as exc:
        at = text.find(exc.constant)
        raise ConfigError(f"holds {exc.constant}, which JSON does not allow (export writes null)", file=path,
                          line=text.count("\n", 0, at) + 1 if at >= 0 else None) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc.msg}", file=path, line=exc.lineno) from None
    except RecursionError:
        raise ConfigError("not a results file: JSON nested too deeply", file=path) from None
    except ValueError as exc:  # an integer literal beyond Python's digit limit, say
        why = "an integer with thousands of digits" if "digits" in str(exc) else str(exc)
        raise ConfigError(f"not valid JSON: {why}", file=path) from None
    if not isinstance(raw, (list, dict)):
        raise ConfigError(f"expected a JSON list of rows as `harness results export --format json` writes, got "
                          f"{type(raw).__name__}", file=path, line=1)
    return raw  # type: ignore[no-any-return]


def _read_csv(text: str, path: str, max_bytes: int) -> tuple[list[dict[str, Any]], list[int | None]]:
    # A raw-samples cell can be far over csv's default 128 KB field limit; the file cap bounds it instead.
    csv.field_size_limit(max(max_bytes, 131072))
    reader = csv.reader(io.StringIO(text, newline=""))
    raw: list[dict[str, Any]] = []
    lines: list[int | None] = []
    try:
        header = next(reader, None)
        if not header or header == [""]:
            raise ConfigError("is empty: no CSV header; give a file `harness results export` wrote", file=path)
        dupes = sorted({c for c in header if header.count(c) > 1})
        if dupes:
            raise ConfigError(f"the CSV header names column(s) twice: {', '.join(dupes[:5])}", file=path, line=1)
        start = reader.line_num + 1
        for cells in reader:
            if not cells:
                start = reader.line_num + 1
                continue
            if len(cells) != len(header):
                raise ConfigError(f"row {len(raw) + 1} has {len(cells)} cells but the header has {len(header)}",
                                  file=path, line=start)
            raw.append(dict(zip(header, cells)))
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ConfigError(f"not valid CSV: {exc}", file=path, line=reader.line_num or None) from None
    return raw, lines


# Where each Measurement column comes from in an exported row (MEASUREMENT_VALUE_COLUMNS order).
_ROW_KEY_OF_COLUMN = {"threads": "threads_used", "started_at": "measured_at", "finished_at": "measured_until"}
_ROW_KEYS = tuple(_ROW_KEY_OF_COLUMN.get(c, c) for c in MEASUREMENT_VALUE_COLUMNS)
_TIME_AT = tuple(i for i, c in enumerate(MEASUREMENT_VALUE_COLUMNS) if c in ("started_at", "finished_at"))


@dataclass
class PreparedImport:
    """Validated rows, ready to merge: what `prepare_import` makes without touching a database."""

    file: str
    runs: dict[str, dict[str, Any]]
    parts: dict[tuple[str, str], dict[str, Any]]
    rows: list[MergeRow]


def import_rows(store: Store, rows: list[dict[str, Any]] | PreparedImport, file: str = "<import>", *,
                merge: bool = False) -> dict[str, int]:
    """Merge rows into the store in one transaction; returns counts of runs and measurements added/skipped.

    Every row is validated before anything is written (`prepare_import`). A run keeps its id (histories
    from several labs merge by it); a row whose (run, device, case) is already stored, or repeated in the
    file, is skipped. Rows that would add devices or cases to a run already stored are refused unless
    `merge` (and then the devices' fingerprints must agree): an import never rewrites what a run was."""
    prepared = rows if isinstance(rows, PreparedImport) else prepare_import(rows, file)
    _check_grafts(store, prepared.runs, prepared.parts, prepared.rows, prepared.file, merge)
    counts = store.merge(prepared.runs, prepared.parts, prepared.rows)
    return {"runs_added": counts.runs_added, "measurements_added": counts.measurements_added,
            "measurements_skipped": counts.measurements_skipped}


def prepare_import(rows: list[dict[str, Any]], file: str = "<import>") -> PreparedImport:
    """Validate every row (`results.validate.check_rows`: types, ranges, statuses, summaries against raw
    samples; then case keys and times) and build what `Store.merge` takes. No database is touched, so a
    bad file is refused before one is opened (or created)."""
    lines = getattr(rows, "lines", None)
    fills = check_rows(rows, file, lines)

    def where(i: int) -> str:
        line = lines[i] if lines is not None and i < len(lines) else None
        return f"row {i + 1}" + (f" (line {line})" if line else "")

    runs: dict[str, dict[str, Any]] = {}
    parts: dict[tuple[str, str], dict[str, Any]] = {}
    merge_rows: list[MergeRow] = []
    canonical: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}  # a file repeats few distinct cases
    for i, row in enumerate(rows):
        get = row.get
        knobs = get(KNOBS_COLUMN) or {}
        raw_key = (*map(get, CASE_COLUMNS), *sorted(knobs.items()))
        found = canonical.get(raw_key)
        if found is None:
            raw_case = {k: v for k, v in zip(CASE_COLUMNS, raw_key) if v is not None}
            raw_case.update(knobs)
            try:
                # A plugin's variant and knobs are kept as stored (no plugin is ever loaded for an import);
                # then the case must be the one its hash names.
                case = canonical_case(raw_case, unknown_ok=True)
            except CaseKeyError as exc:
                raise ConfigError(f"{where(i)}: {exc}", file=file, key=exc.key) from None
            found = canonical[raw_key] = (case, case_hash(case))
            if (knobs or case["variant"] not in VARIANTS) and get("case_hash") not in (None, found[1]):
                raise ConfigError(f"{where(i)}: column 'case_hash' is {get('case_hash')!r} but the case keys and "
                                  f"{KNOBS_COLUMN} give {found[1]!r}", file=file, key="case_hash")
        run_id = row["run_id"]
        try:
            if run_id not in runs:
                runs[run_id] = {"started_at": _parse_time(get("started_at")),
                                "finished_at": _parse_time(get("finished_at")), "status": get("run_status"),
                                "matrix_name": get("matrix"), "matrix_text": get("matrix_text"),
                                "measure": get("measure"), "tag": get("tag"),
                                "harness_version": get("harness_version"), "git_revision": get("git_revision")}
            values = list(map(get, _ROW_KEYS))
            for at in _TIME_AT:
                values[at] = _parse_time(values[at])
        except (ValueError, TypeError, OverflowError):
            raise ConfigError(f"{where(i)}: a time column is not an ISO 8601 time such as "
                              "2026-01-31T02:30:00+00:00", file=file, key="started_at") from None
        device = row["device"]
        if (run_id, device) not in parts:
            parts[(run_id, device)] = {"fingerprint": get("fingerprint"), "idle_power_w": get("idle_power_w"),
                                       "power_source": get("power_source"), "status": "complete"}
        fill = fills.get(i)
        if fill:
            for column, value in fill.items():
                values[_ROW_KEYS.index(column)] = value
        samples = get("samples_ms")
        blob = struct.pack(f"<{len(samples)}d", *samples) if samples else None
        merge_rows.append(MergeRow(run_id, device, found[0], found[1], tuple(values), blob))
    return PreparedImport(file, runs, parts, merge_rows)


def _check_grafts(store: Store, runs: dict[str, dict[str, Any]], parts: dict[tuple[str, str], dict[str, Any]],
                  rows: list[MergeRow], file: str, merge: bool) -> None:
    """Refuse rows that would change a run already stored (see `results.validate.graft_problem`)."""
    from devices.probe import stable

    from .store import env_key

    ids = sorted(runs)
    with store.Session() as s:
        stored = {r[0]: r for r in select_in(s, select(Run.id, Run.started_at, Run.harness_version,
                                                       Run.git_revision, Run.matrix_name), Run.id, ids)}
        if not stored:
            return
        present = sorted(stored)
        devices: dict[str, dict[str, str | None]] = {rid: {} for rid in present}
        for rid, name, key in select_in(s, select(RunDevice.run_id, Device.name, RunDevice.env_key)
                                        .join(Device, Device.id == RunDevice.device_id), RunDevice.run_id, present):
            devices[rid][name] = key
        cases: dict[str, set[tuple[str, str]]] = {rid: set() for rid in present}
        for rid, name, h in select_in(s, select(Measurement.run_id, Device.name, Case.hash)
                                      .join(Device, Device.id == Measurement.device_id)
                                      .join(Case, Case.id == Measurement.case_id), Measurement.run_id, present):
            cases[rid].add((name, h))
    pairs: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        if r.run_id in stored:
            pairs.setdefault(r.run_id, set()).add((r.device, r.case_hash))
    for rid in present:
        _, started, version, revision, matrix = stored[rid]
        env = {d: (env_key(stable(p["fingerprint"])) if p.get("fingerprint") else None)
               for (run, d), p in parts.items() if run == rid}
        problem = graft_problem(rid, StoredRun(started, version, revision, matrix, devices[rid], cases[rid]),
                                runs[rid], pairs.get(rid, set()), env, merge)
        if problem:
            raise ConfigError(problem, file=file, key="run_id")
