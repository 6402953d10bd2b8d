"""Export and import: one row per (run, device, case), the columns SPEC.md lists, CSV or JSON.

Export then import into an empty database then export again gives the same rows: raw samples travel in
`samples_ms`, the device's environment in `fingerprint`, the run's identity in `run_id`. Import merges
into a database that already has other runs and skips rows it already holds (by run, device and case), so
histories from several labs merge without duplicates. Empty cells mean "not measured", never zero.

Import validates every row before it writes anything, then hands the rows to `Store.merge`: one
transaction per file, the engine's bulk path (executemany on SQLite, COPY on PostgreSQL). Export reads runs,
devices and cases once and streams measurements with their samples in one query.
"""

from __future__ import annotations

import csv
import io
import json
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import select

from workloads.errors import ConfigError
from workloads.spec import CASE_COLUMNS, CaseKeyError, canonical_case, case_hash

from .models import Case, Device, Measurement, Run, RunDevice, SampleSet
from .store import IN_CHUNK, MEASUREMENT_VALUE_COLUMNS, MergeRow, Store, select_in, unpack_samples

RUN_COLUMNS = ("run_id", "started_at", "finished_at", "run_status", "matrix", "tag", "harness_version",
               "git_revision")
MEASUREMENT_COLUMNS = (
    "device", "status", "error", "case_hash", *CASE_COLUMNS,
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_std", "n_samples",
    "inner_loops", "threads_used", "peak_mem_mb", "kv_bytes", "input_bytes",
    "energy_mj_per_inf", "power_w_avg", "idle_power_w", "power_source", "is_estimate",
    "cos_sim", "rel_err", "max_abs_err", "rmse", "throttled", "cpu_other", "contended", "measured_at",
    "measured_until",
)
EXTRA_COLUMNS = ("samples_ms", "details", "fingerprint", "matrix_text", "measure")
COLUMNS = RUN_COLUMNS + MEASUREMENT_COLUMNS + EXTRA_COLUMNS
JSON_COLUMNS = {"samples_ms", "details", "fingerprint", "measure"}
INT_COLUMNS = {"seq_len", "batch", "heads", "head_dim", "model_dim", "threads", "window", "block_size", "topk",
               "rank", "depth", "group_size", "slowdown", "n_samples", "inner_loops", "threads_used", "kv_bytes",
               "input_bytes"}
FLOAT_COLUMNS = {"density", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
                 "latency_ms_std", "peak_mem_mb", "energy_mj_per_inf", "power_w_avg", "idle_power_w", "cos_sim",
                 "rel_err", "max_abs_err", "rmse", "cpu_other"}
BOOL_COLUMNS = {"is_estimate", "throttled", "contended"}
TIME_COLUMNS = {"started_at", "finished_at", "measured_at", "measured_until"}


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
    case_keys = {cid: (h, {key: params.get(key) for key in CASE_COLUMNS}) for cid, (h, params) in cases.items()}
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


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if column in JSON_COLUMNS:
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest repr round-trips exactly
    return str(value)


def write_csv(rows: list[dict[str, Any]], fh: io.TextIOBase | Any) -> None:
    writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c), c) for c in COLUMNS})


def write_json(rows: list[dict[str, Any]], fh: Any) -> None:
    json.dump(rows, fh, indent=1, sort_keys=False)
    fh.write("\n")


