"""Export and import: one row per (run, device, case), the columns SPEC.md lists, CSV or JSON.

Export then import into an empty database then export again gives the same rows: raw samples travel in
`samples_ms`, the device's environment in `fingerprint`, the run's identity in `run_id`. Import merges
into a database that already has other runs and skips rows it already holds (by run, device and case), so
histories from several labs merge without duplicates. Empty cells mean "not measured", never zero.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import select

from workloads.errors import ConfigError
from workloads.spec import CASE_COLUMNS, canonical_case, CaseKeyError

from .models import Case, Device, Measurement, Run, RunDevice, SampleSet
from .store import Store, pack_samples, unpack_samples

RUN_COLUMNS = ("run_id", "started_at", "finished_at", "run_status", "matrix", "tag", "harness_version",
               "git_revision")
MEASUREMENT_COLUMNS = (
    "device", "status", "error", "case_hash", *CASE_COLUMNS,
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_std", "n_samples",
    "inner_loops", "threads_used", "peak_mem_mb", "kv_bytes", "input_bytes",
    "energy_mj_per_inf", "power_w_avg", "idle_power_w", "power_source", "is_estimate",
    "cos_sim", "rel_err", "max_abs_err", "rmse", "throttled", "measured_at", "measured_until",
)
EXTRA_COLUMNS = ("samples_ms", "details", "fingerprint", "matrix_text", "measure")
COLUMNS = RUN_COLUMNS + MEASUREMENT_COLUMNS + EXTRA_COLUMNS
JSON_COLUMNS = {"samples_ms", "details", "fingerprint", "measure"}
INT_COLUMNS = {"seq_len", "batch", "heads", "head_dim", "model_dim", "threads", "window", "block_size", "topk",
               "rank", "depth", "group_size", "slowdown", "n_samples", "inner_loops", "threads_used", "kv_bytes",
               "input_bytes"}
FLOAT_COLUMNS = {"density", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
                 "latency_ms_std", "peak_mem_mb", "energy_mj_per_inf", "power_w_avg", "idle_power_w", "cos_sim",
                 "rel_err", "max_abs_err", "rmse"}
BOOL_COLUMNS = {"is_estimate", "throttled"}
TIME_COLUMNS = {"started_at", "finished_at", "measured_at", "measured_until"}


def _iso(t: datetime | None) -> str | None:
    return t.replace(tzinfo=timezone.utc).isoformat() if t else None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    t = datetime.fromisoformat(text)
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def export_rows(store: Store, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Rows for the given runs (all runs when None), ordered by run start, device, case hash."""
    with store.Session() as s:
        query = (select(Measurement, Run, RunDevice, Device, Case)
                 .join(Run, Run.id == Measurement.run_id)
                 .join(Device, Device.id == Measurement.device_id)
                 .join(Case, Case.id == Measurement.case_id)
                 .outerjoin(RunDevice, (RunDevice.run_id == Measurement.run_id)
                            & (RunDevice.device_id == Measurement.device_id)))
        if run_ids is not None:
            query = query.where(Measurement.run_id.in_(list(run_ids)))
        query = query.order_by(Run.started_at, Run.id, Device.name, Measurement.id)
        rows = []
        for m, run, rd, device, case in s.execute(query):
            samples = s.get(SampleSet, m.id)
            row: dict[str, Any] = {
                "run_id": run.id, "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
                "run_status": run.status, "matrix": run.matrix_name, "tag": run.tag,
                "harness_version": run.harness_version, "git_revision": run.git_revision,
                "device": device.name, "status": m.status, "error": m.error, "case_hash": case.hash,
            }
            for key in CASE_COLUMNS:
                row[key] = case.params.get(key)
            row.update({
                "latency_ms_p50": m.latency_ms_p50, "latency_ms_p90": m.latency_ms_p90,
                "latency_ms_p99": m.latency_ms_p99, "latency_ms_mean": m.latency_ms_mean,
                "latency_ms_std": m.latency_ms_std, "n_samples": m.n_samples, "inner_loops": m.inner_loops,
                "threads_used": m.threads, "peak_mem_mb": m.peak_mem_mb, "kv_bytes": m.kv_bytes,
                "input_bytes": m.input_bytes, "energy_mj_per_inf": m.energy_mj_per_inf,
                "power_w_avg": m.power_w_avg, "idle_power_w": rd.idle_power_w if rd else None,
                "power_source": m.power_source, "is_estimate": m.is_estimate, "cos_sim": m.cos_sim,
                "rel_err": m.rel_err, "max_abs_err": m.max_abs_err, "rmse": m.rmse, "throttled": m.throttled,
                "measured_at": _iso(m.started_at), "measured_until": _iso(m.finished_at),
                "samples_ms": unpack_samples(samples.values) if samples else None,
                "details": m.details, "fingerprint": rd.fingerprint if rd else None,
                "matrix_text": run.matrix_text, "measure": run.measure,
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


def import_rows(store: Store, rows: list[dict[str, Any]], file: str = "<import>") -> dict[str, int]:
    """Merge rows into the store in one transaction; returns counts of runs and measurements added/skipped."""
    # Validate everything before writing anything.
    prepared = []
    for i, row in enumerate(rows):
        raw_case = {k: row.get(k) for k in CASE_COLUMNS if row.get(k) is not None}
        try:
            case = canonical_case(raw_case)
        except CaseKeyError as exc:
            raise ConfigError(f"row {i + 1}: {exc}", file=file, key=exc.key) from None
        prepared.append((row, case))
    added = skipped = 0
    new_runs: set[str] = set()
    with store.Session.begin() as s:
        for row, case in prepared:
            run = s.get(Run, row["run_id"])
            if run is None:
                run = Run(id=row["run_id"], started_at=_parse_time(row.get("started_at")) or datetime.now(),
                          finished_at=_parse_time(row.get("finished_at")), status=row.get("run_status") or "complete",
                          matrix_name=row.get("matrix") or "imported", matrix_text=row.get("matrix_text") or "",
                          measure=row.get("measure") or {}, tag=row.get("tag"),
                          harness_version=row.get("harness_version") or "unknown",
                          git_revision=row.get("git_revision"))
                s.add(run)
                s.flush()
                new_runs.add(run.id)
            device_id = store._device_id(s, row["device"])
            rd = s.scalar(select(RunDevice).where(RunDevice.run_id == run.id, RunDevice.device_id == device_id))
            if rd is None:
                from devices.probe import stable
                from .store import env_key

                fp = row.get("fingerprint")
                s.add(RunDevice(run_id=run.id, device_id=device_id, status="complete", fingerprint=fp,
                                env_key=env_key(stable(fp)) if fp else None, idle_power_w=row.get("idle_power_w"),
                                power_source=row.get("power_source")))
            case_id = store._case_id(s, case)
            if s.scalar(select(Measurement.id).where(Measurement.run_id == run.id, Measurement.device_id == device_id,
                                                     Measurement.case_id == case_id)) is not None:
                skipped += 1
                continue
            m = Measurement(
                run_id=run.id, device_id=device_id, case_id=case_id, status=row["status"], error=row.get("error"),
                started_at=_parse_time(row.get("measured_at")), finished_at=_parse_time(row.get("measured_until")),
                latency_ms_p50=row.get("latency_ms_p50"), latency_ms_p90=row.get("latency_ms_p90"),
                latency_ms_p99=row.get("latency_ms_p99"), latency_ms_mean=row.get("latency_ms_mean"),
                latency_ms_std=row.get("latency_ms_std"), n_samples=row.get("n_samples"),
                inner_loops=row.get("inner_loops"), threads=row.get("threads_used"),
                peak_mem_mb=row.get("peak_mem_mb"), kv_bytes=row.get("kv_bytes"), input_bytes=row.get("input_bytes"),
                energy_mj_per_inf=row.get("energy_mj_per_inf"), power_w_avg=row.get("power_w_avg"),
                power_source=row.get("power_source"), is_estimate=row.get("is_estimate"),
                cos_sim=row.get("cos_sim"), rel_err=row.get("rel_err"), max_abs_err=row.get("max_abs_err"),
                rmse=row.get("rmse"), throttled=row.get("throttled"), details=row.get("details"))
            samples = row.get("samples_ms")
            if samples:
                m.samples = SampleSet(n=len(samples), values=pack_samples([float(x) for x in samples]))
            s.add(m)
            added += 1
    return {"runs_added": len(new_runs), "measurements_added": added, "measurements_skipped": skipped}

