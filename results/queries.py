"""Read-side queries over the results database, shared by the CLI and the dashboard.

Every function takes an SQLAlchemy `Engine` (a `Store` works too: its engine is used) and returns
already-aggregated pandas frames: counts, medians and coefficients of variation are computed in SQL
where SQL can, so a page never ships 100,000 measurements to the browser or to pandas. Raw samples are
read only for the handful of measurements a view really needs (a compare, a trend, a histogram).

Nothing here writes. `read_only_engine` opens a database so that it cannot be written by accident
(SQLite `query_only`, PostgreSQL read-only transactions) and never creates a missing SQLite file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, case, func, select

from harness.safe_text import terminal
from workloads.errors import StoreError
from workloads.spec import CASE_COLUMNS, case_label

from .models import SCHEMA_REVISION, Case, Device, Measurement, Run, RunDevice, SampleSet
from .store import make_read_only_engine, unpack_samples
from .validate import BadValue, sample_problem, value_problem

STATUSES = ("ok", "failed", "skipped", "timeout")
# A device whose newest result is older than this is stale: a nightly plus a couple of hours of slack.
STALE_HOURS = 26.0


@dataclass(frozen=True)
class Metric:
    """A stored per-measurement metric: its column, unit and direction (the UI never guesses)."""

    column: str
    title: str
    unit: str
    lower_is_better: bool


METRICS: dict[str, Metric] = {m.column: m for m in (
    Metric("latency_ms_p50", "latency p50", "ms", True),
    Metric("latency_ms_p90", "latency p90", "ms", True),
    Metric("latency_ms_p99", "latency p99", "ms", True),
    Metric("energy_mj_per_inf", "energy per inference", "mJ", True),
    Metric("power_w_avg", "average power", "W", True),
    Metric("peak_mem_mb", "peak memory", "MB", True),
    Metric("cos_sim", "cosine similarity", "", False),
    Metric("rel_err", "relative L1 error", "", True),
    Metric("max_abs_err", "max abs error", "", True),
)}

# Columns of a measurement row shown by tables (no JSON, no samples).
SUMMARY_COLUMNS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_std",
                   "n_samples", "peak_mem_mb", "energy_mj_per_inf", "power_w_avg", "power_source", "is_estimate",
                   "cos_sim", "rel_err", "max_abs_err", "throttled", "cpu_other", "contended")


def _flag(value: Any) -> bool:
    """A stored boolean from a frame: NULL (None or NaN) is False."""
    return bool(value) if value is not None and value == value else False


def engine_of(source: Any) -> Engine:
    """The engine of a `Store`, or the engine itself."""
    return getattr(source, "engine", source)


def read_only_engine(url: str) -> Engine:
    """An engine that cannot write and never creates a database (`results.store.make_read_only_engine`):
    SQLite opened read-only with `PRAGMA query_only` (a read-only mount works), PostgreSQL with read-only
    transactions; another application's database is refused."""
    return make_read_only_engine(url)


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None when it has none)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise StoreError with the fix when the database is not at this harness's schema revision."""
    rev = schema_revision(engine)
    if rev != SCHEMA_REVISION:
        raise StoreError(f"the results database is at schema revision {rev or 'none'}, this harness reads "
                         f"{SCHEMA_REVISION}; run `harness db upgrade --db URL` first")


