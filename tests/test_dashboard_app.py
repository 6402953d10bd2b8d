"""The dashboard's pages against a real database filled by two real `harness run`s.

AppTest runs each page script in-process and checks what it shows (tables, metrics, messages) against
the database, and that the selection round-trips through the URL query string. One test starts the
dashboard with `dashboard.launch.launch` and opens every page in headless Chromium (Playwright driving
the distribution's /usr/bin/chromium), checks there is content and no exception box, and saves a
screenshot per page (under $ATTN_SCREENSHOT_DIR when set, e.g. docs/screenshots).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from results.exchange import export_rows
from results.store import Store

logging.getLogger("streamlit").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ROOT / "dashboard" / "views"
PAGES = ("overview", "compare", "scaling", "tradeoffs", "trends", "run_detail")
TIMEOUT = 60
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

MATRIX = """\
# One thread per case: the test machine is shared, and OpenMP threads spinning against other processes
# turn microseconds into milliseconds.
name: {name}
defaults: {{batch: 1, heads: 2, head_dim: 16, backend: torch, threads: 1}}
matrix:
  precision: [fp32, bf16, int8]
  seq_len: [32, 64]
include:
  - {{precision: fp32, seq_len: {extra}}}
  - {{precision: int4, seq_len: 32, group_size: 6}}
measure: {{warmup_s: 0.02, min_time_s: 0.05, min_samples: 5, max_time_s: 2, timeout_s: 120}}
"""


class RealDB:
    """Two real runs on the local device: A has an extra fp32 case at L=16, B one at L=128; both have an
    int4 case the kernel refuses (group_size 6 does not divide head_dim 16), stored as skipped."""

    def __init__(self, url: str, run_a: str, run_b: str) -> None:
        self.url, self.run_a, self.run_b = url, run_a, run_b
        self.rows = export_rows(Store(url, upgrade=False))

    def row(self, run_id: str, precision: str, seq_len: int) -> dict[str, Any]:
        (found,) = [r for r in self.rows if r["run_id"] == run_id and r["precision"] == precision
                    and r["seq_len"] == seq_len]
        return found


@pytest.fixture(scope="module")
def real_db(tmp_path_factory: pytest.TempPathFactory) -> RealDB:
    base = tmp_path_factory.mktemp("dashboard_db")
    home = base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DB", "HARNESS_INVENTORY")}
    env["HOME"] = str(home)
    url = f"sqlite:///{base / 'results.db'}"
    run_ids = []
    for name, extra in (("dash-a", 16), ("dash-b", 128)):
        matrix = base / f"{name}.yaml"
        matrix.write_text(MATRIX.format(name=name, extra=extra))
        done = subprocess.run([sys.executable, "-m", "harness", "run", "--devices", "local", "--matrix", str(matrix),
                               "--db", url], cwd=base, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        run_ids.append(done.stdout.split("run id ")[1].split()[0])
    return RealDB(url, *run_ids)


@pytest.fixture
def db(real_db: RealDB, monkeypatch: pytest.MonkeyPatch) -> Iterator[RealDB]:
    monkeypatch.setenv("HARNESS_DB", real_db.url)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield real_db
    st.cache_data.clear()
    st.cache_resource.clear()


def app(page: str, **params: str) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{page}.py"), default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first table shown that has all these columns."""
    for df in at.dataframe:
        if all(c in df.value.columns for c in columns):
            return df.value
    raise AssertionError(f"no table with columns {columns}; tables: {[list(d.value.columns) for d in at.dataframe]}")


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def texts(elements: Any) -> str:
    return "\n".join(str(e.value) for e in elements)


