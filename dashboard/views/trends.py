"""Trends: one case's metric over runs on one device, the change points detected in it, and what changed
at each (harness revision, library versions, fingerprint fields)."""

import streamlit as st

from dashboard import charts, data, urlstate
from results.queries import METRICS

url = data.page("Trends", "A case's metric over runs; grey bars span each run's raw samples from the 10th to the "
                          "90th percentile. Orange rules are detected change points (results.detect: raw samples, "
                          "at least 5% and p <= 0.001, 4 runs each side). Runs without a value are crosses in the "
                          "strip below.")
devices = data.devices(url)
if not devices:
    st.info("No results stored yet.")
    st.stop()
side = st.sidebar
device = urlstate.select("Device", devices, "device", container=side)
cases = data.device_cases(url, device)
labels = dict(zip(cases["case_hash"], cases["case"]))
most_runs = cases.sort_values("runs", ascending=False, kind="stable")["case_hash"].iloc[0]
case_hash = urlstate.select("Case", list(cases["case_hash"]), "case", default=most_runs,
                            format_func=lambda h: f"{labels[h]}  ({h})", container=side)
metric = urlstate.select("Metric", list(METRICS), "metric", format_func=lambda m: f"{METRICS[m].title}"
                         + (f" ({METRICS[m].unit})" if METRICS[m].unit else ""), container=side)

series, changes, note = data.trend(url, device, case_hash, metric)
info = METRICS[metric]
data.warn_bad_values(data.series_bad_values(series, device, labels[case_hash], metric), "in this history")
st.subheader(f"{labels[case_hash]} on {device}")
ok = series[series["status"] == "ok"]
c1, c2, c3, c4 = st.columns(4)
c1.metric("Runs", len(series))
c2.metric("Runs with a result", int(ok["value"].notna().sum()))
c3.metric("Change points", len(changes))
c4.metric(f"Newest {info.title}", f"{ok['value'].iloc[-1]:.4g} {info.unit}" if ok["value"].notna().any() else "—")

emulated_runs = int(series["emulated"].astype(bool).sum()) if "emulated" in series else 0
if emulated_runs:
    st.warning(f"{emulated_runs} of {len(series)} runs of {device} ran under an emulator: their timings are the "
               "emulator's on the host, not a real device's (the `emulated` column). Change points are looked for "
               "among emulated and among real runs separately, never across.")
if note and note.startswith("Change-point detection unavailable"):
    st.warning(note)
elif note:
    st.info(note)
st.vega_lite_chart(spec=charts.trend_chart(series, changes, f"{info.title} ({info.unit})" if info.unit else info.title),
                width="stretch")

st.subheader("Change points")
if changes.empty:
    st.caption("No change point detected in this history.")
else:
    st.dataframe(changes, hide_index=True, key="trend_changes")
    data.csv_download(changes, f"changes_{device}_{case_hash}", "dl_changes")
st.subheader("History")
history = series.drop(columns=["measurement_id"])
st.dataframe(charts.readable(history.rename(columns={"low": "p10", "high": "p90"})), hide_index=True,
             key="trend_series")
data.csv_download(history, f"trend_{device}_{case_hash}_{metric}", "dl_trend")
