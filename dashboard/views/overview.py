"""Overview: the newest run per device, stale devices, open regressions, the noise floor per device."""

import streamlit as st

from dashboard import charts, data, urlstate

url = data.page("Overview", "Newest run per device, devices that went quiet, what regressed, how noisy each "
                            "device is.")
runs = data.runs(url)
if runs.empty:
    st.info("The results database holds no runs yet. Run `harness run --devices local --matrix sweeps/quick.yaml`.")
    st.stop()

data.warn_bad_values(data.bad_values(url), "in this database")

stale_hours = urlstate.number("Stale after (hours without a result)", "stale_h", default=26.0, min_value=1.0,
                              max_value=24.0 * 365, step=1.0, container=st.sidebar)
status = data.device_status(url, stale_hours)
table = charts.device_table(status)

c1, c2, c3, c4 = st.columns(4)
c1.metric("Runs", len(runs))
c2.metric("Devices", len(table))
c3.metric("Stale devices", int(table["stale"].sum()))
c4.metric("Newest run", str(runs["run_id"].iloc[0]))

st.subheader("Newest run per device")
stale = list(table.loc[table["stale"], "device"])
if stale:
    st.warning(f"Stale: {', '.join(stale)} stored no result in the last {stale_hours:g} h. "
               f"Check them with `harness devices check {' '.join(stale)}`.")
st.dataframe(table, hide_index=True, key="overview_devices",
             column_config={"run_id": st.column_config.TextColumn("run"),
                            "stale": st.column_config.CheckboxColumn("stale")})
data.csv_download(table, "devices", "dl_devices")

st.subheader("Open regressions")
regressions, why = data.regressions(url)
if why:
    st.warning(why)
elif regressions.empty:
    st.success("No series regressed in its device's newest run.")
else:
    st.error(f"{len(regressions)} series regressed in their device's newest run.")
    st.dataframe(regressions, hide_index=True, key="overview_regressions")
    data.csv_download(regressions, "regressions", "dl_regressions")

st.subheader("Noise floor per device")
st.caption("Run-to-run CV: median over cases of the CV of a case's p50 across the device's last 10 runs. "
           "Within-run CV: median of std/mean of the raw samples. A change smaller than these is noise.")
noise = charts.noise_table(data.noise_floor(url))
st.dataframe(noise, hide_index=True, key="overview_noise")
data.csv_download(noise, "noise_floor", "dl_noise")

st.subheader("Recent runs")
recent = runs.head(20)
st.dataframe(recent, hide_index=True, key="overview_runs")
data.csv_download(runs, "runs", "dl_runs")
