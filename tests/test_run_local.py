"""`harness run` on the local device, end to end, into a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from devices.inventory import load_inventory
from harness.controller import run_sweep
from kernels import fused_int8
from results.exchange import export_rows, import_rows, read_rows, write_csv, write_json
from results.store import Store, unpack_samples
from workloads.matrix import load_matrix

from helpers import harness, write_matrix

QUICK = """
name: quick-test
defaults: {batch: 1, heads: 4, head_dim: 32}
matrix:
  precision: [fp32, bf16, int8]
  seq_len: [64, 256]
"""


@pytest.fixture
def quick_run(home: Path, db_url: str):
    matrix = write_matrix(home / "quick.yaml", QUICK)
    store = Store(db_url)
    outcome = run_sweep(load_inventory(), store, devices=["local"], matrix_path=str(matrix))
    return store, outcome, load_matrix(matrix)


def test_local_run_stores_one_row_per_case_with_raw_samples(quick_run):
    store, outcome, sweep = quick_run
    assert outcome.status == "complete" and outcome.exit_code == 0
    rows = export_rows(store, [outcome.run_id])
    assert len(rows) == len(sweep.cases) == 6
    assert {r["case_hash"] for r in rows} == set(sweep.hashes)
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert r["latency_ms_p50"] > 0 and r["n_samples"] >= 3
        assert len(r["samples_ms"]) == r["n_samples"]
        assert r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["peak_mem_mb"] > 0 and r["kv_bytes"] > 0
        assert r["threads_used"] >= 1
        # No sensor configured: energy stays empty, never zero.
        assert r["energy_mj_per_inf"] is None and r["power_w_avg"] is None
    fp = rows[0]["fingerprint"]
    assert fp["arch"] and fp["cpu_model"] and "isa" in fp and fp["torch"]


def test_int8_dense_is_accurate_against_float64(quick_run):
    store, outcome, _ = quick_run
    for r in export_rows(store, [outcome.run_id]):
        if r["precision"] == "int8":
            assert r["cos_sim"] >= 0.9999 and r["rel_err"] <= 0.02, r
            # The stored details name the route and the back end that ran (the fused kernel, or eager _int_mm).
            meta = r["details"]["kernel_meta"]
            assert meta["int8_backend"] in (*fused_int8.BACKENDS, "eager"), meta
            assert ("_int_mm" if meta["int8_backend"] == "eager" else meta["int8_backend"]) in r["details"]["compute"]
        if r["precision"] == "fp32":
            assert r["cos_sim"] >= 0.99999


def test_summaries_are_derived_from_the_stored_raw_samples(quick_run, db_url):
    store, outcome, _ = quick_run
    import numpy as np

    path = db_url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        for p50, blob in conn.execute("select m.latency_ms_p50, s.\"values\" from measurements m "
                                      "join samples s on s.measurement_id = m.id"):
            assert p50 == pytest.approx(float(np.median(unpack_samples(blob))))
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_export_import_export_round_trips(quick_run, tmp_path):
    store, outcome, _ = quick_run
    for fmt, writer in (("csv", write_csv), ("json", write_json)):
        out = tmp_path / f"a.{fmt}"
        with open(out, "w", newline="") as fh:
            writer(export_rows(store), fh)
        other = Store(f"sqlite:///{tmp_path / f'other-{fmt}.db'}")
        counts = import_rows(other, read_rows(str(out)))
        assert counts["measurements_added"] == 6
        assert export_rows(other) == export_rows(store)
        # Importing again merges nothing twice.
        assert import_rows(other, read_rows(str(out)))["measurements_skipped"] == 6
        assert len(export_rows(other)) == 6


def test_resume_of_a_complete_run_is_refused(quick_run, db_url):
    _, outcome, _ = quick_run
    proc = harness("run", "--resume", outcome.run_id, "--db", db_url)
    assert proc.returncode == 2 and "complete" in proc.stderr


def test_cli_run_prints_table_and_run_id_and_results_commands_work(home, db_url):
    matrix = write_matrix(home / "m.yaml", "matrix:\n  precision: [fp32]\n  seq_len: [32]\n")
    proc = harness("run", "--devices", "local", "--matrix", str(matrix), "--db", db_url, "--tag", "t1")
    assert proc.returncode == 0, proc.stderr
    assert "dense fp32 torch L=32" in proc.stdout and "1 ok" in proc.stdout
    run_id = proc.stdout.strip().splitlines()[-1].split()[2].rstrip(":")
    listing = harness("results", "list", "--db", db_url, check=True).stdout
    assert run_id in listing and "t1" in listing
    exported = harness("results", "export", run_id, "--format", "json", "--db", db_url, check=True).stdout
    assert json.loads(exported)[0]["run_id"] == run_id


def test_dry_run_prints_expanded_cases_and_writes_nothing(home, db_url):
    matrix = write_matrix(home / "m.yaml", QUICK)
    proc = harness("run", "--devices", "local", "--matrix", str(matrix), "--dry-run", "--db", db_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("dense ") == 6 and "local: 6 case(s)" in proc.stdout
    assert not Path(db_url.split("///", 1)[1]).exists()


@pytest.mark.parametrize("body, words", [
    ("matrix:\n  precision: [fp32, int3]\n", "bad.yaml:2: key 'precision'"),
    ("matrix:\n  seq_len: [-4]\n", "bad.yaml:2: key 'seq_len'"),
    ("matrix:\n  precison: [fp32]\n", "bad.yaml:2: key 'precison'"),
    ("matrix: [fp32\n", "bad.yaml:2: not valid YAML"),
])
def test_bad_matrix_exits_2_naming_file_line_and_key_and_writes_no_run(home, db_url, body, words):
    good = write_matrix(home / "good.yaml", "matrix:\n  seq_len: [32]\n")
    harness("run", "--devices", "local", "--matrix", str(good), "--db", db_url, check=True)
    bad = home / "bad.yaml"
    bad.write_text(body)
    proc = harness("run", "--devices", "local", "--matrix", str(bad), "--db", db_url)
    assert proc.returncode == 2
    assert words in proc.stderr.replace("\n", " ")
    assert Store(db_url).count_runs() == 1


def test_unknown_device_exits_2_listing_known_devices(home, db_url):
    good = write_matrix(home / "good.yaml", "matrix:\n  seq_len: [32]\n")
    proc = harness("run", "--devices", "locl", "--matrix", str(good), "--db", db_url)
    assert proc.returncode == 2 and "did you mean 'local'" in proc.stderr
    assert not Path(db_url.split("///", 1)[1]).exists()


def test_unregistered_kernel_is_refused_before_anything_runs(home, db_url):
    matrix = write_matrix(home / "m.yaml", "matrix:\n  precision: [fp32]\n  backend: [no_such]\n")
    proc = harness("run", "--devices", "local", "--matrix", str(matrix), "--db", db_url)
    assert proc.returncode == 2 and "allowed: torch, onnxruntime" in proc.stderr
