"""Cached data access for the dashboard: the only module that imports both Streamlit and `results`.

The engine is a cached resource (one read-only pool per database URL); every query result is cached
data keyed on small scalars (the URL, run ids, a device name, a threshold), never on frames. Results
expire after `TTL_S` so a dashboard left open picks up the nightly runs. The database URL comes from
`HARNESS_DB` (set by `dashboard.launch`), else the harness default.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from harness.safe_text import spreadsheet_cell
from results import queries
from results.validate import BadValue, sample_problem, summarize_bad
from results.compare import Comparison, compare_runs, environment_diff
from results.store import DEFAULT_DB
from workloads.errors import HarnessError

from . import charts

TTL_S = 60
MAX_ENTRIES = 64
# A change point needs this many runs with results on each side (results.detect's default min_runs).
MIN_RUNS_PER_SIDE = 4


def db_url() -> str:
    """The results database the dashboard reads."""
    return os.environ.get("HARNESS_DB") or DEFAULT_DB


@st.cache_resource(show_spinner=False)
def engine(url: str) -> Engine:
    """A read-only engine for the URL, its schema revision checked once."""
    e = queries.read_only_engine(url)
    queries.check_schema(e)
    return e


def page(title: str, caption: str | None = None) -> str:
    """Draw the page title and return the database URL, or show why the database cannot be read and stop."""
    st.title(title)
    if caption:
        st.caption(caption)
    url = db_url()
    try:
        engine(url)
    except HarnessError as exc:
        st.error(str(exc))
        st.stop()
    return url


def csv_download(df: pd.DataFrame, name: str, key: str) -> None:
    """A CSV download of a query result (the frame as queried, not as rendered); text cells a spreadsheet
    would run as a formula are neutralised (`harness.safe_text.spreadsheet_cell`)."""
    st.download_button("Download CSV", spreadsheet_safe(df).to_csv(index=False).encode(), file_name=f"{name}.csv",
                       mime="text/csv", key=key)


def spreadsheet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells cannot start a spreadsheet formula (numbers are left as they are)."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = [spreadsheet_cell(v) if isinstance(v, str) else v for v in out[column]]
    return out


def warn_bad_values(bad: list[Any], where: str = "") -> None:
    """One warning saying how many stored values were left out as impossible, and which."""
    if bad:
        st.warning(summarize_bad(bad) + (f" {where}" if where else "") + ". They are left out of the charts and "
                   "statistics; re-run those cases, or delete the runs that hold them.")


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def bad_values(url: str) -> list[Any]:
    """Ok measurements anywhere in the database with impossible stored values."""
    return queries.bad_values(engine(url))


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def runs(url: str) -> pd.DataFrame:
    """All runs, newest first, with status counts and devices."""
    return queries.runs(engine(url))


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def resolve_run(url: str, ref: str) -> str:
    """The run id a reference names (`results.runref`); StoreError when none or several."""
    return queries.resolve_run(engine(url), ref)


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def device_status(url: str, stale_hours: float = queries.STALE_HOURS) -> pd.DataFrame:
    """Newest run per device with counts and staleness."""
    return queries.device_status(engine(url), stale_hours=stale_hours)


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def noise_floor(url: str, last_runs: int = 10) -> pd.DataFrame:
    """Run-to-run and within-run CV per device."""
    return queries.noise_floor(engine(url), last_runs=last_runs)


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def regressions(url: str, history: int = 20, min_effect: float = 0.05) -> tuple[pd.DataFrame, str | None]:
    """Series whose newest run regressed, or (empty, why) when detection is unavailable."""
    try:
        return queries.latest_regressions(engine(url), history=history, min_effect=min_effect), None
    except ImportError as exc:
        return pd.DataFrame(), f"regression detection unavailable: {exc}"


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def measurements(url: str, run_id: str, device: str | None = None) -> pd.DataFrame:
    """A run's measurements (one row per device and case), summaries only."""
    return queries.measurements(engine(url), run_id, device)


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def run_devices(url: str, run_id: str) -> pd.DataFrame:
    """Each device's part in a run: status, error, env_key, fingerprint."""
    return queries.run_devices(engine(url), [run_id])


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def run_info(url: str, run_id: str) -> dict[str, Any]:
    """One run's metadata (matrix, harness version and revision, times, status)."""
    return queries.run_info(engine(url), run_id)


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def comparison(url: str, run_a: str, run_b: str, device: str | None, min_effect: float) -> Comparison:
    """Run A against run B (forced: the page shows the differing fields instead of refusing)."""
    return compare_runs(engine(url), run_a, run_b, devices=[device] if device else None, min_effect=min_effect,
                        force=True)


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def devices(url: str) -> list[str]:
    """Device names that have results."""
    return queries.devices(engine(url))


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def device_cases(url: str, device: str) -> pd.DataFrame:
    """The cases a device has results for, with how many runs each."""
    return queries.device_cases(engine(url), device)


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def samples(url: str, measurement_id: int) -> list[float]:
    """One measurement's raw samples (ms), [] when pruned or never taken."""
    return queries.samples(engine(url), [measurement_id]).get(int(measurement_id), [])


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def details(url: str, measurement_id: int) -> dict[str, Any]:
    """One measurement's details JSON (power, thermal, timing, traceback)."""
    return queries.measurement_details(engine(url), measurement_id)


