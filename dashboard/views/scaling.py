"""Scaling: latency against sequence length on log-log axes, one line per series, per device, with the
fitted slope; failed, timed-out and skipped cases in a strip under the chart (never drawn as a value);
peak memory beside it."""

import streamlit as st

from dashboard import charts, data, urlstate
from results import queries
from results.queries import METRICS

url = data.page("Scaling", "Latency against sequence length, log-log. The fitted slope is the empirical "
                           "exponent: about 2 for quadratic attention, about 1 for linear (r² only from three "
                           "points or more).")
runs = data.runs(url)
side = st.sidebar
run_id = urlstate.run_or_stop(runs, container=side)
rows = data.measurements(url, run_id)
data.warn_bad_values(queries.bad_value_list(rows), "in this run")
devices = sorted(rows["device"].unique())
chosen = urlstate.multiselect("Devices", devices, "devices", container=side) or devices
metric = urlstate.select("Latency metric", ["latency_ms_p50", "latency_ms_p90", "latency_ms_p99"], "metric",
                         format_func=lambda m: METRICS[m].title, container=side)
precisions = urlstate.multiselect("Precision", sorted(rows["precision"].dropna().unique()), "precision",
                                  container=side)
variants = urlstate.multiselect("Variant", sorted(rows["variant"].dropna().unique()), "variant", container=side)

rows = rows[rows["device"].isin(chosen)]
if precisions:
    rows = rows[rows["precision"].isin(precisions)]
if variants:
    rows = rows[rows["variant"].isin(variants)]
points = charts.scaling_points(rows, metric)
slopes = charts.scaling_slopes(points)
not_ok = points[points["status"] != "ok"]

c1, c2, c3 = st.columns(3)
c1.metric("Series", len(slopes))
c2.metric("Points", len(points))
c3.metric("Failed or skipped points", len(not_ok))

for device in chosen:
    dev_points = points[points["device"] == device]
    if dev_points.empty:
        continue
    st.subheader(device)
    lat, mem = st.columns([3, 2])
    lat.vega_lite_chart(spec=charts.scaling_chart(dev_points, "value", METRICS[metric].title + " (ms)",
                                          slopes[slopes["device"] == device]), width="stretch")
    if dev_points["peak_mem_mb"].notna().any():
        mem.vega_lite_chart(spec=charts.scaling_chart(dev_points, "peak_mem_mb", "peak memory (MB)"), width="stretch")
    else:
        mem.info("No peak memory stored for these cases.")
if not not_ok.empty:
    st.caption("Crosses in the strip under a chart are cases without a value (failed, timed out, skipped), at their "
               "sequence length; the axis spans the measured points, so a case beyond them sits at the strip's edge "
               "with its length written. They are listed below.")

st.subheader("Fitted slopes")
st.dataframe(slopes, hide_index=True, key="scaling_slopes")
data.csv_download(slopes, f"slopes_{run_id}", "dl_slopes")
if not not_ok.empty:
    st.subheader("Points without a value")
    st.dataframe(not_ok, hide_index=True, key="scaling_not_ok")
st.subheader("Points")
st.dataframe(charts.readable(points), hide_index=True, key="scaling_points")
data.csv_download(points, f"scaling_{run_id}", "dl_points")
