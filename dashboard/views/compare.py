"""Compare A vs B: per case both medians, the speedup with its interval, a verdict, the geometric mean,
and the environment fields that differ."""

import streamlit as st

from dashboard import charts, data, urlstate
from results.compare import FASTER, FIXED, NEWLY_FAILING, SLOWER

url = data.page("Compare A vs B", "Speedup = median A / median B: above 1, B is faster. A case is faster or "
                                  "slower only when its 95% bootstrap interval excludes 1 and the change is at "
                                  "least the minimum effect; otherwise it is noise.")
runs = data.runs(url)
if runs.empty:
    st.info("No runs stored yet.")
    st.stop()
labels = charts.run_labels(runs)
default_a, default_b = charts.default_pair(runs)

left, right = st.columns(2)
run_a = urlstate.run_select("Run A (baseline)", runs, "a", default=default_a, labels=labels, container=left)
run_b = urlstate.run_select("Run B (contender)", runs, "b", default=default_b, labels=labels, container=right)

side = st.sidebar
devices_ab = sorted(set(data.run_devices(url, run_a)["device"]) | set(data.run_devices(url, run_b)["device"]))
device = urlstate.select("Device", [urlstate.ALL, *devices_ab], "device",
                         default=devices_ab[0] if len(devices_ab) > 1 else urlstate.ALL, container=side,
                         help="Bootstrap intervals take a moment per case: one device at a time is quicker.")
min_effect_pct = urlstate.number("Minimum effect (%)", "min_effect", default=5.0, min_value=0.0, max_value=50.0,
                                 step=1.0, container=side)
cmp = data.comparison(url, run_a, run_b, None if device == urlstate.ALL else device, min_effect_pct / 100)

data.warn_bad_values(list(cmp.bad_values), "in these runs")

if cmp.stable_diffs:
    fields = "; ".join(f"{d.device}: {d.field} {d.a} -> {d.b}" for d in cmp.stable_diffs)
    st.error(f"Not comparable: the environments differ ({fields}). `harness compare` refuses these runs "
             "without --force; read the speedups below as across environments.")
if cmp.emulated_devices:
    st.warning(f"Emulated: {', '.join(cmp.emulated_devices)} ran under an emulator; their timings are the "
               "emulator's on the host, not a real device's.")
diff_table = charts.env_diff_table(cmp.env_diffs)
if not diff_table.empty:
    st.subheader("Environment fields that differ")
    st.dataframe(diff_table.style.apply(
        lambda row: ["background-color: #ffcdd2" if row["blocks"] else "background-color: #fff9c4"] * len(row),
        axis=1), hide_index=True, key="compare_env")
    data.csv_download(diff_table, "environment_diff", "dl_env")
else:
    st.caption("Same environment: no fingerprint or run field differs.")

table = charts.comparison_table(cmp)
show = urlstate.select("Show", list(charts.SHOW_OPTIONS), "show", default="all", container=side)
precisions = urlstate.multiselect("Precision", sorted(table["precision"].dropna().unique()), "precision",
                                  container=side)
variants = urlstate.multiselect("Variant", sorted(table["variant"].dropna().unique()), "variant", container=side)
shown = charts.filter_comparison(table, show, precisions, variants)

counts = charts.verdict_counts(shown)
geomean = charts.geometric_mean_of(shown)
m = st.columns(6)
m[0].metric("Geometric mean speedup", f"{geomean:.3f}" if geomean is not None else "—")
m[1].metric("Cases shown", len(shown))
m[2].metric("Faster", counts.get(FASTER, 0))
m[3].metric("Slower", counts.get(SLOWER, 0))
m[4].metric("Newly failing", counts.get(NEWLY_FAILING, 0))
m[5].metric("Fixed", counts.get(FIXED, 0))
st.caption("Verdicts shown: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none")
           + f". Hidden by the filters: {len(table) - len(shown)}.")
if "contended" in shown and shown["contended"].fillna(False).astype(bool).any():
    n_busy = int(shown["contended"].fillna(False).astype(bool).sum())
    st.warning(f"{n_busy} case(s) were measured under contention on one side (column `contended`): other processes "
               "used the device's CPUs, so their speedups say little. Re-measure them on a quiet device.")

shown = shown.assign(trend=[urlstate.link("trends", device=d, case=h) for d, h in
                            zip(shown["device"], shown["case_hash"])])
st.dataframe(shown.style.map(charts.verdict_css, subset=["verdict"]), hide_index=True, key="compare_table",
             column_config={"speedup": st.column_config.NumberColumn(format="%.3f"),
                            "CI low": st.column_config.NumberColumn(format="%.3f"),
                            "CI high": st.column_config.NumberColumn(format="%.3f"),
                            "A median ms": st.column_config.NumberColumn(format="%.4f"),
                            "B median ms": st.column_config.NumberColumn(format="%.4f"),
                            "trend": st.column_config.LinkColumn("trend", display_text="history")})
data.csv_download(shown.drop(columns=["trend"]), f"compare_{run_a}_{run_b}", "dl_compare")
if shown["speedup"].notna().any():
    st.vega_lite_chart(spec=charts.speedup_chart(shown), width="stretch")