# -- Overview ---------------------------------------------------------------------------------------------
def test_overview_shows_the_newest_run_per_device_with_its_counts(db: RealDB) -> None:
    at = app("overview")
    assert metrics(at) == {"Runs": "2", "Devices": "1", "Stale devices": "0", "Newest run": db.run_b}
    devices = frame(at, "device", "run_id", "ok", "skipped")
    assert list(devices["device"]) == ["local"]
    newest = [r for r in db.rows if r["run_id"] == db.run_b]
    assert devices.iloc[0]["run_id"] == db.run_b
    assert devices.iloc[0]["ok"] == sum(r["status"] == "ok" for r in newest) == 7
    assert devices.iloc[0]["skipped"] == sum(r["status"] == "skipped" for r in newest) == 1
    assert not devices.iloc[0]["stale"]
    noise = frame(at, "run-to-run CV %")
    assert noise.iloc[0]["device"] == "local" and noise.iloc[0]["repeated cases"] == 6
    runs = frame(at, "run_id", "matrix", "measurements")
    assert list(runs["run_id"]) == [db.run_b, db.run_a] and list(runs["matrix"]) == ["dash-b", "dash-a"]
    assert "No series regressed" in texts(at.success)
    assert len(at.get("download_button")) == 3


def test_overview_stale_threshold_round_trips_through_the_url(db: RealDB) -> None:
    at = app("overview", stale_h="5")
    assert at.number_input(key="stale_h").value == 5.0
    at.number_input(key="stale_h").set_value(48.0).run()
    assert at.query_params["stale_h"] == "48"


# -- Compare ----------------------------------------------------------------------------------------------
def test_compare_defaults_to_previous_against_newest_and_matches_the_raw_samples(db: RealDB) -> None:
    at = app("compare")
    assert (at.selectbox(key="a").value, at.selectbox(key="b").value) == (db.run_a, db.run_b)
    assert (at.query_params["a"], at.query_params["b"]) == (db.run_a, db.run_b)
    table = frame(at, "verdict", "speedup")
    assert len(table) == 9
    by_case = {(p, int(n)): v for p, n, v in zip(table["precision"], table["seq_len"], table["verdict"])}
    assert by_case[("fp32", 16)] == "missing in B"
    assert by_case[("fp32", 128)] == "missing in A"
    assert by_case[("int4", 32)] == "skipped"
    paired = table[table["speedup"].notna()]
    assert len(paired) == 6
    assert set(paired["verdict"]) <= {"faster", "slower", "noise"}
    for r in paired.to_dict(orient="records"):
        a = db.row(db.run_a, r["precision"], int(r["seq_len"]))
        b = db.row(db.run_b, r["precision"], int(r["seq_len"]))
        assert r["A median ms"] == pytest.approx(float(np.median(a["samples_ms"])))
        assert r["B median ms"] == pytest.approx(float(np.median(b["samples_ms"])))
        assert r["speedup"] == pytest.approx(r["A median ms"] / r["B median ms"])
        assert r["CI low"] <= r["speedup"] <= r["CI high"]
    geomean = math.exp(float(np.mean(np.log(paired["speedup"]))))
    shown = metrics(at)
    assert shown["Geometric mean speedup"] == f"{geomean:.3f}"
    assert shown["Cases shown"] == "9"
    assert shown["Faster"] == str(int((table["verdict"] == "faster").sum()))
    env = frame(at, "field", "blocks")
    assert "matrix" in set(env["field"]) and not env["blocks"].any()  # same machine: nothing blocks
    assert not at.error


def test_compare_view_is_reproduced_from_the_url_and_filters_write_back(db: RealDB) -> None:
    at = app("compare", a=db.run_b, b=db.run_a, precision="fp32")
    table = frame(at, "verdict", "speedup")
    assert set(table["precision"]) == {"fp32"}
    by_len = dict(zip(table["seq_len"].astype(int), table["verdict"]))
    assert by_len[16] == "missing in A" and by_len[128] == "missing in B"  # A and B swapped by the link
    assert at.multiselect(key="precision").value == ["fp32"]
    at.selectbox(key="show").set_value("changed").run()
    assert at.query_params["show"] == "changed"
    shown = frame(at, "verdict", "speedup")
    assert set(shown["verdict"]) <= {"faster", "slower", "newly failing", "fixed"}
    at.multiselect(key="precision").select("int8").run()
    assert at.query_params["precision"] == "fp32,int8"