def _frame(rows: Iterable[Any], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame([tuple(r) for r in rows], columns=list(columns))


def _params(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return json.loads(value) if value else {}


def _case_frame(params: Sequence[Any]) -> pd.DataFrame:
    """Case key columns (CASE_COLUMNS order) and a label from the stored canonical params."""
    dicts = [_params(p) for p in params]
    # object dtype where a key is missing on some rows: pandas would turn the ints into floats (group_size=6.0)
    out = pd.DataFrame({key: pd.Series([d.get(key) for d in dicts],
                                       dtype=None if all(key in d for d in dicts) else object)
                        for key in CASE_COLUMNS})
    out["case"] = [case_label(d) if d else "" for d in dicts]
    return out


# -- runs and devices -------------------------------------------------------------------------------------
def runs(source: Any, limit: int | None = None) -> pd.DataFrame:
    """Runs, newest first, with measurement counts by status and the devices that took part."""
    engine = engine_of(source)
    m = Measurement.__table__
    counts = (select(m.c.run_id, *[func.sum(case((m.c.status == st, 1), else_=0)).label(st) for st in STATUSES],
                     func.count().label("measurements"))
              .group_by(m.c.run_id).subquery())
    q = (select(Run.id, Run.started_at, Run.finished_at, Run.status, Run.matrix_name, Run.tag, Run.harness_version,
                Run.git_revision, *[func.coalesce(counts.c[st], 0) for st in STATUSES],
                func.coalesce(counts.c.measurements, 0))
         .outerjoin(counts, counts.c.run_id == Run.id)
         .order_by(Run.started_at.desc(), Run.id.desc()))
    if limit:
        q = q.limit(limit)
    cols = ["run_id", "started_at", "finished_at", "status", "matrix", "tag", "harness_version", "git_revision",
            *STATUSES, "measurements"]
    with engine.connect() as conn:
        df = _frame(conn.execute(q), cols)
        devs = conn.execute(select(RunDevice.run_id, Device.name).join(Device, Device.id == RunDevice.device_id)
                            .order_by(Device.name)).all()
    by_run: dict[str, list[str]] = {}
    for run_id, name in devs:
        by_run.setdefault(run_id, []).append(name)
    df.insert(4, "devices", [", ".join(by_run.get(r, [])) for r in df["run_id"]])
    emulated = emulated_devices(engine, list(df["run_id"]) if limit else None)
    df.insert(5, "emulated", [", ".join(emulated.get(r, [])) for r in df["run_id"]])
    for st in (*STATUSES, "measurements"):
        df[st] = df[st].astype(int)
    return df


def resolve_run(source: Any, ref: str) -> str:
    """A full run id from a run reference (`results.runref`: an id or unique prefix, tag:NAME or a bare
    tag, latest, latest~N, latest@DEVICE; `previous` is latest~1)."""
    from .runref import resolve

    return resolve(engine_of(source), ref)


def run_devices(source: Any, run_ids: Sequence[str]) -> pd.DataFrame:
    """Each device's part in the given runs: status, error, env_key, fingerprint (dict), idle power."""
    engine = engine_of(source)
    q = (select(RunDevice.run_id, Device.name, RunDevice.status, RunDevice.error, RunDevice.env_key,
                RunDevice.fingerprint, RunDevice.idle_power_w, RunDevice.power_source)
         .join(Device, Device.id == RunDevice.device_id)
         .where(RunDevice.run_id.in_(list(run_ids))).order_by(RunDevice.run_id, Device.name))
    with engine.connect() as conn:
        return _frame(conn.execute(q), ["run_id", "device", "status", "error", "env_key", "fingerprint",
                                        "idle_power_w", "power_source"])


def emulated_devices(source: Any, run_ids: Sequence[str] | None = None) -> dict[str, list[str]]:
    """By run: the devices whose fingerprint says they ran under an emulator (their timings are not a real
    CPU's). Read in SQL from the JSON, so a list of runs does not load every fingerprint."""
    engine = engine_of(source)
    q = (select(RunDevice.run_id, Device.name).join(Device, Device.id == RunDevice.device_id)
         .where(RunDevice.fingerprint["emulated"].as_boolean().is_(True)).order_by(RunDevice.run_id, Device.name))
    if run_ids is not None:
        q = q.where(RunDevice.run_id.in_(list(run_ids)))
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for run_id, name in conn.execute(q):
            out.setdefault(run_id, []).append(name)
    return out


def run_info(source: Any, run_id: str) -> dict[str, Any]:
    """One run's row (as `runs` gives it) or StoreError."""
    engine = engine_of(source)
    with engine.connect() as conn:
        row = conn.execute(select(Run.id, Run.started_at, Run.finished_at, Run.status, Run.matrix_name, Run.tag,
                                  Run.harness_version, Run.git_revision, Run.controller_host, Run.measure)
                           .where(Run.id == run_id)).first()
    if row is None:
        raise StoreError(f"no run {run_id!r} in the database; `harness results list` shows the run ids")
    keys = ("run_id", "started_at", "finished_at", "status", "matrix", "tag", "harness_version", "git_revision",
            "controller_host", "measure")
    return dict(zip(keys, row))


def _ranked_run_devices(last: int | None = None) -> Any:
    """(run_id, device_id, device, started_at, rn): rn = 1 for each device's newest run."""
    rn = func.row_number().over(partition_by=RunDevice.device_id,
                                order_by=(Run.started_at.desc(), Run.id.desc())).label("rn")
    q = (select(RunDevice.run_id, RunDevice.device_id, Device.name.label("device"), Run.started_at, RunDevice.status,
                RunDevice.error, rn)
         .join(Run, Run.id == RunDevice.run_id).join(Device, Device.id == RunDevice.device_id))
    return q.subquery("ranked")


def device_status(source: Any, now: datetime | None = None, stale_hours: float = STALE_HOURS) -> pd.DataFrame:
    """Per device: its newest run with ok/failed/skipped/timeout counts, when it last stored a result, and
    whether it is stale (no result for `stale_hours`; `now` is naive UTC, default the current time)."""
    from .store import utcnow

    engine = engine_of(source)
    now = now or utcnow()
    ranked = _ranked_run_devices()
    m = Measurement.__table__
    latest = select(ranked.c.run_id, ranked.c.device_id, ranked.c.device, ranked.c.started_at, ranked.c.status,
                    ranked.c.error).where(ranked.c.rn == 1).subquery("latest")
    q = (select(latest.c.device, latest.c.run_id, latest.c.started_at, latest.c.status, latest.c.error,
                *[func.sum(case((m.c.status == st, 1), else_=0)).label(st) for st in STATUSES])
         .select_from(latest)
         .outerjoin(m, and_(m.c.run_id == latest.c.run_id, m.c.device_id == latest.c.device_id))
         .group_by(latest.c.device, latest.c.run_id, latest.c.started_at, latest.c.status, latest.c.error)
         .order_by(latest.c.device))
    seen = (select(Device.name, func.max(m.c.finished_at), func.max(Run.started_at))
            .join(m, m.c.device_id == Device.id).join(Run, Run.id == m.c.run_id).group_by(Device.name))
    with engine.connect() as conn:
        df = _frame(conn.execute(q), ["device", "run_id", "started_at", "device_status", "error", *STATUSES])
        last = {name: (fin or start) for name, fin, start in conn.execute(seen)}
    for st in STATUSES:
        df[st] = df[st].fillna(0).astype(int)
    df["last_result_at"] = [last.get(d) for d in df["device"]]
    age = [(now - t).total_seconds() / 3600 if t is not None else math.inf for t in df["last_result_at"]]
    df["hours_since_result"] = [round(a, 1) if math.isfinite(a) else None for a in age]
    df["stale"] = [a > stale_hours for a in age]
    return df


def noise_floor(source: Any, last_runs: int = 10) -> pd.DataFrame:
    """Per device, how noisy repeated measurements are, over its `last_runs` newest runs.

    `run_to_run_cv`: the median over cases of the coefficient of variation of the case's p50 across runs
    (cases measured at least twice); `within_run_cv`: the median over measurements of std/mean of the raw
    samples. Means and squares are summed in SQL; only one row per (device, case) comes back.
    """
    engine = engine_of(source)
    ranked = _ranked_run_devices()
    m = Measurement.__table__
    recent = (select(ranked.c.run_id, ranked.c.device_id, ranked.c.device).where(ranked.c.rn <= last_runs)
              .subquery("recent"))
    ok = and_(m.c.run_id == recent.c.run_id, m.c.device_id == recent.c.device_id, m.c.status == "ok",
              m.c.latency_ms_p50.isnot(None))
    q = (select(recent.c.device, m.c.case_id, func.count(), func.avg(m.c.latency_ms_p50),
                func.avg(m.c.latency_ms_p50 * m.c.latency_ms_p50),
                func.avg(m.c.latency_ms_std / m.c.latency_ms_mean))
         .select_from(recent).join(m, ok).group_by(recent.c.device, m.c.case_id))
    with engine.connect() as conn:
        per_case = _frame(conn.execute(q), ["device", "case_id", "n", "mean", "mean_sq", "within"])
    out = []
    for device, g in per_case.groupby("device", sort=True):
        rep = g[g["n"] >= 2]
        var = (rep["mean_sq"] - rep["mean"] ** 2).clip(lower=0) * rep["n"] / (rep["n"] - 1)
        cv = np.sqrt(var.astype(float)) / rep["mean"].astype(float)
        out.append({"device": device, "cases": int(len(g)), "repeated_cases": int(len(rep)),
                    "run_to_run_cv": float(np.median(cv)) if len(rep) else None,
                    "within_run_cv": float(np.nanmedian(g["within"].astype(float))) if g["within"].notna().any()
                    else None})
    return pd.DataFrame(out, columns=["device", "cases", "repeated_cases", "run_to_run_cv", "within_run_cv"])


# -- measurements -----------------------------------------------------------------------------------------
def measurements(source: Any, run_id: str, device: str | Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (device, case) of a run: case keys, label, status, error and summaries (no samples);
    `device` (a name or a list of names) keeps only those devices."""
    engine = engine_of(source)
    q = (select(Measurement.id, Device.name, Case.hash, Case.params, Measurement.status, Measurement.error,
                *[getattr(Measurement, c) for c in SUMMARY_COLUMNS])
         .join(Device, Device.id == Measurement.device_id).join(Case, Case.id == Measurement.case_id)
         .where(Measurement.run_id == run_id).order_by(Device.name, Case.variant, Case.precision, Case.seq_len,
                                                       Case.hash))
    if isinstance(device, str):
        q = q.where(Device.name == device)
    elif device is not None:
        q = q.where(Device.name.in_(list(device)))
    with engine.connect() as conn:
        raw = _frame(conn.execute(q), ["measurement_id", "device", "case_hash", "params", "status", "error",
                                       *SUMMARY_COLUMNS])
    cases = _case_frame(raw["params"])
    df = pd.concat([raw[["measurement_id", "device", "case_hash"]], cases,
                    raw[["status", "error", *SUMMARY_COLUMNS]]], axis=1)
    df.insert(0, "run_id", run_id)
    return _blank_bad_values(df)


# Summary columns a stored row may hold an impossible value in (databases written before import checked).
_CHECKED = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_std",
            "peak_mem_mb", "energy_mj_per_inf", "power_w_avg", "cos_sim", "rel_err", "max_abs_err")


def _blank_bad_values(df: pd.DataFrame) -> pd.DataFrame:
    """Impossible stored values (NaN, infinite, a latency <= 0, a cosine outside [-1, 1]) become empty, so
    no chart or statistic uses them; `bad_values` says which and why (None where the row is fine)."""
    notes: list[str | None] = [None] * len(df)
    if df.empty:
        df["bad_values"] = pd.Series(dtype=object)
        return df
    status = list(df["status"])
    for column in _CHECKED:
        values = df[column].tolist()
        bad_rows = []
        for i, v in enumerate(values):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                if column == "latency_ms_p50" and status[i] == "ok":
                    bad_rows.append(i)
                    notes[i] = (notes[i] + "; " if notes[i] else "") + f"{column} is empty in an ok row (stored as NaN?)"
                continue
            problem = value_problem(column, v)
            if problem:
                bad_rows.append(i)
                notes[i] = (notes[i] + "; " if notes[i] else "") + f"{column} {problem}"
        if bad_rows:
            df[column] = df[column].astype(float)
            df.loc[df.index[bad_rows], column] = math.nan
    df["bad_values"] = notes
    return df


def bad_value_list(df: pd.DataFrame) -> list[BadValue]:
    """The rows of a `measurements` frame that held impossible values, as BadValue records."""
    if "bad_values" not in df or df.empty:
        return []
    out = []
    for row in df[df["bad_values"].notna()].to_dict(orient="records"):
        out.append(BadValue(str(row["run_id"]), str(row["device"]), str(row.get("case") or row["case_hash"]),
                            "values", str(row["bad_values"])))
    return out


def bad_values(source: Any, limit: int = 1000) -> list[BadValue]:
    """Ok measurements anywhere in the database whose stored summaries are impossible (found in SQL: an
    empty, non-positive or infinite latency, a cosine outside [-1, 1], a negative error or energy)."""
    engine = engine_of(source)
    m = Measurement.__table__
    big = 1e308  # above every finite double but infinity (and, on PostgreSQL, NaN, which sorts above all)
    p50 = m.c.latency_ms_p50
    impossible = ((m.c.status == "ok") & (p50.is_(None) | (p50 <= 0) | (p50 > big))) \
        | (m.c.cos_sim < -1 - 1e-6) | (m.c.cos_sim > 1 + 1e-6) | (m.c.rel_err < 0) | (m.c.rel_err > big) \
        | (m.c.energy_mj_per_inf < 0) | (m.c.energy_mj_per_inf > big)
    q = (select(m.c.run_id, Device.name, Case.params, p50, m.c.cos_sim, m.c.rel_err, m.c.energy_mj_per_inf)
         .join(Device, Device.id == m.c.device_id).join(Case, Case.id == m.c.case_id)
         .where(impossible).order_by(m.c.run_id, Device.name).limit(limit))
    out = []
    with engine.connect() as conn:
        for run_id, device, params, *values in conn.execute(q):
            problems = []
            for column, v in zip(("latency_ms_p50", "cos_sim", "rel_err", "energy_mj_per_inf"), values):
                problem = "is empty in an ok row (stored as NaN?)" if v is None and column == "latency_ms_p50" \
                    else value_problem(column, v)
                if problem:
                    problems.append(f"{column} {problem}")
            p = _params(params)
            out.append(BadValue(run_id, device, case_label(p) if p else "?", "values", "; ".join(problems)))
    return out


def usable_samples(values: Sequence[float]) -> bool:
    """True when raw samples can be used (all finite and > 0)."""
    return sample_problem(values) is None


def samples(source: Any, measurement_ids: Sequence[int]) -> dict[int, list[float]]:
    """Raw samples (ms, in the order taken) by measurement id; ids without stored samples are absent."""
    engine = engine_of(source)
    ids = [int(i) for i in measurement_ids]
    out: dict[int, list[float]] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for mid, blob in conn.execute(select(SampleSet.measurement_id, SampleSet.values)
                                          .where(SampleSet.measurement_id.in_(chunk))):
                out[int(mid)] = unpack_samples(blob)
    return out


def measurement_details(source: Any, measurement_id: int) -> dict[str, Any]:
    """The `details` JSON of one measurement (timing, power, thermal, accuracy, traceback), or {}."""
    engine = engine_of(source)
    with engine.connect() as conn:
        value = conn.scalar(select(Measurement.details).where(Measurement.id == measurement_id))
    return _params(value)


def device_cases(source: Any, device: str) -> pd.DataFrame:
    """The cases a device has results for: hash, keys, label and in how many runs (grouped in SQL)."""
    engine = engine_of(source)
    per_case = (select(Measurement.case_id, func.count().label("runs"))
                .join(Device, Device.id == Measurement.device_id).where(Device.name == device)
                .group_by(Measurement.case_id).subquery())
    q = (select(Case.hash, Case.params, per_case.c.runs).join(per_case, per_case.c.case_id == Case.id)
         .order_by(Case.variant, Case.precision, Case.seq_len, Case.hash))
    with engine.connect() as conn:
        raw = _frame(conn.execute(q), ["case_hash", "params", "runs"])
    return pd.concat([raw[["case_hash"]], _case_frame(raw["params"]), raw[["runs"]]], axis=1)


def devices(source: Any) -> list[str]:
    """Device names that have results, sorted."""
    engine = engine_of(source)
    with engine.connect() as conn:
        return list(conn.scalars(select(Device.name).where(
            select(Measurement.id).where(Measurement.device_id == Device.id).exists()).order_by(Device.name)))


def series(source: Any, device: str, case_hash: str, metric: str = "latency_ms_p50") -> pd.DataFrame:
    """One (device, case, metric) history in time order: a row per run with the value, status, env_key,
    harness revision and throttling; `measurement_id` to fetch raw samples."""
    if metric not in METRICS:
        raise StoreError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    engine = engine_of(source)
    q = (select(Run.id, Run.started_at, Run.git_revision, Run.harness_version, Measurement.id, Measurement.status,
                Measurement.error, getattr(Measurement, metric), Measurement.throttled, RunDevice.env_key,
                func.coalesce(RunDevice.fingerprint["emulated"].as_boolean(), False))
         .join(Run, Run.id == Measurement.run_id).join(Device, Device.id == Measurement.device_id)
         .join(Case, Case.id == Measurement.case_id)
         .outerjoin(RunDevice, and_(RunDevice.run_id == Measurement.run_id,
                                    RunDevice.device_id == Measurement.device_id))
         .where(Device.name == device, Case.hash == case_hash).order_by(Run.started_at, Run.id))
    with engine.connect() as conn:
        return _frame(conn.execute(q), ["run_id", "started_at", "git_revision", "harness_version", "measurement_id",
                                        "status", "error", "value", "throttled", "env_key", "emulated"])


def fingerprints(source: Any, device: str, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The device's fingerprint in each of the given runs (runs without one are absent)."""
    df = run_devices(source, run_ids)
    df = df[df["device"] == device]
    return {r: _params(fp) for r, fp in zip(df["run_id"], df["fingerprint"]) if fp}


# -- regressions ------------------------------------------------------------------------------------------
def latest_regressions(source: Any, *, history: int = 20, min_effect: float = 0.05, alpha: float = 0.001,
                       min_history: int = 5) -> pd.DataFrame:
    """Series whose newest run regressed against its history (`results.detect.latest_regression`).

    Looks at each device's `history` newest runs. SQL brings back one p50 per (run, device, case); only
    series whose newest p50 is at least 80% of `min_effect` away from the median of the ones before go to
    the detector with their raw samples (the detector needs the change to be `min_effect` anyway), so the
    cost follows the number of suspects, not the size of the database.
    """
    from . import detect  # the detector is a pure module; import here so queries load without scipy

    engine = engine_of(source)
    ranked = _ranked_run_devices()
    m = Measurement.__table__
    recent = (select(ranked.c.run_id, ranked.c.device_id, ranked.c.device, ranked.c.started_at, ranked.c.rn)
              .where(ranked.c.rn <= history).subquery("recent"))
    q = (select(recent.c.device, recent.c.run_id, recent.c.started_at, recent.c.rn, m.c.id, m.c.case_id,
                m.c.latency_ms_p50, m.c.throttled, m.c.contended, RunDevice.env_key,
                func.coalesce(RunDevice.fingerprint["emulated"].as_boolean(), False))
         .select_from(recent)
         .join(m, and_(m.c.run_id == recent.c.run_id, m.c.device_id == recent.c.device_id, m.c.status == "ok",
                       m.c.latency_ms_p50 > 0, m.c.latency_ms_p50 < 1e308))
         .join(RunDevice, and_(RunDevice.run_id == recent.c.run_id, RunDevice.device_id == recent.c.device_id)))
    cols = ["device", "run_id", "started_at", "rn", "measurement_id", "case_id", "p50", "throttled", "contended",
            "env_key", "emulated"]
    with engine.connect() as conn:
        df = _frame(conn.execute(q), cols)
    empty = pd.DataFrame(columns=["device", "case", "case_hash", "run_id", "started_at", "status", "change_pct",
                                  "before_ms", "after_ms", "p_value", "reason", "emulated"])
    if df.empty:
        return empty
    # Vectorised prefilter: newest p50 against the median of the older ones, per (device, case).
    keys = ["device", "case_id"]
    newest = df[df["rn"] == 1].set_index(keys)["p50"]
    older = df[df["rn"] > 1].groupby(keys)["p50"].agg(["median", "size"])
    joined = older.join(newest.rename("newest"), how="inner")
    change = joined["newest"] / joined["median"] - 1.0
    picked = joined.index[(change >= 0.8 * min_effect) & (joined["size"] >= min_history)]
    wanted = set(picked)
    suspects = [(device, case_id, g.sort_values("started_at"))
                for (device, case_id), g in df[[k in wanted for k in zip(df["device"], df["case_id"])]]
                .groupby(keys, sort=False)]
    if not suspects:
        return empty
    ids = [int(i) for _, _, g in suspects for i in g["measurement_id"]]
    raw = samples(engine, ids)
    with engine.connect() as conn:
        case_rows = {cid: (h, _params(p)) for cid, h, p in conn.execute(
            select(Case.id, Case.hash, Case.params).where(Case.id.in_([int(c) for _, c, _ in suspects])))}
    out = []
    for device, case_id, g in suspects:
        runs_ = []
        # The newest run is held only against runs of its own kind: emulated timings never meet real ones.
        kind = bool(g["emulated"].iloc[-1])
        for mid, p50, run_id, t, key, thr, busy, emu in zip(g["measurement_id"], g["p50"], g["run_id"],
                                                            g["started_at"], g["env_key"], g["throttled"],
                                                            g["contended"], g["emulated"]):
            values = raw.get(int(mid)) or [p50]
            if not (math.isfinite(p50) and usable_samples(values)):
                continue  # an impossible stored value (bad_values lists it) must not stop the detector
            runs_.append(detect.Run(samples=values if bool(emu) == kind else [], run_id=run_id, started_at=t,
                                    key=key, throttled=_flag(thr), contended=_flag(busy)))
        if not runs_:
            continue
        verdict = detect.latest_regression(runs_, min_effect=min_effect, alpha=alpha, min_history=min_history)
        if not verdict.is_regression:
            continue
        h, params = case_rows[int(case_id)]
        out.append({"device": device, "case": case_label(params), "case_hash": h, "run_id": verdict.run_id,
                    "started_at": verdict.started_at, "status": verdict.status, "change_pct": verdict.change_pct,
                    "before_ms": verdict.before.median if verdict.before else None,
                    "after_ms": verdict.after.median if verdict.after else None, "p_value": verdict.p_value,
                    "reason": verdict.reason, "emulated": kind})
    return pd.DataFrame(out, columns=list(empty.columns)) if out else empty


def to_records(df: pd.DataFrame) -> list[Mapping[str, Any]]:
    """Rows as plain dicts with None for missing values (for JSON and text output)."""
    return [{k: (None if (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
            for row in df.to_dict(orient="records")]
