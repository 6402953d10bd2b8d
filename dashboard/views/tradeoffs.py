"""Trade-offs: accuracy against latency with the Pareto front, one chart per device, coloured by workload,
shaped by precision; energy per inference against latency."""

import streamlit as st

from dashboard import charts, data, urlstate
from results import queries
from results.queries import METRICS

url = data.page("Trade-offs", "Lower left is better on both charts. Dashed step lines are Pareto fronts, one per "
                              "device and workload shape (sequence length, batch, heads, head_dim): no other "
                              "case doing the same work on that device is both faster and more accurate.")
runs = data.runs(url)
side = st.sidebar
run_id = urlstate.run_or_stop(runs, container=side)
accuracy = urlstate.select("Accuracy measure", list(charts.ACCURACY_METRICS), "accuracy",
                           format_func=charts.ACCURACY_METRICS.get, container=side)
latency = urlstate.select("Latency", ["latency_ms_p50", "latency_ms_p90"], "latency",
                          format_func=lambda m: METRICS[m].title, container=side)
rows = data.measurements(url, run_id)
data.warn_bad_values(queries.bad_value_list(rows), "in this run")
devices = sorted(rows["device"].unique())
chosen = urlstate.multiselect("Devices", devices, "devices", container=side) or devices
seq_lens = urlstate.multiselect("Sequence length", sorted(int(s) for s in rows["seq_len"].dropna().unique()),
                                "seq_len", container=side)
rows = rows[rows["device"].isin(chosen)]
if seq_lens:
    rows = rows[rows["seq_len"].isin(seq_lens)]
points = charts.tradeoff_points(rows, accuracy, latency)

c1, c2, c3 = st.columns(3)
c1.metric("Cases", len(points))
c2.metric("On the accuracy front", int(points["front_accuracy"].sum()))
c3.metric("With energy measured", int(points["energy_mj"].notna().sum()))

for device in chosen:
    dev = points[points["device"] == device]
    st.subheader(f"{device}: {charts.ACCURACY_METRICS[accuracy]} against latency")
    if dev.empty or dev["error"].isna().all():
        st.info(f"No accuracy stored for the ok cases of this run on {device}.")
    else:
        st.vega_lite_chart(spec=charts.tradeoff_chart(dev, "error", "front_accuracy",
                                                      charts.ACCURACY_METRICS[accuracy] + " (log)"), width="stretch")
    st.markdown(f"**{device}: energy per inference against latency**")
    if dev["energy_mj"].notna().any():
        st.vega_lite_chart(spec=charts.tradeoff_chart(dev, "energy_mj", "front_energy",
                                                      "energy per inference (mJ, log)"), width="stretch")
    else:
        st.info(f"No energy per inference stored for {device} in this run: it had no power sensor "
                "(configure `power:` in the inventory).")

st.subheader("Points")
st.dataframe(charts.readable(points), hide_index=True, key="tradeoff_points")
data.csv_download(points, f"tradeoffs_{run_id}", "dl_tradeoffs")