# -- Scaling ----------------------------------------------------------------------------------------------
def test_scaling_fits_a_slope_per_series_and_keeps_skipped_points(db: RealDB) -> None:
    at = app("scaling")
    assert at.query_params["run"] == db.run_b
    assert metrics(at) == {"Series": "4", "Points": "8", "Failed or skipped points": "1"}
    slopes = frame(at, "series", "slope").set_index("series")
    fp32 = [s for s in slopes.index if s.startswith("dense fp32")]
    assert len(fp32) == 1 and slopes.loc[fp32[0], "ok points"] == 3
    fp32_rows = [db.row(db.run_b, "fp32", n) for n in (32, 64, 128)]
    expected = np.polyfit(np.log([32, 64, 128]), np.log([r["latency_ms_p50"] for r in fp32_rows]), 1)[0]
    assert slopes.loc[fp32[0], "slope"] == pytest.approx(expected, abs=1e-3)
    int4 = [s for s in slopes.index if s.startswith("dense int4")]
    assert slopes.loc[int4[0], "ok points"] == 0 and slopes.loc[int4[0], "not ok points"] == 1
    assert pd.isna(slopes.loc[int4[0], "slope"])
    not_ok = frame(at, "series", "status", "error")
    skipped = not_ok[not_ok["status"] == "skipped"]
    assert len(skipped) == 1 and "group_size 6" in skipped.iloc[0]["error"]


def test_scaling_shows_the_run_and_precision_named_in_the_url(db: RealDB) -> None:
    at = app("scaling", run=db.run_a, precision="fp32")
    points = frame(at, "series", "seq_len", "value")
    assert sorted(points["seq_len"].astype(int)) == [16, 32, 64]
    assert at.query_params["precision"] == "fp32"


# -- Trade-offs -------------------------------------------------------------------------------------------
def test_tradeoffs_marks_the_pareto_front_and_says_energy_was_not_measured(db: RealDB) -> None:
    from dashboard.charts import pareto_front

    at = app("tradeoffs")
    points = frame(at, "latency_ms", "error", "front_accuracy")
    ok = [r for r in db.rows if r["run_id"] == db.run_b and r["status"] == "ok"]
    assert len(points) == len(ok) == 7
    by_len = {(r["precision"], r["seq_len"]): r for r in ok}
    for p in points.to_dict(orient="records"):
        assert p["error"] == pytest.approx(by_len[(p["precision"], p["seq_len"])]["rel_err"])
    for _, g in points.groupby(["device", "shape"]):
        assert list(g["front_accuracy"]) == pareto_front(list(g["latency_ms"]), list(g["error"]))
    assert set(points["shape"]) == {"L=32 b=1 h=2 d=16", "L=64 b=1 h=2 d=16", "L=128 b=1 h=2 d=16"}
    assert metrics(at)["On the accuracy front"] == str(int(points["front_accuracy"].sum()))
    assert metrics(at)["With energy measured"] == "0"
    assert "No energy per inference stored" in texts(at.info)


def test_tradeoffs_accuracy_measure_comes_from_the_url(db: RealDB) -> None:
    at = app("tradeoffs", accuracy="one_minus_cos", seq_len="64")
    points = frame(at, "latency_ms", "error")
    assert set(points["seq_len"]) == {64}
    for p in points.to_dict(orient="records"):
        cos = db.row(db.run_b, p["precision"], 64)["cos_sim"]
        assert p["error"] == pytest.approx(max(1 - cos, 1e-12))


