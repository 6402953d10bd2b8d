"""Run detail: the run's cases and their errors, one case's raw samples (in the order taken, and as a
histogram), its power and thermal summary, and the device's fingerprint."""

import streamlit as st

from dashboard import charts, data, urlstate
from results import queries
from results.validate import sample_problem

url = data.page("Run detail", "Everything stored about one run on one device.")
runs = data.runs(url)
side = st.sidebar
run_id = urlstate.run_or_stop(runs, container=side)
info = data.run_info(url, run_id)
rds = data.run_devices(url, run_id)
device = urlstate.select("Device", list(rds["device"]), "device", container=side)
rows = data.measurements(url, run_id, device)
data.warn_bad_values(queries.bad_value_list(rows), f"in this run on {device}")

counts = rows["status"].value_counts()
c = st.columns(5)
c[0].metric("Run status", str(info["status"]))
c[1].metric("ok", int(counts.get("ok", 0)))
c[2].metric("failed", int(counts.get("failed", 0)))
c[3].metric("skipped", int(counts.get("skipped", 0)))
c[4].metric("timeout", int(counts.get("timeout", 0)))
st.caption(f"matrix {info['matrix']} · harness {info['harness_version']} · git {info['git_revision'] or '—'} · "
           f"started {info['started_at']} UTC · finished {info['finished_at'] or '—'}")
rd = rds[rds["device"] == device]
emulated = charts.emulation_note(device, rd["fingerprint"].iloc[0] if not rd.empty else None)
if emulated:
    st.warning(emulated)
if not rd.empty and rd["error"].iloc[0]:
    st.error(f"{device}: {rd['status'].iloc[0]}: {rd['error'].iloc[0]}")

problems = rows[rows["status"] != "ok"][["case", "status", "error", "case_hash"]]
st.subheader("Failed, skipped and timed-out cases")
if problems.empty:
    st.success("Every case of this run on this device produced a result.")
else:
    st.dataframe(problems, hide_index=True, key="detail_problems")
    data.csv_download(problems, f"problems_{run_id}_{device}", "dl_problems")

busy = rows[rows["contended"].fillna(False).astype(bool)] if "contended" in rows else rows.iloc[0:0]
if not busy.empty:
    st.warning(f"{len(busy)} case(s) were measured while other processes used the device's CPUs (contended; up to "
               f"{busy['cpu_other'].max():.0%} of them): their latencies are not a quiet device's. Re-measure them on "
               "a quiet device, or set measure.on_contention: wait.")

st.subheader("Cases")
table = charts.lead_columns(rows.drop(columns=["run_id"]),
                            ["case", "status", "latency_ms_p50", "latency_ms_p90", "n_samples", "peak_mem_mb",
                             "cos_sim", "rel_err", "energy_mj_per_inf", "cpu_other", "contended", "error"])
st.dataframe(charts.readable(charts.drop_empty_columns(table, keep=["status", "error", "latency_ms_p50"])),
             hide_index=True, key="detail_cases")
data.csv_download(table, f"run_{run_id}_{device}", "dl_cases")

case_labels = dict(zip(rows["case_hash"], rows["case"] + " [" + rows["status"] + "]"))
case_hash = urlstate.select("Case", list(rows["case_hash"]), "case", format_func=case_labels.get)
if case_hash is not None:
    row = rows[rows["case_hash"] == case_hash].iloc[0].to_dict()
    mid = int(row["measurement_id"])
    details = data.details(url, mid)
    values = data.samples(url, mid)
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Raw samples**")
        problem = sample_problem(values) if values else None
        if problem:
            st.warning(f"The stored raw samples of this case are impossible: samples_ms {problem}. They are not "
                       "charted.")
        elif values:
            st.vega_lite_chart(spec=charts.samples_in_order_chart(values, details.get("warmup_samples_ms") or []),
                               width="stretch")
            st.vega_lite_chart(spec=charts.histogram_chart(values), width="stretch")
            st.dataframe(charts.sample_summary_table(values), hide_index=True, key="detail_sample_summary")
        elif row["status"] == "ok":
            st.info("Raw samples were pruned; the stored summaries remain in the table above.")
        else:
            st.error(f"{row['status']}: {row['error'] or 'no error text stored'}")
            if details.get("traceback"):
                st.code(details["traceback"], language="text")
    with right:
        st.markdown("**Power and thermal**")
        st.dataframe(charts.telemetry_table(row, details), hide_index=True, key="detail_telemetry")
    with st.expander("All details of this measurement"):
        st.dataframe(charts.flatten(details), hide_index=True, key="detail_details")

st.subheader(f"Fingerprint of {device} in this run")
fp = rd["fingerprint"].iloc[0] if not rd.empty else None
if fp:
    fingerprint = charts.flatten(fp)
    st.dataframe(fingerprint, hide_index=True, key="detail_fingerprint")
    data.csv_download(fingerprint, f"fingerprint_{run_id}_{device}", "dl_fingerprint")
else:
    st.info("No fingerprint was recorded for this device in this run.")
