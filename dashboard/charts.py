"""Pure table shapers and figure builders for the dashboard: frames in, frames or Vega-Lite specs out.

No Streamlit, no database. Every page's logic that is not a query lives here, so it is unit-tested
(`tests/test_dashboard_charts.py`) instead of being re-implemented in tests of the page scripts.

Charts are Vega-Lite specs as plain dicts (drawn with `st.vega_lite_chart`), not Altair objects: Altair
validates every encoding against the JSON schema when a chart is built and again when Streamlit
serialises it, which cost about 0.2 s per chart on the target machine; a dict costs nothing and is as
easy to assert on.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from harness import numfmt
from results.compare import (FASTER, FIXED, NEWLY_FAILING, NOISE, SLOWER, STILL_FAILING, Comparison, FieldDiff,
                             comparison_rows, geometric_mean)

# Case keys that make up a scaling "series" besides device (everything but the x axis, seq_len).
SERIES_KEYS = ("variant", "precision", "backend", "scope", "batch", "heads", "head_dim", "quant", "window",
               "block_size", "density", "topk", "rank", "depth", "group_size", "inputs", "threads")
NOT_OK = ("failed", "skipped", "timeout")
SHOW_OPTIONS = ("all", "regressed", "improved", "changed")
ACCURACY_METRICS = {"rel_err": "relative L1 error", "one_minus_cos": "1 - cosine similarity",
                    "max_abs_err": "max abs error"}
# Log axes cannot show 0: an exact result's error is drawn at this floor (and says so in its tooltip).
ERROR_FLOOR = 1e-12


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _json_value(v: Any) -> Any:
    if isinstance(v, (pd.Timestamp, datetime)):
        t = pd.Timestamp(v)
        # The database holds naive UTC; say so, or the browser reads it as local time.
        return t.isoformat() + "Z" if t.tzinfo is None else t.isoformat()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def records(df: pd.DataFrame, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts for a Vega-Lite dataset (NaN -> null, timestamps -> ISO text)."""
    cols = list(columns) if columns is not None else list(df.columns)
    return [{c: _json_value(v) for c, v in zip(cols, row)} for row in zip(*(df[c] for c in cols))]


def _q(field: str, title: str | None = None, **extra: Any) -> dict[str, Any]:
    enc: dict[str, Any] = {"field": field, "type": "quantitative", **extra}
    if title is not None:
        enc["title"] = title
    return enc


def _n(field: str, title: str | None = None, **extra: Any) -> dict[str, Any]:
    enc: dict[str, Any] = {"field": field, "type": "nominal", **extra}
    if title is not None:
        enc["title"] = title
    return enc


def _spec(datasets: dict[str, list[dict[str, Any]]], layers: list[dict[str, Any]], height: Any) -> dict[str, Any]:
    return {"datasets": datasets, "layer": layers, "height": height}


# -- labels -----------------------------------------------------------------------------------------------
def run_label(row: Mapping[str, Any]) -> str:
    """'abc123 · 2026-01-02 03:04 · quick · rpi4, jetson' for a run selector."""
    started = row.get("started_at")
    when = pd.Timestamp(started).strftime("%Y-%m-%d %H:%M") if _present(started) else "?"
    parts = [str(row["run_id"]), when, str(row.get("matrix") or "")]
    if row.get("tag"):
        parts.append(f"tag {row['tag']}")
    if row.get("devices"):
        emulated = set(str(row.get("emulated") or "").split(", ")) - {""}
        parts.append(", ".join(d + " (emulated)" if d in emulated else d for d in str(row["devices"]).split(", ")))
    return " · ".join(p for p in parts if p)


def emulation_note(device: str, fingerprint: Mapping[str, Any] | None) -> str | None:
    """The warning a page shows over an emulated device's results, or None for a real device."""
    if not fingerprint or not fingerprint.get("emulated"):
        return None
    emu = fingerprint.get("emulation") or {}
    cpu = f" -cpu {emu['cpu']}" if emu.get("cpu") else ""
    return (f"{device} ran under an emulator ({emu.get('emulator') or 'unknown'}{cpu} on "
            f"{emu.get('host_cpu') or 'an unknown host CPU'}): its timings are the emulator's on the host, not a "
            f"real {fingerprint.get('cpu_model') or 'device'}'s. Compare and regress keep them apart from real runs.")


def run_labels(runs: pd.DataFrame) -> dict[str, str]:
    """Selector labels by run id."""
    return {r["run_id"]: run_label(r) for r in runs.to_dict(orient="records")}