# -- Trends -----------------------------------------------------------------------------------------------
def test_trends_shows_a_cases_history_from_the_url(db: RealDB) -> None:
    a = db.row(db.run_a, "int8", 64)
    b = db.row(db.run_b, "int8", 64)
    at = app("trends", device="local", case=a["case_hash"])
    assert at.selectbox(key="case").value == a["case_hash"]
    history = frame(at, "run_id", "value", "status")
    assert list(history["run_id"]) == [db.run_a, db.run_b]
    assert list(history["value"]) == pytest.approx([a["latency_ms_p50"], b["latency_ms_p50"]])
    shown = metrics(at)
    assert shown["Runs"] == "2" and shown["Change points"] == "0"
    assert "a change point needs at least 4 on each side" in texts(at.info)
    at.selectbox(key="metric").set_value("cos_sim").run()
    assert at.query_params["metric"] == "cos_sim"
    assert list(frame(at, "run_id", "value")["value"]) == pytest.approx([a["cos_sim"], b["cos_sim"]])


# -- Run detail -------------------------------------------------------------------------------------------
def test_run_detail_shows_the_error_text_of_a_case_that_did_not_run(db: RealDB) -> None:
    int4 = db.row(db.run_a, "int4", 32)
    at = app("run_detail", run=db.run_a, case=int4["case_hash"])
    shown = metrics(at)
    assert (shown["ok"], shown["skipped"], shown["failed"]) == ("7", "1", "0")
    problems = frame(at, "case", "status", "error")
    assert list(problems["status"]) == ["skipped"]
    assert problems.iloc[0]["error"] == int4["error"] and "group_size 6" in int4["error"]
    assert f"skipped: {int4['error']}" in texts(at.error)
    tables = [f.value for f in at.dataframe if list(f.value.columns) == ["field", "value"]]
    fingerprint = dict(zip(tables[-1]["field"], tables[-1]["value"]))  # the fingerprint is the last one
    assert fingerprint["cpu_model"] == int4["fingerprint"]["cpu_model"]
    assert fingerprint["torch"] == int4["fingerprint"]["torch"]


def test_run_detail_summarises_the_raw_samples_of_the_case_in_the_url(db: RealDB) -> None:
    fp32 = db.row(db.run_b, "fp32", 64)
    at = app("run_detail", run=db.run_b, case=fp32["case_hash"])
    assert at.query_params["case"] == fp32["case_hash"]
    tables = [f.value for f in at.dataframe if list(f.value.columns) == ["field", "value"]]
    summary = dict(zip(tables[0]["field"], tables[0]["value"]))
    assert int(summary["n"]) == fp32["n_samples"] == len(fp32["samples_ms"])
    assert summary["median"] == f"{fp32['latency_ms_p50']:.4g} ms"  # formatted, not 0.014490000000000001
    samples = np.asarray(fp32["samples_ms"])
    assert summary["CV"] == f"{100 * samples.std(ddof=1) / samples.mean():.1f}%"
    assert "Every case of this run" not in texts(at.success)  # the int4 case was skipped
    cases = frame(at, "case", "status", "cos_sim")
    shown = dict(zip(cases["case"], cases["cos_sim"]))
    from harness.numfmt import cosine

    for r in (x for x in db.rows if x["run_id"] == db.run_b and x["status"] == "ok"):
        assert shown[_label(r)] == cosine(r["cos_sim"]) and shown[_label(r)] != "1"


def _label(row: dict[str, Any]) -> str:
    from workloads.spec import case_label

    return case_label(row)