@st.cache_data(ttl=TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)
def trend(url: str, device: str, case_hash: str, metric: str) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """(series, change points, note): the history of one case's metric on one device and the change points
    `results.detect` finds in it (on raw samples for latency p50, on the stored value otherwise)."""
    e = engine(url)
    series = queries.series(e, device, case_hash, metric)
    empty = pd.DataFrame(columns=charts.CHANGE_COLUMNS)
    try:
        from results import detect
    except ImportError as exc:
        return series, empty, f"Change-point detection unavailable: results.detect could not be imported ({exc})."
    values_f = series["value"].astype(float)
    usable = (series["status"] == "ok") & values_f.notna() & (values_f > 0) & (values_f < math.inf)
    raw: dict[int, list[float]] = {}
    if metric == "latency_ms_p50":
        raw = queries.samples(e, [int(i) for i in series.loc[usable, "measurement_id"]])
        series = series.assign(**charts.spread_columns(series["measurement_id"], raw))
    lower = queries.METRICS[metric].lower_is_better
    changes = []
    # Emulated and real runs are separate histories: each pass blanks the other kind's runs (detect ignores a
    # run without samples but keeps its index), so no step is ever placed between an emulated and a real run.
    for kind in sorted({bool(flag) for flag in series["emulated"]}):
        runs_ = []
        for row, ok in zip(series.to_dict(orient="records"), usable):
            samples = raw.get(int(row["measurement_id"])) if ok else None
            if samples and sample_problem(samples):
                samples = None  # impossible raw samples (the page lists the bad values): the stored value stands in
            values = (samples or [float(row["value"])]) if ok else []
            runs_.append(detect.Run(samples=values if bool(row["emulated"]) == kind else [], run_id=row["run_id"],
                                    started_at=row["started_at"], key=row["env_key"]))
        changes += detect.detect_change_points(runs_, lower_is_better=lower, min_runs=MIN_RUNS_PER_SIDE)
    changes.sort(key=lambda cp: cp.index)
    n_ok = int(usable.sum())
    note = None
    if n_ok < 2 * MIN_RUNS_PER_SIDE:
        note = (f"{n_ok} run(s) with a result: a change point needs at least {MIN_RUNS_PER_SIDE} on each side "
                f"({2 * MIN_RUNS_PER_SIDE} in all), so none can be placed yet.")
    if not changes:
        return series, empty, note
    run_ids = list(series["run_id"])
    fps = queries.fingerprints(e, device, run_ids)
    rows = series.to_dict(orient="records")
    whats = []
    for cp in changes:
        before, after = rows[cp.before_runs[-1]], rows[cp.index]
        diffs = environment_diff({device: fps.get(before["run_id"])}, {device: fps.get(after["run_id"])})
        whats.append(charts.what_changed(before, after, [d for d in diffs if d.field != "fingerprint"]))
    return series, charts.change_table(changes, whats), note


def series_bad_values(series: pd.DataFrame, device: str, label: str, metric: str) -> list[BadValue]:
    """The runs of a trend series whose stored value is impossible for `metric` (ok rows only)."""
    from results.validate import value_problem

    out = []
    for row in series.to_dict(orient="records"):
        if row["status"] != "ok":
            continue
        v = row["value"]
        empty = v is None or (isinstance(v, float) and math.isnan(v))
        problem = ("is empty in an ok row (stored as NaN?)" if metric == "latency_ms_p50" else None) if empty \
            else value_problem(metric, v)
        if problem:
            out.append(BadValue(str(row["run_id"]), device, label, metric, problem))
    return out
