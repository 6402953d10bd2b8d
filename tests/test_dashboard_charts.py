"""The dashboard's pure table shapers and figure builders, on planted frames."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from dashboard import charts
from results import detect
from results.compare import (FASTER, FIXED, MISSING_IN_A, NEWLY_FAILING, NOISE, SLOWER, CaseComparison, Comparison,
                             FieldDiff, Side)


def _layers(chart: dict) -> list[dict]:
    """The layers of a chart, or of its main (first) panel when a failure strip is stacked under it."""
    return chart["vconcat"][0]["layer"] if "vconcat" in chart else chart["layer"]


def _strip(chart: dict) -> dict:
    assert "vconcat" in chart, "no strip under the chart"
    return chart["vconcat"][1]


def _datasets(chart: dict) -> list[list[dict]]:
    return list(chart["datasets"].values())


# -- scaling ----------------------------------------------------------------------------------------------
def test_loglog_slope_recovers_a_planted_exponent() -> None:
    x = [128, 256, 512, 1024]
    slope, r2 = charts.loglog_slope(x, [3e-6 * n ** 2 for n in x])
    assert slope == pytest.approx(2.0) and r2 == pytest.approx(1.0)
    slope, _ = charts.loglog_slope(x, [0.01 * n for n in x])
    assert slope == pytest.approx(1.0)
    assert charts.loglog_slope([128], [1.0]) == (None, None)
    assert charts.loglog_slope([128, 256], [1.0, float("nan")]) == (None, None)


def test_a_two_point_fit_has_a_slope_but_no_r2() -> None:
    slope, r2 = charts.loglog_slope([128, 256], [1.0, 4.0])
    assert slope == pytest.approx(2.0) and r2 is None
    _, r2 = charts.loglog_slope([128, 256, 512], [1.0, 4.0, 15.0])
    assert r2 is not None and r2 < 1.0


def _measurements() -> pd.DataFrame:
    rows = []
    for precision, k in (("fp32", 1e-5), ("int8", 4e-6)):
        for n in (128, 256, 512, 1024):
            failed = precision == "int8" and n == 1024
            rows.append({"device": "rpi4", "variant": "dense", "precision": precision, "backend": "torch",
                         "scope": "core", "batch": 1, "heads": 8, "head_dim": 64, "seq_len": n,
                         "quant": "per_block" if precision == "int8" else None,
                         "latency_ms_p50": None if failed else k * n ** 2, "peak_mem_mb": 100 + n / 10,
                         "status": "failed" if failed else "ok", "error": "MemoryError" if failed else None,
                         "case_hash": f"{precision}{n}"})
    return pd.DataFrame(rows)


def test_scaling_points_keep_failed_cases_and_name_series_without_seq_len() -> None:
    points = charts.scaling_points(_measurements())
    assert len(points) == 8
    assert set(points["series"]) == {"dense fp32 b=1 h=8 d=64", "dense int8 b=1 h=8 d=64 quant=per_block"}
    failed = points[points["status"] == "failed"]
    assert list(failed["seq_len"]) == [1024] and failed["value"].isna().all()


def test_scaling_slopes_fit_ok_points_and_count_the_others() -> None:
    slopes = charts.scaling_slopes(charts.scaling_points(_measurements())).set_index("series")
    fp32 = slopes.loc["dense fp32 b=1 h=8 d=64"]
    int8 = slopes.loc["dense int8 b=1 h=8 d=64 quant=per_block"]
    assert fp32["slope"] == pytest.approx(2.0) and fp32["ok points"] == 4 and fp32["not ok points"] == 0
    assert int8["slope"] == pytest.approx(2.0) and int8["ok points"] == 3 and int8["not ok points"] == 1


def test_scaling_chart_is_log_log_with_slope_legend_and_failed_points_in_a_strip_not_on_the_axis() -> None:
    chart = charts.scaling_chart(charts.scaling_points(_measurements()))
    (line,) = _layers(chart)
    assert line["encoding"]["x"]["scale"]["type"] == "log" and line["encoding"]["y"]["scale"]["type"] == "log"
    legend = {r["line"] for r in chart["datasets"]["ok"]}
    # keys every series shares (b=1 h=8 d=64) are left out of the legend; the table has them
    assert legend == {"dense fp32 (slope 2.00)", "dense int8 quant=per_block (slope 2.00)"}
    # the failed case is in the strip's data only, with no value a reader could take for a measurement
    assert all(r["status"] == "ok" for r in chart["datasets"]["ok"])
    (failed,) = chart["datasets"]["not_ok"]
    assert failed["seq_len"] == 1024 and failed["error"] == "MemoryError" and failed["value"] is None
    strip = _strip(chart)
    crosses = strip["layer"][0]
    assert crosses["mark"]["shape"] == "cross" and crosses["encoding"]["y"]["field"] == "status"
    assert chart["resolve"]["scale"] == {"x": "shared", "color": "independent"}


def test_a_skipped_huge_case_does_not_stretch_the_axis_it_sits_at_the_edge_labelled() -> None:
    df = _measurements()
    huge = df.iloc[0].to_dict() | {"seq_len": 200_000, "status": "skipped", "latency_ms_p50": None,
                                   "error": "would need 300 GB", "case_hash": "huge"}
    chart = charts.scaling_chart(charts.scaling_points(pd.concat([df, pd.DataFrame([huge])])))
    (line,) = _layers(chart)
    scale = line["encoding"]["x"]["scale"]
    assert scale["domain"] == [128, 1024] and scale["clamp"] is True
    beyond = [r for r in chart["datasets"]["not_ok"] if r["beyond"]]
    assert [(r["seq_len"], r["beyond_label"]) for r in beyond] == [(200_000, "L=200000")]


def test_a_chart_without_failures_has_no_strip() -> None:
    df = _measurements()
    chart = charts.scaling_chart(charts.scaling_points(df[df["status"] == "ok"]))
    assert "vconcat" not in chart and "not_ok" not in chart["datasets"]


# -- trade-offs -------------------------------------------------------------------------------------------
def test_pareto_front_keeps_points_nothing_beats_on_both_axes() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 2.5, float("nan")]
    y = [5.0, 3.0, 4.0, 1.0, 2.0, 0.1]
    assert charts.pareto_front(x, y) == [True, True, False, True, True, False]
    assert charts.pareto_front([1.0, 1.0], [2.0, 1.0]) == [False, True]


def test_tradeoff_points_compute_fronts_per_device_and_workload_and_one_minus_cos() -> None:
    df = pd.DataFrame({
        "device": ["a", "a", "a", "b", "a"], "case": ["fp32", "int8", "bf16", "fp32", "fp32 L=64"],
        "precision": ["fp32", "int8", "bf16", "fp32", "fp32"], "variant": ["dense"] * 5,
        "seq_len": [128, 128, 128, 128, 64], "batch": [1] * 5, "heads": [8] * 5, "head_dim": [64] * 5,
        "status": ["ok"] * 5, "latency_ms_p50": [10.0, 4.0, 12.0, 50.0, 1.0],
        "rel_err": [1e-7, 1e-2, 1e-3, 1e-7, 1e-7], "cos_sim": [1.0, 0.999, 0.99999, 1.0, 1.0],
        "max_abs_err": [0.0] * 5, "energy_mj_per_inf": [5.0, 2.0, None, 1.0, 0.5],
        "case_hash": ["h1", "h2", "h3", "h4", "h5"]})
    pts = charts.tradeoff_points(df).set_index(["device", "case"])
    # the L=64 case is faster and as accurate, but it does other work: it does not knock fp32 L=128 off
    assert pts["front_accuracy"].to_dict() == {("a", "fp32"): True, ("a", "int8"): True, ("a", "bf16"): False,
                                               ("b", "fp32"): True, ("a", "fp32 L=64"): True}
    assert pts.loc[("a", "fp32 L=64"), "shape"] == "L=64 b=1 h=8 d=64"
    assert pts.loc[("a", "int8"), "front_energy"] and not pts.loc[("a", "fp32"), "front_energy"]
    cos = charts.tradeoff_points(df, "one_minus_cos").set_index(["device", "case"])
    assert cos.loc[("a", "int8"), "error"] == pytest.approx(1e-3)
    assert cos.loc[("a", "fp32"), "error"] == charts.ERROR_FLOOR  # exact: drawn at the floor of the log axis
    with pytest.raises(ValueError, match="accuracy is one of"):
        charts.tradeoff_points(df, "bogus")


def test_tradeoff_chart_colors_by_workload_shapes_by_precision_and_draws_the_front() -> None:
    df = pd.DataFrame({"device": ["a", "a", "b"], "shape": ["L=1"] * 3, "case": ["x", "y", "z"],
                       "precision": ["fp32", "int8", "fp32"],
                       "variant": ["dense"] * 3, "seq_len": [1] * 3, "latency_ms": [1.0, 2.0, 3.0],
                       "error": [1e-3, 1e-5, 1e-4], "energy_mj": [None] * 3, "front_accuracy": [True, True, True],
                       "front_energy": [False] * 3, "case_hash": ["1", "2", "3"]})
    line, dots = _layers(charts.tradeoff_chart(df))
    # workloads are told apart by colour (a chart per device), precisions by shape
    assert dots["encoding"]["color"]["field"] == "shape" and dots["encoding"]["shape"]["field"] == "precision"
    assert line["mark"]["type"] == "line" and line["mark"]["interpolate"] == "step-after"
    assert line["encoding"]["detail"]["field"] == "shape"  # one front per workload
    assert line["encoding"]["color"]["field"] == "shape"


# -- compare ----------------------------------------------------------------------------------------------
def _comparison() -> Comparison:
    def case(p: str, verdict: str, speedup: float | None, a: str = "ok", b: str = "ok") -> CaseComparison:
        return CaseComparison("rpi4", f"h{p}{verdict}", {"variant": "dense", "precision": p, "seq_len": 128},
                              f"dense {p} torch L=128", Side(a, 10.0, 30), Side(b, 10.0 / speedup if speedup else None, 30),
                              speedup, speedup and speedup * 0.95, speedup and speedup * 1.05, verdict)
    cases = (case("fp32", FASTER, 2.0), case("int8", SLOWER, 0.5), case("bf16", NOISE, 1.01),
             case("fp16", NEWLY_FAILING, None, b="failed"), case("int4", FIXED, None, a="failed"),
             case("mixed", MISSING_IN_A, None, a="absent"))
    return Comparison("A", "B", cases, 1.0, (FieldDiff("rpi4", "torch", "2.4", "2.5", "stable"),), 0.05, 0.95)


def test_comparison_table_has_a_row_per_case_with_medians_speedup_and_verdict() -> None:
    table = charts.comparison_table(_comparison())
    assert list(table.columns) == charts.COMPARE_COLUMNS
    assert len(table) == 6
    fp32 = table[table["precision"] == "fp32"].iloc[0]
    assert (fp32["A median ms"], fp32["B median ms"], fp32["speedup"], fp32["verdict"]) == (10.0, 5.0, 2.0, FASTER)


@pytest.mark.parametrize("show,expected", [
    ("all", {"fp32", "int8", "bf16", "fp16", "int4", "mixed"}), ("regressed", {"int8", "fp16"}),
    ("improved", {"fp32", "int4"}), ("changed", {"fp32", "int8", "fp16", "int4"})])
def test_filter_comparison_by_verdict_group(show: str, expected: set[str]) -> None:
    shown = charts.filter_comparison(charts.comparison_table(_comparison()), show)
    assert set(shown["precision"]) == expected


def test_filter_comparison_by_precision_and_variant_and_geomean_of_what_is_shown() -> None:
    table = charts.comparison_table(_comparison())
    shown = charts.filter_comparison(table, "all", precisions=["fp32", "int8"], variants=["dense"])
    assert set(shown["precision"]) == {"fp32", "int8"}
    assert charts.geometric_mean_of(shown) == pytest.approx(1.0)
    assert charts.geometric_mean_of(charts.filter_comparison(table, "improved")) == pytest.approx(2.0)
    assert charts.filter_comparison(table, "all", variants=["lowrank"]).empty
    with pytest.raises(ValueError):
        charts.filter_comparison(table, "bogus")


def test_env_diff_table_marks_the_fields_that_block_a_comparison() -> None:
    diffs = [FieldDiff("rpi4", "torch", "2.4", "2.5", "stable"), FieldDiff("rpi4", "isa", ["a", "b"], None, "stable"),
             FieldDiff(None, "git_revision", "x", "y", "run")]
    table = charts.env_diff_table(diffs)
    assert list(table["blocks"]) == [True, True, False]
    assert list(table["A"]) == ["2.4", "a, b", "x"] and table.iloc[1]["B"] == "—"
    assert table.iloc[2]["device"] == "(run)"


def test_default_pair_is_previous_against_newest() -> None:
    runs = pd.DataFrame({"run_id": ["new", "old", "older"]})
    assert charts.default_pair(runs) == ("old", "new")
    assert charts.default_pair(runs.head(1)) == ("new", "new")
    assert charts.default_pair(runs.head(0)) == (None, None)


def test_run_label_says_id_time_matrix_and_devices() -> None:
    label = charts.run_label({"run_id": "abc", "started_at": datetime(2026, 1, 2, 3, 4), "matrix": "quick",
                              "tag": "nightly", "devices": "rpi4, jetson"})
    assert label == "abc · 2026-01-02 03:04 · quick · tag nightly · rpi4, jetson"


# -- trends -----------------------------------------------------------------------------------------------
def test_change_table_and_what_changed_describe_a_planted_step() -> None:
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 1, 1)
    runs = [detect.Run(samples=list((10.0 if i < 8 else 11.5) * (1 + 0.005 * rng.standard_normal(20))),
                       run_id=f"r{i}", started_at=t0 + timedelta(days=i)) for i in range(16)]
    changes = detect.detect_change_points(runs)
    assert [c.index for c in changes] == [8]
    what = charts.what_changed({"git_revision": "aaaaaaaaaaaa1", "harness_version": "0.1.0"},
                               {"git_revision": "bbbbbbbbbbbb2", "harness_version": "0.1.0"},
                               [FieldDiff("rpi4", "torch", "2.4", "2.5", "stable")])
    assert what == "git aaaaaaaaaa -> bbbbbbbbbb; torch 2.4 -> 2.5"
    table = charts.change_table(changes, [what])
    row = table.iloc[0]
    assert (row["run_id"], row["direction"]) == ("r8", "regression")
    assert row["change %"] == pytest.approx(15.0, abs=1.0)
    assert row["what changed"] == what
    series = pd.DataFrame({"run_id": [r.run_id for r in runs], "started_at": [r.started_at for r in runs],
                           "value": [float(np.median(r.samples)) for r in runs], "status": ["ok"] * 16,
                           "error": [None] * 16, "git_revision": ["x"] * 16})
    layers = _layers(charts.trend_chart(series, table, "latency p50 (ms)"))
    assert [layer["mark"]["type"] for layer in layers] == ["line", "rule"]
    rules = charts.trend_chart(series, table, "x")["datasets"]["changes"]
    assert [r["run_id"] for r in rules] == ["r8"] and rules[0]["started_at"] == "2026-01-09T00:00:00Z"


def _series(statuses: list[str], values: list[float | None]) -> pd.DataFrame:
    t0 = datetime(2026, 1, 1, 2, 30)
    n = len(statuses)
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(n)], "started_at": [t0 + timedelta(days=i) for i in range(n)],
                         "value": values, "status": statuses, "error": [None if s == "ok" else "cut off" for s in statuses],
                         "git_revision": ["x"] * n})


def test_trends_never_draw_a_timed_out_run_as_a_value() -> None:
    series = _series(["ok", "timeout", "ok"], [5.0, None, 6.0])
    chart = charts.trend_chart(series, pd.DataFrame(columns=charts.CHANGE_COLUMNS), "latency p50 (ms)")
    assert [r["run_id"] for r in chart["datasets"]["ok"]] == ["r0", "r2"]
    (cut,) = chart["datasets"]["not_ok"]
    assert cut["run_id"] == "r1" and cut["value"] is None and cut["status"] == "timeout"
    assert _strip(chart)["layer"][0]["encoding"]["y"]["field"] == "status"
    # only timed-out runs: nothing is placed at 0 ms, the strip holds them all
    only = charts.trend_chart(_series(["timeout", "failed"], [None, None]), pd.DataFrame(), "ms")
    assert only["datasets"]["ok"] == [] and len(only["datasets"]["not_ok"]) == 2


def test_trends_draw_each_runs_spread_from_its_raw_samples() -> None:
    series = _series(["ok", "ok"], [5.0, 6.0]).assign(measurement_id=[1, 2])
    raw = {1: [float(v) for v in range(1, 11)], 2: [6.0] * 10}
    series = series.assign(**charts.spread_columns(series["measurement_id"], raw))
    assert series["low"].tolist() == pytest.approx([1.9, 6.0]) and series["high"].tolist() == pytest.approx([9.1, 6.0])
    band, line = _layers(charts.trend_chart(series, pd.DataFrame(), "ms"))
    assert band["mark"]["type"] == "rule" and band["encoding"]["y"]["field"] == "low"
    assert band["encoding"]["y2"]["field"] == "high" and line["mark"]["type"] == "line"


def test_time_ticks_never_repeat_a_label() -> None:
    t0 = datetime(2026, 12, 3, 18, 29, 35)
    same_minute = [t0 + timedelta(seconds=s) for s in (0, 15, 40)]
    values, fmt = charts.time_ticks(same_minute)
    labels = [pd.Timestamp(v).strftime(fmt.replace("%L", "%f")) for v in values]
    assert len(set(labels)) == len(labels) == 3 and fmt == "%Y-%m-%d %H:%M:%S"
    days = [t0 + timedelta(days=d) for d in range(30)]
    values, fmt = charts.time_ticks(days)
    assert fmt == "%Y-%m-%d" and len(values) <= 8


def test_what_changed_says_so_when_nothing_recorded_changed() -> None:
    assert charts.what_changed({"git_revision": "a"}, {"git_revision": "a"}, []) == "nothing recorded changed"


# -- run detail -------------------------------------------------------------------------------------------
def test_flatten_turns_nested_details_into_dotted_fields() -> None:
    table = charts.flatten({"thermal": {"before": {"max_c": 51.2}, "throttled": False}, "isa": ["neon", "fp"],
                            "clusters": [{"cpus": [0, 1]}], "empty": {}})
    got = dict(zip(table["field"], table["value"]))
    assert got == {"clusters[0].cpus": "0, 1", "empty": "{}", "isa": "neon, fp", "thermal.before.max_c": "51.2",
                   "thermal.throttled": "False"}


def test_sample_summary_and_histogram_of_raw_samples() -> None:
    samples = [1.0, 2.0, 3.0, 4.0, 100.0]
    s = charts.sample_summary(samples)
    assert (s["n"], s["median ms"], s["min ms"], s["max ms"]) == (5, 3.0, 1.0, 100.0)
    assert s["CV %"] == pytest.approx(100 * np.std(samples, ddof=1) / np.mean(samples))
    bars, median = _layers(charts.histogram_chart(samples))
    assert bars["encoding"]["x"]["bin"] == {"maxbins": 40}
    assert median["mark"]["type"] == "rule"


def test_run_detail_numbers_are_formatted_and_cosines_never_read_as_one() -> None:
    samples = [1.0, 1.25, 1.0, 1.5, 1.0]
    table = dict(zip(*charts.sample_summary_table(samples).to_dict(orient="list").values()))
    assert table["CV"] == "19.4%" and table["median"] == "1 ms" and table["max"] == "1.5 ms"
    shown = charts.readable(pd.DataFrame({"cos_sim": [0.99999998, 0.999977, 1.0, None], "cpu_other": [0.031, None,
                                                                                                    0.5, 0.0],
                                          "latency_ms_p50": [0.0123456, 12.3456, 1234.5678, None]}))
    assert shown["cos_sim"].tolist() == ["1-2.0e-08", "0.999977", "1", "—"]
    assert shown["cpu_other"].tolist() == ["3.1%", "—", "50.0%", "0.0%"]
    assert shown["latency_ms_p50"].tolist() == ["0.01235", "12.35", "1235", "—"]


def test_samples_in_order_chart_plots_each_sample_by_when_it_was_taken() -> None:
    chart = charts.samples_in_order_chart([3.0, 2.0, 1.0], warmup=[9.0])
    line, median = _layers(chart)
    assert line["encoding"]["x"]["field"] == "sample" and line["mark"]["type"] == "line"
    assert [(r["sample"], r["ms"], r["kind"]) for r in chart["datasets"]["samples"]] == [
        (-1, 9.0, "warm-up (set aside)"), (0, 3.0, "timed"), (1, 2.0, "timed"), (2, 1.0, "timed")]
    assert chart["datasets"]["median"] == [{"median": 2.0}]


def test_verdicts_are_colour_coded() -> None:
    assert "#ffcdd2" in charts.verdict_css(SLOWER) and "#c8e6c9" in charts.verdict_css(FASTER)
    assert charts.verdict_css(NEWLY_FAILING) and charts.verdict_css("missing in A") == ""


def test_telemetry_table_says_not_measured_instead_of_zero() -> None:
    table = charts.telemetry_table({"power_w_avg": None, "energy_mj_per_inf": 12.5, "throttled": math.nan},
                                   {"thermal": {"max_c": 60.0}})
    got = dict(zip(table["field"], table["value"]))
    assert got["power W (avg)"] == "not measured" and got["throttled"] == "not measured"
    assert got["energy mJ per inference"] == "12.5" and got["thermal.max_c"] == "60.0"


def test_lead_columns_moves_the_named_columns_first() -> None:
    df = pd.DataFrame({"a": [1], "b": [2], "c": [3]})
    assert list(charts.lead_columns(df, ["c", "zz", "a"]).columns) == ["c", "a", "b"]


def test_drop_empty_columns_keeps_what_has_a_value_or_is_asked_for() -> None:
    df = pd.DataFrame({"a": [1, None], "b": [None, None], "error": [None, None]})
    assert list(charts.drop_empty_columns(df, keep=["error"]).columns) == ["a", "error"]


def test_noise_table_in_percent() -> None:
    table = charts.noise_table(pd.DataFrame({"device": ["rpi4"], "cases": [3], "repeated_cases": [2],
                                             "run_to_run_cv": [0.0123], "within_run_cv": [None]}))
    assert table.iloc[0]["run-to-run CV %"] == 1.23 and table.iloc[0]["within-run CV %"] is None


def test_run_label_marks_emulated_devices_and_the_note_names_the_emulation() -> None:
    label = charts.run_label({"run_id": "abc", "started_at": datetime(2026, 1, 2, 3, 4), "matrix": "quick",
                              "devices": "a72, rpi4", "emulated": "a72"})
    assert label.endswith("a72 (emulated), rpi4")
    fp = {"cpu_model": "Cortex-A72", "emulated": True,
          "emulation": {"emulator": "qemu-aarch64-static", "cpu": "cortex-a72", "host_cpu": "AMD EPYC"}}
    note = charts.emulation_note("a72", fp)
    assert note and "qemu-aarch64-static -cpu cortex-a72 on AMD EPYC" in note and "not a real Cortex-A72's" in note
    assert charts.emulation_note("rpi4", {"cpu_model": "Cortex-A72"}) is None