# -- emulated devices -------------------------------------------------------------------------------------
def test_pages_label_an_emulated_device_and_trends_keep_its_runs_apart(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from workloads.spec import canonical_case, case_hash

    url = f"sqlite:///{tmp_path / 'emulated.db'}"
    store = Store(url)
    case = canonical_case({"precision": "fp32", "seq_len": 32})
    real = {"arch": "aarch64", "cpu_model": "Cortex-A72", "torch": "2.9.1"}
    emulated = dict(real, emulated=True, emulation={"emulator": "qemu-aarch64-static", "cpu": "cortex-a72",
                                                    "host_cpu": "AMD EPYC"})
    runs = []
    for fp, median in ((real, 10.0), (emulated, 900.0)):
        run_id = store.create_run(matrix_name="arm", matrix_text="", measure={}, devices=["a72"])
        store.set_run_device(run_id, "a72", status="complete", fingerprint=fp)
        samples = [median * (1 + i / 100) for i in range(5)]
        store.add_result(run_id, "a72", case, {"status": "ok", "samples_ms": samples})
        store.finish_run(run_id, "complete")
        runs.append(run_id)
    monkeypatch.setenv("HARNESS_DB", url)
    st.cache_data.clear()
    st.cache_resource.clear()
    detail = app("run_detail", run=runs[1])
    assert "a72 (emulated)" in detail.selectbox(key="run").format_func(runs[1])
    assert "a72 ran under an emulator (qemu-aarch64-static -cpu cortex-a72 on AMD EPYC)" in texts(detail.warning)
    assert not texts(app("run_detail", run=runs[0]).warning)
    trends = app("trends", device="a72", case=case_hash(case))
    assert "1 of 2 runs of a72 ran under an emulator" in texts(trends.warning)
    assert [bool(x) for x in frame(trends, "run_id", "emulated")["emulated"]] == [False, True]
    st.cache_data.clear()
    st.cache_resource.clear()


# -- every page -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_every_page_says_how_to_fix_a_missing_database(page: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_DB", f"sqlite:///{tmp_path / 'missing.db'}")
    st.cache_resource.clear()
    at = app(page)
    assert "no results database" in texts(at.error) and "harness run" in texts(at.error)
    assert not (tmp_path / "missing.db").exists()


def test_a_link_to_a_run_that_is_not_stored_is_an_error_not_another_run(db: RealDB) -> None:
    at = AppTest.from_file(str(VIEWS / "compare.py"), default_timeout=TIMEOUT)
    at.query_params["a"] = "0badc0ffee00"
    at.query_params["b"] = db.run_b
    at.run()
    assert not at.exception
    assert "0badc0ffee00" in texts(at.error) and "not in this database" in texts(at.error)
    assert at.selectbox(key="a").value is None  # not silently replaced by the previous run
    assert not [df for df in at.dataframe if "verdict" in df.value.columns]  # nothing compared until one is picked
    at.selectbox(key="a").set_value(db.run_a).run()
    assert at.query_params["a"] == db.run_a and frame(at, "verdict", "speedup") is not None


def test_links_name_runs_as_the_command_line_does(db: RealDB) -> None:
    at = app("compare", a="latest~1", b="latest")
    assert (at.selectbox(key="a").value, at.selectbox(key="b").value) == (db.run_a, db.run_b)
    assert (at.query_params["a"], at.query_params["b"]) == ("latest~1", "latest")  # the link keeps meaning it
    at = app("scaling", run=db.run_a[:6])
    assert at.selectbox(key="run").value == db.run_a
    at = app("run_detail", run="latest@nosuchdevice")
    assert "not in this database" in texts(at.error)


def test_compare_colours_the_verdicts(db: RealDB) -> None:
    at = app("compare")
    styled = [df for df in at.dataframe if "verdict" in df.value.columns]
    assert styled, "no comparison table"
    # the styler travels with the table to the browser: its CSS is in the element the page sent
    sent = styled[0].proto.arrow_data.SerializeToString()
    table = styled[0].value
    from dashboard.charts import VERDICT_COLORS

    for verdict in set(table["verdict"]) & set(VERDICT_COLORS):
        assert VERDICT_COLORS[verdict].encode() in sent, verdict


def test_the_router_opens_on_the_overview(db: RealDB) -> None:
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Overview"]
    assert metrics(at)["Newest run"] == db.run_b


# -- a real browser ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"the dashboard did not listen on port {port} within {timeout:.0f} s")


def _port_closed(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.3)
    return False


@pytest.mark.slow
def test_every_page_renders_in_headless_chromium(real_db: RealDB, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make system-deps` (apt-get install chromium) installs it")
    from playwright.sync_api import sync_playwright

    out = Path(os.environ.get("ATTN_SCREENSHOT_DIR") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_DB"}
    code = f"from dashboard.launch import launch; raise SystemExit(launch({real_db.url!r}, {port}))"
    # Its own session, so whatever is left of it can be killed as a group if the clean stop fails.
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    int4 = real_db.row(real_db.run_a, "int4", 32)
    fp32 = real_db.row(real_db.run_b, "fp32", 64)
    # (screenshot name or None, path, a heading to wait for, text that must be shown)
    pages = [
        ("overview", "overview", "Newest run per device", real_db.run_b),
        ("compare", f"compare?a={real_db.run_a}&b={real_db.run_b}", "Geometric mean speedup", "missing in A"),
        ("scaling", "scaling", "Fitted slopes", "slope"),
        ("tradeoffs", "tradeoffs", "against latency", "No energy per inference stored"),
        ("trends", f"trends?device=local&case={fp32['case_hash']}", "Change points", "Runs with a result"),
        ("run_detail", f"run?run={real_db.run_b}&case={fp32['case_hash']}", "Fingerprint of local", "Raw samples"),
        (None, f"run?run={real_db.run_a}&case={int4['case_hash']}", "Fingerprint of local",
         "group_size 6 must be even"),
    ]
    try:
        _wait_for_port(port, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1700})
            for name, path, heading, expected in pages:
                page.goto(f"http://127.0.0.1:{port}/{path}", timeout=60_000)
                page.wait_for_selector('[data-testid="stMainBlockContainer"]', timeout=60_000)
                page.get_by_text(heading).first.wait_for(timeout=60_000)
                try:
                    page.get_by_text(expected).first.wait_for(timeout=60_000)
                except Exception:  # noqa: BLE001 - fail with what the page did show
                    body = page.inner_text('[data-testid="stMainBlockContainer"]')
                    raise AssertionError(f"{path}: {expected!r} not shown; got {body[:3000]}") from None
                page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=60_000)
                page.wait_for_timeout(1500)  # let Vega finish drawing the charts
                body = page.inner_text('[data-testid="stMainBlockContainer"]')
                assert page.locator('[data-testid="stException"]').count() == 0, f"{path}: {body[:2000]}"
                if name in ("scaling", "tradeoffs", "trends", "compare", "run_detail"):
                    # raises (fails the test) when no chart is drawn within the time
                    page.wait_for_selector('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg',
                                           timeout=30_000)
                if name:
                    target = out / f"{name}.png"
                    page.screenshot(path=str(target), full_page=True)
                    assert target.stat().st_size > 20_000
            browser.close()
    finally:
        proc.terminate()  # launch() stops the Streamlit server it started on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        stopped = _port_closed(port)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leave nothing behind, whatever happened
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"launch() exited with {proc.returncode}"
    assert stopped, f"the Streamlit server on port {port} outlived launch()"


def test_run_detail_shows_each_cases_contention_and_warns_when_any_was_contended(db: RealDB) -> None:
    at = app("run_detail", run=db.run_b, device="local")
    cases = frame(at, "case", "status", "cpu_other", "contended")
    ok = cases[cases["status"] == "ok"]
    assert ok["cpu_other"].notna().all()  # measured for every timed case
    stored = [r for r in db.rows if r["run_id"] == db.run_b and r["status"] == "ok"]
    from harness.numfmt import pct

    assert sorted(ok["cpu_other"]) == sorted(pct(r["cpu_other"]) for r in stored)  # shown as percentages
    warned = "measured while other processes used the device's CPUs" in texts(at.warning)
    assert warned == any(r["contended"] for r in stored)


def _failures_db(path: Path) -> tuple[str, str]:
    """A real SQLite database, written through the store as runs write it: a run on pi4 whose dense fp32
    series is measured at L=128..1024, whose int8 series failed at 512 and timed out at 1024, and whose
    L=200000 case was skipped (it would not fit)."""
    from workloads.spec import canonical_case

    url = f"sqlite:///{path}"
    store = Store(url)
    run_id = store.create_run(matrix_name="failures", matrix_text="", measure={}, devices=["pi4"], tag="fails")
    store.set_run_device(run_id, "pi4", status="complete", fingerprint={"cpu_model": "Cortex-A72"})
    rng = np.random.default_rng(0)
    for precision, k in (("fp32", 2e-5), ("int8", 8e-6)):
        for n in (128, 256, 512, 1024):
            case = canonical_case({"precision": precision, "seq_len": n})
            if precision == "int8" and n >= 512:
                status = "failed" if n == 512 else "timeout"
                store.add_result(run_id, "pi4", case, {"status": status, "error": "MemoryError: 2.1 GB" if n == 512
                                                       else "cut off after 120 s (measure.timeout_s)"})
            else:
                store.add_result(run_id, "pi4", case, {"status": "ok", "samples_ms": list(
                    k * n * n * (1 + 0.02 * rng.standard_normal(12)))})
    store.add_result(run_id, "pi4", canonical_case({"precision": "fp32", "seq_len": 200_000}),
                     {"status": "skipped", "error": "needs 160 GB for the scores; the device has 4 GB"})
    store.finish_run(run_id, "complete")
    return url, run_id


def test_scaling_lists_failed_timed_out_and_skipped_cases_apart(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, run_id = _failures_db(tmp_path / "failures.db")
    monkeypatch.setenv("HARNESS_DB", url)
    st.cache_data.clear()
    st.cache_resource.clear()
    at = app("scaling", run="tag:fails")
    assert at.selectbox(key="run").value == run_id
    not_ok = frame(at, "series", "status", "error")
    assert sorted(not_ok["status"]) == ["failed", "skipped", "timeout"]
    assert "MemoryError: 2.1 GB" in set(not_ok["error"])
    slopes = frame(at, "series", "slope", "r2").set_index("series")
    int8 = [s for s in slopes.index if s.startswith("dense int8")][0]
    assert slopes.loc[int8, "ok points"] == 2 and pd.isna(slopes.loc[int8, "r2"])  # two points: no r^2
    assert "Crosses in the strip" in texts(at.caption)
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.mark.slow
def test_overview_has_its_own_link_and_scaling_shows_failures_apart_in_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make system-deps` (apt-get install chromium) installs it")
    from playwright.sync_api import sync_playwright

    out = Path(os.environ.get("ATTN_SCREENSHOT_DIR") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    url, run_id = _failures_db(tmp_path / "failures.db")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_DB"}
    code = f"from dashboard.launch import launch; raise SystemExit(launch({url!r}, {port}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_port(port, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1400})
            for path in ("overview", ""):  # /overview is a page of its own; / sends the browser there
                page.goto(f"http://127.0.0.1:{port}/{path}", timeout=60_000)
                page.get_by_text("Newest run per device").first.wait_for(timeout=60_000)
                deadline = time.monotonic() + 30
                while "/overview" not in page.url and time.monotonic() < deadline:
                    page.wait_for_timeout(200)  # Streamlit moves the address with the history API
                assert urlparse(page.url).path == "/overview", page.url
                assert "Page not found" not in page.inner_text("body")
            page.goto(f"http://127.0.0.1:{port}/scaling?run=tag:fails", timeout=60_000)
            page.get_by_text("Points without a value").first.wait_for(timeout=60_000)
            page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=60_000)
            page.wait_for_selector('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg',
                                   timeout=30_000)
            page.wait_for_timeout(1500)
            body = page.inner_text('[data-testid="stMainBlockContainer"]')
            assert page.locator('[data-testid="stException"]').count() == 0, body[:2000]
            assert "Crosses in the strip under a chart" in body and "Points without a value" in body
            assert "run=tag" in page.url  # the reference stays in the link
            target = out / "scaling_failures.png"
            page.screenshot(path=str(target), full_page=True)
            assert target.stat().st_size > 20_000
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