def default_pair(runs: pd.DataFrame) -> tuple[str | None, str | None]:
    """Default (A, B) for a compare: the previous and the newest run (runs come newest first)."""
    ids = list(runs["run_id"])
    if not ids:
        return None, None
    return (ids[1] if len(ids) > 1 else ids[0]), ids[0]


def series_label(row: Mapping[str, Any]) -> str:
    """The scaling-series name of a case: its keys except seq_len, defaults left out."""
    parts = [str(row.get("variant")), str(row.get("precision"))]
    if row.get("backend") not in (None, "torch") and _present(row.get("backend")):
        parts.append(str(row["backend"]))
    if row.get("scope") not in (None, "core") and _present(row.get("scope")):
        parts.append(str(row["scope"]))
    for key, short in (("batch", "b"), ("heads", "h"), ("head_dim", "d")):
        if _present(row.get(key)):
            parts.append(f"{short}={int(row[key])}")
    for key in ("quant", "window", "block_size", "density", "topk", "rank", "depth", "group_size", "threads"):
        if _present(row.get(key)):
            v = row[key]
            parts.append(f"{key}={int(v) if isinstance(v, float) and v.is_integer() else v}")
    if row.get("inputs") not in (None, "normal") and _present(row.get("inputs")):
        parts.append(f"inputs={row['inputs']}")
    return " ".join(parts)


def flatten(obj: Any, prefix: str = "") -> pd.DataFrame:
    """A nested dict (fingerprint, details) as a two-column field/value table, dotted keys, sorted."""
    rows: list[tuple[str, str]] = []

    def walk(o: Any, path: str) -> None:
        if isinstance(o, Mapping):
            if not o and path:
                rows.append((path, "{}"))
            for k in sorted(o, key=str):
                walk(o[k], f"{path}.{k}" if path else str(k))
        elif isinstance(o, list) and o and any(isinstance(x, (Mapping, list)) for x in o):
            for i, x in enumerate(o):
                walk(x, f"{path}[{i}]")
        else:
            rows.append((path, ", ".join(map(str, o)) if isinstance(o, list) else ("" if o is None else str(o))))

    walk(obj or {}, prefix)
    return pd.DataFrame(rows, columns=["field", "value"])


def lead_columns(df: pd.DataFrame, first: Sequence[str]) -> pd.DataFrame:
    """The same frame with the `first` columns (those present) moved to the front, in that order."""
    head = [c for c in first if c in df.columns]
    return df[head + [c for c in df.columns if c not in head]]