def _typed(value: Any, column: str, where: str) -> Any:
    """A CSV cell (or JSON value) back to its type; '' is None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value
    try:
        if column in JSON_COLUMNS:
            return json.loads(value)
        if column in INT_COLUMNS:
            return int(value)
        if column in FLOAT_COLUMNS:
            return float(value)
        if column in BOOL_COLUMNS:
            if value not in ("true", "false"):
                raise ValueError(value)
            return value == "true"
    except ValueError:
        raise ConfigError(f"column '{column}' has {value!r}, which is not a valid value", file=where,
                          key=column) from None
    return value


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows from a file `export` wrote (format by extension or content)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    if text.lstrip().startswith("["):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg}", file=path, line=exc.lineno) from None
    else:
        raw = list(csv.DictReader(io.StringIO(text)))
    if not isinstance(raw, list):
        raise ConfigError("expected a list of rows as `harness results export` writes", file=path)
    rows = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise ConfigError(f"row {i + 1} is not an object", file=path)
        missing = [c for c in ("run_id", "device", "status", "variant", "precision") if c not in r]
        if missing:
            raise ConfigError(f"row {i + 1} lacks column(s) {', '.join(missing)}; import reads what "
                              "`harness results export` writes", file=path, key=missing[0])
        rows.append({c: _typed(r.get(c), c, path) for c in COLUMNS if c in r})
    return rows


# Where each Measurement column comes from in an exported row (MEASUREMENT_VALUE_COLUMNS order).
_ROW_KEY_OF_COLUMN = {"threads": "threads_used", "started_at": "measured_at", "finished_at": "measured_until"}
_ROW_KEYS = tuple(_ROW_KEY_OF_COLUMN.get(c, c) for c in MEASUREMENT_VALUE_COLUMNS)
_TIME_AT = tuple(i for i, c in enumerate(MEASUREMENT_VALUE_COLUMNS) if c in ("started_at", "finished_at"))


def import_rows(store: Store, rows: list[dict[str, Any]], file: str = "<import>") -> dict[str, int]:
    """Merge rows into the store in one transaction; returns counts of runs and measurements added/skipped.

    Every row is validated before anything is written. A run keeps its id (histories from several labs
    merge by it); a row whose (run, device, case) is already stored, or repeated in the file, is skipped."""
    runs: dict[str, dict[str, Any]] = {}
    parts: dict[tuple[str, str], dict[str, Any]] = {}
    merge_rows: list[MergeRow] = []
    canonical: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}  # a file repeats few distinct cases
    for i, row in enumerate(rows):
        get = row.get
        raw_key = tuple(map(get, CASE_COLUMNS))
        found = canonical.get(raw_key)
        if found is None:
            raw_case = {k: v for k, v in zip(CASE_COLUMNS, raw_key) if v is not None}
            try:
                case = canonical_case(raw_case)
            except CaseKeyError as exc:
                raise ConfigError(f"row {i + 1}: {exc}", file=file, key=exc.key) from None
            found = canonical[raw_key] = (case, case_hash(case))
        run_id = row["run_id"]
        if run_id not in runs:
            runs[run_id] = {"started_at": _parse_time(get("started_at")),
                            "finished_at": _parse_time(get("finished_at")), "status": get("run_status"),
                            "matrix_name": get("matrix"), "matrix_text": get("matrix_text"),
                            "measure": get("measure"), "tag": get("tag"),
                            "harness_version": get("harness_version"), "git_revision": get("git_revision")}
        device = row["device"]
        if (run_id, device) not in parts:
            parts[(run_id, device)] = {"fingerprint": get("fingerprint"), "idle_power_w": get("idle_power_w"),
                                       "power_source": get("power_source"), "status": "complete"}
        values = list(map(get, _ROW_KEYS))
        for at in _TIME_AT:
            values[at] = _parse_time(values[at])
        if row["status"] is None:
            raise ConfigError(f"row {i + 1} has no status", file=file, key="status")
        samples = get("samples_ms")
        try:
            blob = struct.pack(f"<{len(samples)}d", *samples) if samples else None
        except (struct.error, TypeError):
            raise ConfigError(f"row {i + 1}: samples_ms must be a list of numbers", file=file,
                              key="samples_ms") from None
        merge_rows.append(MergeRow(run_id, device, found[0], found[1], tuple(values), blob))
    counts = store.merge(runs, parts, merge_rows)
    return {"runs_added": counts.runs_added, "measurements_added": counts.measurements_added,
            "measurements_skipped": counts.measurements_skipped}
