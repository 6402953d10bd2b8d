"""Readers survive bad stored data: a database holding one NaN row and one negative latency (written before
import validated rows, or by hand) still gives `regress`, `regress --history`, `compare`, `nightly` and every
dashboard page, and each says how many values it left out and where.

The database is real SQLite: a history of the local device imported through `results import`, then two
measurements corrupted in place with SQL, as an old database would hold them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from helpers import REPO
from results.exchange import import_rows
from results.store import Store
from workloads.spec import canonical_case, case_hash

logging.getLogger("streamlit").setLevel(logging.ERROR)

VIEWS = REPO / "dashboard" / "views"
CASE = {"variant": "dense", "precision": "fp32", "backend": "torch", "seq_len": 32, "batch": 1, "heads": 2,
        "head_dim": 16, "threads": 1}
MATRIX = ("name: bad-rows\ndefaults: {batch: 1, heads: 2, head_dim: 16, backend: torch, threads: 1, variant: dense, "
          "precision: fp32}\nmatrix:\n  seq_len: [32]\n"
          "measure: {warmup_s: 0.01, min_time_s: 0.05, min_samples: 5, max_time_s: 2, timeout_s: 120}\n")
NAN_RUN, NEGATIVE_RUN = "hist00000003", "hist00000004"


class BadDB:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.hash = case_hash(canonical_case(CASE))


@pytest.fixture(scope="module")
def bad_db(tmp_path_factory: pytest.TempPathFactory) -> BadDB:
    path = tmp_path_factory.mktemp("bad") / "results.db"
    store = Store(f"sqlite:///{path}")
    rows = []
    for i in range(7):
        for seq_len in (32, 64):
            rows.append({"run_id": f"hist{i:08d}", "started_at": f"2026-01-{i + 1:02d}T02:00:00+00:00",
                         "run_status": "complete", "matrix": "bad-rows", "harness_version": "0.1.0",
                         "git_revision": "0123456789abcdef", "device": "local", "status": "ok",
                         **dict(CASE, seq_len=seq_len), "fingerprint": {"arch": "x86_64"},
                         "samples_ms": [0.5 + j / 1000 for j in range(12)], "cos_sim": 0.999999})
    import_rows(store, rows)
    with store.engine.begin() as conn:
        ids = dict(tuple(r) for r in conn.exec_driver_sql(
            "SELECT m.run_id, m.id FROM measurements m JOIN cases c ON c.id = m.case_id WHERE c.seq_len = 32"))
        nan = struct.pack("<3d", math.nan, 0.5, 0.51)
        conn.exec_driver_sql("UPDATE samples SET \"values\" = ?, n = 3 WHERE measurement_id = ?", (nan, ids[NAN_RUN]))
        conn.exec_driver_sql("UPDATE measurements SET latency_ms_p50 = NULL WHERE id = ?", (ids[NAN_RUN],))
        neg = struct.pack("<3d", -1.0, -1.1, -0.9)
        conn.exec_driver_sql("UPDATE samples SET \"values\" = ?, n = 3 WHERE measurement_id = ?",
                             (neg, ids[NEGATIVE_RUN]))
        conn.exec_driver_sql("UPDATE measurements SET latency_ms_p50 = -1.0, latency_ms_p90 = -0.9 WHERE id = ?",
                             (ids[NEGATIVE_RUN],))
    store.engine.dispose()
    return BadDB(path)


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DB", "HARNESS_INVENTORY")}
    env.update(PYTHONPATH=str(REPO), HOME=str(cwd))
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _says_both_bad_rows(text: str) -> None:
    assert "2 stored value(s)" in text, text
    assert NAN_RUN in text and NEGATIVE_RUN in text, text


@pytest.mark.parametrize("args", [["regress"], ["regress", "--history"], ["regress", "--history", "--format", "json"]])
def test_regress_skips_the_bad_rows_and_says_where(bad_db: BadDB, tmp_path: Path, args: list[str]) -> None:
    proc = harness(*args, "--db", bad_db.url, cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    _says_both_bad_rows(proc.stderr)
    if "json" in args:
        json.loads(proc.stdout)  # the JSON shape is unchanged (a list), the warning went to stderr


def test_compare_across_a_bad_row_says_which_values_it_left_out(bad_db: BadDB, tmp_path: Path) -> None:
    proc = harness("compare", NAN_RUN, NEGATIVE_RUN, "--db", bad_db.url, cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    _says_both_bad_rows(proc.stderr)
    assert "no samples" in proc.stdout


def test_nightly_over_a_database_with_bad_rows_checks_the_rest_and_reports_them(bad_db: BadDB, tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    db.write_bytes(bad_db.path.read_bytes())
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX)
    report = tmp_path / "report.md"
    proc = harness("nightly", "--devices", "local", "--matrix", str(matrix), "--report", str(report),
                   "--db", f"sqlite:///{db}", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # checked: not 3 ("could not check")
    assert "Traceback" not in proc.stderr
    text = report.read_text()
    assert "## Stored values left out" in text and NAN_RUN in text and NEGATIVE_RUN in text, text
    assert f"Exit code {proc.returncode}" in text


def test_nightly_writes_a_report_with_failed_cases_and_exits_3_when_it_could_not_check(tmp_path: Path) -> None:
    """A device that cannot finish is 'could not check' (3), not 'regression found' (1); the report lists it
    and the skipped case."""
    inventory = tmp_path / "devices.yaml"
    inventory.write_text("devices:\n  ghost:\n    host: 127.0.0.1\n    port: 1\n    connect_timeout_s: 2\n")
    matrix = tmp_path / "m.yaml"
    # differential attention has no onnxruntime kernel: that combination is planned and stored as skipped.
    matrix.write_text(MATRIX.replace("seq_len: [32]", "seq_len: [32]\n  variant: [dense, differential]\n  backend: "
                                                      "[torch, onnxruntime]"))
    report = tmp_path / "report.md"
    proc = harness("nightly", "--devices", "local,ghost", "--matrix", str(matrix), "--report", str(report),
                   "--inventory", str(inventory), "--db", f"sqlite:///{tmp_path / 'r.db'}", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    text = report.read_text()
    assert "## Could not check" in text and "ghost" in text
    assert "## Cases without a result" in text and "skipped" in text and "not implemented" in text
    assert "Exit code 3: could not check" in text


# -- every dashboard page ------------------------------------------------------------------------------
@pytest.fixture
def dash(bad_db: BadDB, monkeypatch: pytest.MonkeyPatch) -> Iterator[BadDB]:
    monkeypatch.setenv("HARNESS_DB", bad_db.url)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield bad_db
    st.cache_data.clear()
    st.cache_resource.clear()


def _page(name: str, **params: str) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("page, params, runs", [
    ("overview", {}, (NAN_RUN, NEGATIVE_RUN)),
    ("compare", {"a": NAN_RUN, "b": NEGATIVE_RUN, "device": "local"}, (NAN_RUN, NEGATIVE_RUN)),
    ("scaling", {"run": NEGATIVE_RUN}, (NEGATIVE_RUN,)),
    ("tradeoffs", {"run": NEGATIVE_RUN}, (NEGATIVE_RUN,)),
    ("trends", {"device": "local", "case": "HASH", "metric": "latency_ms_p50"}, (NAN_RUN, NEGATIVE_RUN)),
    ("run_detail", {"run": NAN_RUN, "device": "local", "case": "HASH"}, (NAN_RUN,)),
])
def test_every_dashboard_page_works_and_reports_the_bad_rows(dash: BadDB, page: str, params: dict[str, str],
                                                            runs: tuple[str, ...]) -> None:
    at = _page(page, **{k: (dash.hash if v == "HASH" else v) for k, v in params.items()})
    warnings = "\n".join(str(w.value) for w in at.warning)
    assert "not finite or impossible" in warnings, warnings
    for run_id in runs:
        assert run_id in warnings, warnings


def test_run_detail_does_not_chart_impossible_raw_samples(dash: BadDB) -> None:
    at = _page("run_detail", run=NEGATIVE_RUN, device="local", case=dash.hash)
    assert "raw samples of this case are impossible" in "\n".join(str(w.value) for w in at.warning)