def drop_empty_columns(df: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
    """The frame without columns that hold no value in any row (knobs no case here uses), except `keep`."""
    return df[[c for c in df.columns if c in keep or df[c].notna().any()]]


# -- overview ---------------------------------------------------------------------------------------------
def device_table(status: pd.DataFrame) -> pd.DataFrame:
    """Latest run per device, ready to show."""
    cols = ["device", "run_id", "started_at", "device_status", "ok", "failed", "skipped", "timeout",
            "last_result_at", "hours_since_result", "stale"]
    return status[cols].reset_index(drop=True) if not status.empty else pd.DataFrame(columns=cols)


def noise_table(noise: pd.DataFrame) -> pd.DataFrame:
    """Noise floor per device in percent."""
    out = pd.DataFrame({"device": noise["device"], "cases": noise["cases"],
                        "repeated cases": noise["repeated_cases"]})
    out["run-to-run CV %"] = [round(100 * v, 2) if _present(v) else None for v in noise["run_to_run_cv"]]
    out["within-run CV %"] = [round(100 * v, 2) if _present(v) else None for v in noise["within_run_cv"]]
    return out


# -- compare ----------------------------------------------------------------------------------------------
COMPARE_COLUMNS = ["device", "case", "variant", "precision", "seq_len", "A median ms", "B median ms", "speedup",
                   "CI low", "CI high", "verdict", "contended", "A cpu other", "B cpu other", "A status", "B status",
                   "A n", "B n", "error", "case_hash"]


def comparison_table(cmp: Comparison) -> pd.DataFrame:
    """One row per compared case (speedup = A/B: above 1, B is faster)."""
    return pd.DataFrame(comparison_rows(cmp.cases), columns=COMPARE_COLUMNS)


def filter_comparison(df: pd.DataFrame, show: str = "all", precisions: Sequence[str] = (),
                      variants: Sequence[str] = ()) -> pd.DataFrame:
    """Rows kept by the page's filters: regressed = slower or newly failing, improved = faster or fixed,
    changed = either; empty precision/variant lists mean no filter."""
    keep = {"regressed": (SLOWER, NEWLY_FAILING), "improved": (FASTER, FIXED),
            "changed": (SLOWER, NEWLY_FAILING, FASTER, FIXED)}
    out = df
    if show in keep:
        out = out[out["verdict"].isin(keep[show])]
    elif show != "all":
        raise ValueError(f"show is one of {', '.join(SHOW_OPTIONS)}; got {show!r}")
    if precisions:
        out = out[out["precision"].isin(list(precisions))]
    if variants:
        out = out[out["variant"].isin(list(variants))]
    return out.reset_index(drop=True)


def verdict_counts(df: pd.DataFrame) -> dict[str, int]:
    """How many rows have each verdict."""
    counts = df["verdict"].value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def env_diff_table(diffs: Iterable[FieldDiff]) -> pd.DataFrame:
    """Differing environment fields; `blocks` is True for the stable fields that make runs incomparable."""
    rows = [{"device": d.device or "(run)", "field": d.field, "A": _text(d.a), "B": _text(d.b), "scope": d.scope,
             "blocks": d.scope == "stable"} for d in diffs]
    return pd.DataFrame(rows, columns=["device", "field", "A", "B", "scope", "blocks"])


def _text(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def speedup_chart(df: pd.DataFrame) -> dict[str, Any]:
    """Speedup per case with its interval, on a log axis with a dashed rule at 1 (right of it: B is faster)."""
    data = df.dropna(subset=["speedup"]).copy()
    data["label"] = data["device"] + " · " + data["case"]
    rows = records(data, ["label", "device", "case", "speedup", "CI low", "CI high", "verdict"])
    scale = {"type": "log"}
    y = _n("label", None, sort={"field": "speedup", "order": "ascending"}, axis={"title": None, "labelLimit": 420})
    tooltip = [_n("device"), _n("case"), _q("speedup", format=".3f"), _q("CI low", format=".3f"),
               _q("CI high", format=".3f"), _n("verdict")]
    colors = {"domain": [FASTER, SLOWER, NOISE, "no samples"], "range": ["#2e7d32", "#c62828", "#9e9e9e", "#795548"]}
    # (failing and fixed cases have no speedup: they are in the table, coloured the same way)
    layers = [
        {"data": {"name": "cases"}, "mark": {"type": "rule"},
         "encoding": {"x": _q("CI low", "speedup A/B (log; > 1: B faster)", scale=scale), "x2": {"field": "CI high"},
                      "y": y}},
        {"data": {"name": "cases"}, "mark": {"type": "point", "filled": True, "size": 60},
         "encoding": {"x": _q("speedup", scale=scale), "y": y, "color": _n("verdict", scale=colors),
                      "tooltip": tooltip}},
        {"data": {"name": "one"}, "mark": {"type": "rule", "strokeDash": [4, 4]}, "encoding": {"x": _q("x")}},
    ]
    return _spec({"cases": rows, "one": [{"x": 1.0}]}, layers, {"step": 22})


# -- scaling ----------------------------------------------------------------------------------------------
def scaling_points(df: pd.DataFrame, metric: str = "latency_ms_p50") -> pd.DataFrame:
    """The points of the scaling view: one per (device, case) with series label, seq_len, value, status.

    Failed, skipped and timed-out cases are kept (value NaN) so the chart can mark them."""
    cols = ["device", "series", "seq_len", "value", "peak_mem_mb", "status", "error", "case_hash"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({
        "device": df["device"], "series": [series_label(r) for r in df.to_dict(orient="records")],
        "seq_len": df["seq_len"].astype(int), "value": df[metric].astype(float),
        "peak_mem_mb": df["peak_mem_mb"].astype(float), "status": df["status"], "error": df["error"],
        "case_hash": df["case_hash"]})
    return out.sort_values(["device", "series", "seq_len"]).reset_index(drop=True)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Least-squares slope of log y on log x and its r^2; (None, None) with fewer than two distinct x, and
    no r^2 (None) from two points, which any line fits."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(x, y) if _present(a) and _present(b) and a > 0 and b > 0]
    if len({p[0] for p in pts}) < 2:
        return None, None
    lx = np.array([p[0] for p in pts])
    ly = np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(lx, ly, 1)
    if len(pts) < 3:  # a line through two points fits them exactly: an r^2 of 1 would say nothing
        return float(slope), None
    resid = ly - (slope * lx + intercept)
    total = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / total if total > 0 else 1.0
    return float(slope), r2


def scaling_slopes(points: pd.DataFrame, column: str = "value") -> pd.DataFrame:
    """Fitted log-log slope per (device, series) over its ok points; failed points are counted, not fitted."""
    groups: dict[tuple[str, str], list[tuple[int, Any, str]]] = {}
    for device, series, n, v, status in zip(points["device"], points["series"], points["seq_len"], points[column],
                                            points["status"]):
        groups.setdefault((device, series), []).append((int(n), v, status))
    rows = []
    for (device, series), items in sorted(groups.items()):
        ok = [(n, v) for n, v, status in items if status == "ok"]
        slope, r2 = loglog_slope([n for n, _ in ok], [v for _, v in ok])
        lens = [n for n, _, _ in items]
        rows.append({"device": device, "series": series, "slope": round(slope, 3) if slope is not None else None,
                     "r2": round(r2, 4) if r2 is not None else None, "ok points": len(ok),
                     "not ok points": len(items) - len(ok), "seq_len range": f"{min(lens)}-{max(lens)}"})
    return pd.DataFrame(rows, columns=["device", "series", "slope", "r2", "ok points", "not ok points",
                                       "seq_len range"])


def _with_slope_legend(points: pd.DataFrame, slopes: pd.DataFrame) -> pd.DataFrame:
    """Points with a `line` legend label: the series name without the keys every series here shares
    (they are in the table), then the fitted slope."""
    series = sorted(set(points["series"]))
    tokens = [s.split(" ") for s in series]
    shared = set.intersection(*(set(t[2:]) for t in tokens)) if tokens else set()
    short = {s: " ".join(t[:2] + [x for x in t[2:] if x not in shared]) for s, t in zip(series, tokens)}
    names = {(r["device"], r["series"]): f"{short.get(r['series'], r['series'])} "
                                         + (f"(slope {r['slope']:.2f})" if _present(r["slope"]) else "(no fit)")
             for r in slopes.to_dict(orient="records")}
    out = points.copy()
    out["line"] = [names.get((d, s), s) for d, s in zip(out["device"], out["series"])]
    return out


# The strip shares the chart's x axis, never its colours: a status is not a series.
STRIP_RESOLVE = {"scale": {"x": "shared", "color": "independent"}, "legend": {"color": "independent"}}
STATUS_COLORS = {"domain": ["failed", "timeout", "skipped"], "range": ["#c62828", "#6a1b9a", "#9e9e9e"]}


def failure_strip(name: str, x: dict[str, Any], tooltip: list[dict[str, Any]],
                  label: str = "no value") -> dict[str, Any]:
    """A strip under a chart for what has no value (failed, timed out, skipped): a row per status at its x,
    never a y value a reader could take for a measurement."""
    return {"data": {"name": name}, "height": {"step": 18}, "width": "container",
            "layer": [
                {"mark": {"type": "point", "shape": "cross", "size": 120, "filled": True},
                 "encoding": {"x": x, "y": _n("status", label, axis={"title": label, "labelLimit": 80}),
                              "color": _n("status", scale=STATUS_COLORS, legend=None), "tooltip": tooltip}},
                {"transform": [{"filter": "datum.beyond"}],
                 "mark": {"type": "text", "align": "right", "dx": -8, "fontSize": 10},
                 "encoding": {"x": x, "y": _n("status"), "text": {"field": "beyond_label"}}},
            ]}


def scaling_chart(points: pd.DataFrame, column: str = "value", title: str = "latency p50 (ms)",
                  slopes: pd.DataFrame | None = None) -> dict[str, Any]:
    """Log-log lines per series, the slope in the legend. Cases without a value (failed, skipped, timed out)
    are never drawn as values: they are crosses in a strip under the chart, at their sequence length. The
    x axis spans the ok points only, so a skipped L=200000 does not squeeze the measured ones: it sits at the
    strip's edge, labelled. `slopes` (as `scaling_slopes` gives them for this column) saves refitting."""
    slopes = scaling_slopes(points, column) if slopes is None else slopes
    data = _with_slope_legend(points, slopes)
    ok = data[(data["status"] == "ok") & data[column].notna()]
    bad = data[(data["status"] != "ok") | data[column].isna()].copy()
    cols = ["line", "series", "seq_len", column, "status", "error"]
    span = ok if not ok.empty else data
    domain = [int(span["seq_len"].min()), int(span["seq_len"].max())] if not span.empty else [1, 2]
    if domain[0] == domain[1]:
        domain = [domain[0] / 2, domain[1] * 2]
    x = _q("seq_len", "sequence length (log)", scale={"type": "log", "base": 2, "domain": domain, "clamp": True,
                                                      "nice": False})
    y = _q(column, f"{title} (log)", scale={"type": "log"})
    main = {"data": {"name": "ok"}, "height": 320, "width": "container",
            "layer": [{"mark": {"type": "line", "point": True},
                       "encoding": {"x": x, "y": y,
                                    "color": _n("line", "series (fitted slope)",
                                                legend={"labelLimit": 420, "orient": "bottom", "columns": 2}),
                                    "tooltip": [_n("series"), _q("seq_len"), _q(column, format=".4g"),
                                                _n("status")]}}]}
    datasets = {"ok": records(ok, cols)}
    if bad.empty:
        return {"datasets": datasets, **main}
    bad["beyond"] = (bad["seq_len"] < domain[0]) | (bad["seq_len"] > domain[1])
    bad["beyond_label"] = ["L=" + str(int(n)) if b else "" for n, b in zip(bad["seq_len"], bad["beyond"])]
    datasets["not_ok"] = records(bad, cols + ["beyond", "beyond_label"])
    strip = failure_strip("not_ok", x, [_n("series"), _q("seq_len"), _n("status"), _n("error")],
                          "no value")
    return {"datasets": datasets, "vconcat": [main, strip], "resolve": STRIP_RESOLVE, "spacing": 4}


# -- trade-offs -------------------------------------------------------------------------------------------
def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[bool]:
    """Which points no other point beats on both axes, both minimised (NaN points are never on it)."""
    idx = [i for i in range(len(x)) if _present(x[i]) and _present(y[i])]
    order = sorted(idx, key=lambda i: (x[i], y[i]))
    front = [False] * len(x)
    best = math.inf
    for i in order:
        if y[i] < best:
            front[i] = True
            best = y[i]
    return front


def workload_shape(row: Mapping[str, Any]) -> str:
    """'L=1024 b=1 h=8 d=64': the work a case does, whatever kernel and precision do it."""
    parts = [f"L={int(row['seq_len'])}"]
    for key, short in (("batch", "b"), ("heads", "h"), ("head_dim", "d")):
        if _present(row.get(key)):
            parts.append(f"{short}={int(row[key])}")
    return " ".join(parts)


def tradeoff_points(df: pd.DataFrame, accuracy: str = "rel_err", latency: str = "latency_ms_p50") -> pd.DataFrame:
    """Ok measurements with latency, an error measure (lower is better) and energy, plus Pareto-front
    flags: `front_accuracy` (latency vs error) and `front_energy` (latency vs energy), each computed per
    device and workload shape, since only kernels doing the same work compete."""
    if accuracy not in ACCURACY_METRICS:
        raise ValueError(f"accuracy is one of {', '.join(ACCURACY_METRICS)}; got {accuracy!r}")
    cols = ["device", "shape", "case", "precision", "variant", "seq_len", "latency_ms", "error", "energy_mj",
            "front_accuracy", "front_energy", "case_hash"]
    ok = df[(df["status"] == "ok") & df[latency].notna()]  # an impossible stored latency is blanked upstream
    if ok.empty:
        return pd.DataFrame(columns=cols)
    if accuracy == "one_minus_cos":
        err = (1.0 - ok["cos_sim"].astype(float))
    else:
        err = ok[accuracy].astype(float)
    out = pd.DataFrame({"device": ok["device"].values,
                        "shape": [workload_shape(r) for r in ok.to_dict(orient="records")],
                        "case": ok["case"].values, "precision": ok["precision"].values,
                        "variant": ok["variant"].values, "seq_len": ok["seq_len"].values,
                        "latency_ms": ok[latency].astype(float).values,
                        "error": err.clip(lower=ERROR_FLOOR).values,
                        "energy_mj": ok["energy_mj_per_inf"].astype(float).values, "case_hash": ok["case_hash"].values})
    out["front_accuracy"] = False
    out["front_energy"] = False
    for _, g in out.groupby(["device", "shape"]):
        out.loc[g.index, "front_accuracy"] = pareto_front(list(g["latency_ms"]), list(g["error"]))
        out.loc[g.index, "front_energy"] = pareto_front(list(g["latency_ms"]), list(g["energy_mj"]))
    return out[cols]


def tradeoff_chart(points: pd.DataFrame, y: str = "error", front: str = "front_accuracy",
                   y_title: str = "relative L1 error (log)") -> dict[str, Any]:
    """Scatter of one device's cases, coloured by workload (sequence length, batch, heads, head_dim: only
    cases doing the same work compete), shaped by precision, log axes; the Pareto front of each workload as
    a dashed step line in its colour. Draw one chart per device."""
    data = points.dropna(subset=["latency_ms", y])
    cols = ["device", "shape", "case", "precision", "latency_ms", y, front]
    x = _q("latency_ms", "latency (ms, log)", scale={"type": "log"})
    yy = _q(y, y_title, scale={"type": "log"})
    color = _n("shape", "workload", sort={"field": "seq_len"}, legend={"labelLimit": 300})
    layers = [
        {"data": {"name": "front"}, "mark": {"type": "line", "interpolate": "step-after", "strokeDash": [6, 3]},
         "encoding": {"x": x, "y": yy, "color": color, "detail": _n("shape"), "order": _q("latency_ms")}},
        {"data": {"name": "points"}, "mark": {"type": "point", "size": 90, "filled": True, "opacity": 0.85},
         "encoding": {"x": x, "y": yy, "color": color, "shape": _n("precision"),
                      "tooltip": [_n("device"), _n("case"), _n("shape", "workload"), _q("latency_ms", format=".4g"),
                                  _q(y, format=".3g"), _n(front)]}},
    ]
    return _spec({"front": records(data[data[front].astype(bool)], cols), "points": records(data, cols)}, layers,
                 360)


# -- trends -----------------------------------------------------------------------------------------------
def spread_columns(measurement_ids: Iterable[Any], raw: Mapping[int, Sequence[float]]) -> dict[str, list[float]]:
    """`low` and `high` per run: the 10th and 90th percentiles of its raw samples (NaN without usable ones)."""
    low, high = [], []
    for mid in measurement_ids:
        values = raw.get(int(mid)) if _present(mid) else None
        a = np.asarray(values or [], dtype=float)
        if a.size and np.all(np.isfinite(a)) and np.all(a > 0):
            p10, p90 = np.percentile(a, [10, 90])
            low.append(float(p10))
            high.append(float(p90))
        else:
            low.append(math.nan)
            high.append(math.nan)
    return {"low": low, "high": high}


TIME_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%m-%d %H:%M:%S.%L")


def time_ticks(times: Sequence[Any], most: int = 8) -> tuple[list[str], str]:
    """Axis values (at most `most` of the runs' times, evenly picked) and the coarsest format that writes
    each of them differently: no repeated tick labels."""
    stamps = sorted({pd.Timestamp(t) for t in times if _present(t)})
    if not stamps:
        return [], TIME_FORMATS[1]
    step = max(1, math.ceil(len(stamps) / most))
    picked = stamps[::step]
    fmt = TIME_FORMATS[-1]
    for candidate in TIME_FORMATS:
        py = candidate.replace("%L", "%f")
        if len({t.strftime(py) for t in picked}) == len(picked):
            fmt = candidate
            break
    return [_json_value(t) for t in picked], fmt


def trend_chart(series: pd.DataFrame, changes: pd.DataFrame, title: str) -> dict[str, Any]:
    """The metric per run over time with each run's spread (its raw samples' 10th to 90th percentile, where
    `low`/`high` are given), change points as rules. Runs without a value (failed, timed out, skipped) are
    crosses in a strip under the chart at their time, never a value on the axis."""
    data = series.copy()
    ok = data[(data["status"] == "ok") & data["value"].notna()]
    bad = data[(data["status"] != "ok") | data["value"].isna()].copy()
    spread = "low" in data and "high" in data
    cols = ["run_id", "started_at", "value", "status", "error", "git_revision"] + (["low", "high"] if spread else [])
    ticks, fmt = time_ticks(data["started_at"])
    x = {"field": "started_at", "type": "temporal", "title": "run started (UTC)", "scale": {"type": "utc"},
         "axis": {"format": fmt, "values": ticks, "labelAngle": -30, "labelOverlap": True}}
    y = _q("value", title, scale={"zero": False})
    layers: list[dict[str, Any]] = []
    if spread and ok[["low", "high"]].notna().all(axis=1).any():
        layers.append({"data": {"name": "ok"}, "transform": [{"filter": "isValid(datum.low)"}],
                       "mark": {"type": "rule", "color": "#90a4ae", "strokeWidth": 3, "opacity": 0.7},
                       "encoding": {"x": x, "y": _q("low", title), "y2": {"field": "high"},
                                    "tooltip": [_n("run_id"), _q("low", "p10", format=".4g"),
                                                _q("high", "p90", format=".4g")]}})
    layers.append({"data": {"name": "ok"}, "mark": {"type": "line", "point": True},
                   "encoding": {"x": x, "y": y, "tooltip": [_n("run_id"), {"field": "started_at", "type": "temporal"},
                                                            _q("value", format=".4g"), _n("git_revision")]}})
    datasets = {"ok": records(ok, cols)}
    if not changes.empty:
        datasets["changes"] = records(changes, ["run_id", "started_at", "change %", "direction", "what changed"])
        layers.append({"data": {"name": "changes"}, "mark": {"type": "rule", "color": "#ef6c00", "strokeWidth": 2},
                       "encoding": {"x": {"field": "started_at", "type": "temporal", "scale": {"type": "utc"}},
                                    "tooltip": [_n("run_id"), _q("change %", format="+.1f"), _n("direction"),
                                                _n("what changed")]}})
    main = {"height": 320, "width": "container", "layer": layers}
    if bad.empty:
        return {"datasets": datasets, **main}
    bad["beyond"] = False
    bad["beyond_label"] = ""
    datasets["not_ok"] = records(bad, cols + ["beyond", "beyond_label"])
    strip = failure_strip("not_ok", x, [_n("run_id"), _n("status"), _n("error")], "no value")
    return {"datasets": datasets, "vconcat": [main, strip], "resolve": STRIP_RESOLVE, "spacing": 4}


CHANGE_COLUMNS = ["run_id", "started_at", "direction", "change %", "before", "after", "p_value", "statistic",
                  "cause", "what changed"]


def change_table(changes: Sequence[Any], what_changed: Sequence[str]) -> pd.DataFrame:
    """Detected change points (`results.detect.ChangePoint`) as rows, with what changed at each."""
    rows = []
    for cp, what in zip(changes, what_changed):
        rows.append({"run_id": cp.run_id, "started_at": cp.started_at, "direction": cp.direction,
                     "change %": round(cp.change_pct, 2),
                     "before": f"{cp.before.median:.4g} [{cp.before.low:.4g}, {cp.before.high:.4g}]",
                     "after": f"{cp.after.median:.4g} [{cp.after.low:.4g}, {cp.after.high:.4g}]",
                     "p_value": cp.p_value, "statistic": f"{cp.statistic_name}={cp.statistic:.2f}",
                     "cause": cp.cause or "", "what changed": what})
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def what_changed(before: Mapping[str, Any], after: Mapping[str, Any], diffs: Iterable[FieldDiff]) -> str:
    """'git 1a2b3c -> 4d5e6f; torch 2.4 -> 2.5' between the last run before a change and the first after."""
    parts = []
    for name, short in (("git_revision", "git"), ("harness_version", "harness")):
        a, b = before.get(name), after.get(name)
        if a != b:
            parts.append(f"{short} {_short(a)} -> {_short(b)}")
    for d in diffs:
        if d.scope in ("stable", "info"):
            parts.append(f"{d.field} {_text(d.a)} -> {_text(d.b)}")
    return "; ".join(parts) if parts else "nothing recorded changed"


def _short(v: Any) -> str:
    if v is None:
        return "—"
    s = str(v)
    return s[:10] + ("-dirty" if s.endswith("-dirty") and len(s) > 10 else "")


# -- run detail -------------------------------------------------------------------------------------------
def sample_summary(samples: Sequence[float]) -> dict[str, float]:
    """n, median, p90, min, max and CV of raw samples, for the run-detail table."""
    a = np.asarray(samples, dtype=float)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"n": int(a.size), "median ms": float(np.median(a)), "p90 ms": float(np.percentile(a, 90)),
            "min ms": float(a.min()), "max ms": float(a.max()), "CV %": 100 * std / mean if mean > 0 else math.nan}


def sample_summary_table(samples: Sequence[float]) -> pd.DataFrame:
    """`sample_summary` as people read it: latencies to 4 significant digits, the CV to one decimal."""
    summary = sample_summary(samples)
    rows = []
    for key, value in summary.items():
        if key == "n":
            text = str(value)
        elif key == "CV %":
            key, text = "CV", (f"{value:.1f}%" if _present(value) else "—")
        else:
            text = numfmt.sig(value) + " ms"
        rows.append({"field": key.replace(" ms", ""), "value": text})
    return pd.DataFrame(rows, columns=["field", "value"])


def histogram_chart(samples: Sequence[float], bins: int = 40) -> dict[str, Any]:
    """Histogram of raw samples with the median as a rule."""
    layers = [
        {"data": {"name": "samples"}, "mark": {"type": "bar"},
         "encoding": {"x": _q("ms", "sample (ms per call)", bin={"maxbins": bins}),
                      "y": {"aggregate": "count", "type": "quantitative", "title": "samples"}}},
        {"data": {"name": "median"}, "mark": {"type": "rule", "color": "#ef6c00", "strokeWidth": 2},
         "encoding": {"x": _q("median"), "tooltip": [_q("median", format=".4g")]}},
    ]
    return _spec({"samples": [{"ms": float(v)} for v in samples], "median": [{"median": float(np.median(samples))}]},
                 layers, 260)


def samples_in_order_chart(samples: Sequence[float], warmup: Sequence[float] = ()) -> dict[str, Any]:
    """Each raw sample in the order it was taken (a drift while warming up, a clock stepping down, a burst
    of interference show here and not in a histogram); samples the warm-up check set aside before the
    window (`details.warmup_samples_ms`) drawn first, in grey, with negative indexes; the median as a rule."""
    rows = [{"sample": i - len(warmup), "ms": float(v), "kind": "warm-up (set aside)"} for i, v in enumerate(warmup)]
    rows += [{"sample": i, "ms": float(v), "kind": "timed"} for i, v in enumerate(samples)]
    kinds = {"domain": ["timed", "warm-up (set aside)"], "range": ["#1565c0", "#9e9e9e"]}
    layers = [
        {"data": {"name": "samples"}, "mark": {"type": "line", "point": {"size": 14}, "strokeWidth": 1},
         "encoding": {"x": _q("sample", "sample, in the order taken"), "y": _q("ms", "ms per call",
                                                                                 scale={"zero": False}),
                      "color": _n("kind", None, scale=kinds, legend={"orient": "top", "title": None}),
                      "tooltip": [_q("sample"), _q("ms", format=".4g"), _n("kind")]}},
        {"data": {"name": "median"}, "mark": {"type": "rule", "color": "#ef6c00", "strokeDash": [4, 3]},
         "encoding": {"y": _q("median"), "tooltip": [_q("median", format=".4g")]}},
    ]
    return _spec({"samples": rows, "median": [{"median": float(np.median(samples))}]}, layers, 260)


READABLE = {"cos_sim": numfmt.cosine, "cpu_other": numfmt.pct,
            **{c: numfmt.sig for c in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
                                       "latency_ms_std", "peak_mem_mb", "energy_mj_per_inf", "power_w_avg")},
            **{c: (lambda v: numfmt.sig(v, 3)) for c in ("rel_err", "max_abs_err", "rmse")}}


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """A copy for display: cosines with the digits that differ from 1, latencies to 4 significant digits,
    errors to 3, the CPU share as a percentage; absent values as '—'. Downloads keep the raw numbers."""
    out = df.copy()
    for column, fmt in READABLE.items():
        if column in out.columns:
            out[column] = [fmt(v) if _present(v) else "—" for v in out[column]]
    return out


VERDICT_COLORS = {SLOWER: "#ffcdd2", NEWLY_FAILING: "#ef9a9a", STILL_FAILING: "#ffe0b2", FASTER: "#c8e6c9",
                  FIXED: "#a5d6a7", NOISE: "#eeeeee"}


def verdict_css(verdict: Any) -> str:
    """Background of a verdict cell: red for slower and newly failing, green for faster and fixed."""
    color = VERDICT_COLORS.get(str(verdict))
    return f"background-color: {color}" if color else ""


def telemetry_table(row: Mapping[str, Any], details: Mapping[str, Any]) -> pd.DataFrame:
    """Power, thermal and contention summary of one measurement: stored columns first, then
    details.power/thermal/contention."""
    rows = []
    for key, title in (("power_w_avg", "power W (avg)"), ("energy_mj_per_inf", "energy mJ per inference"),
                       ("power_source", "power source"), ("is_estimate", "power is an estimate"),
                       ("throttled", "throttled"), ("cpu_other", "other processes' CPU share"),
                       ("contended", "contended"), ("peak_mem_mb", "peak memory MB")):
        v = row.get(key)
        if not _present(v):
            text = "not measured"
        elif key == "cpu_other":
            text = f"{float(v):.1%}"
        elif isinstance(v, float):
            text = numfmt.sig(v)
        else:
            text = str(v)
        rows.append({"field": title, "value": text})
    table = pd.DataFrame(rows)
    extra = []
    for section in ("power", "thermal", "contention"):
        if details.get(section):
            extra.append(flatten(details[section], section))
    return pd.concat([table, *extra], ignore_index=True) if extra else table


def geometric_mean_of(df: pd.DataFrame) -> float | None:
    """Geometric mean of the speedups of the rows shown."""
    return geometric_mean(float(v) for v in df["speedup"].dropna())
