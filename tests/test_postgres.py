"""The results store on SQLite and on a real PostgreSQL server: the same models and semantics behind either
URL, bulk import in one transaction, and histories from several labs merged without duplicates, across
engines too (SQLite -> PostgreSQL). The throwaway server comes from tests/pg.py."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from helpers import harness
from pg import any_db_url, pg_url  # noqa: F401  (fixtures)
from results.exchange import export_rows, import_rows, read_rows, write_csv, write_json
from results.models import Measurement, Run, SampleSet
from results.store import Store, open_store
from workloads.errors import ConfigError
from workloads.spec import canonical_case

FINGERPRINT = {"arch": "aarch64", "cpu_model": "Cortex-A76", "torch": "2.4.1", "governor": "performance"}


def lab_run(store: Store, device: str, seqs: list[int], *, tag: str, scale: float = 1.0) -> str:
    """A finished run with one ok result per seq_len (raw samples included) and one failed case."""
    run_id = store.create_run(matrix_name="nightly", matrix_text="name: nightly\n", measure={"min_samples": 3},
                              devices=[device], tag=tag)
    store.set_run_device(run_id, device, status="complete", fingerprint=FINGERPRINT, idle_power_w=2.5,
                         power_source="ina219")
    for seq in seqs:
        store.add_result(run_id, device, canonical_case({"seq_len": seq, "precision": "int8"}), {
            "status": "ok", "samples_ms": [scale * seq / 100 + i / 1000 for i in range(7)],
            "started_at": 1.7e9 + seq, "finished_at": 1.7e9 + seq + 1.5, "peak_mem_mb": 12.5,
            "accuracy": {"cos_sim": 0.99995, "rel_err": 0.004, "max_abs_err": 0.01, "rmse": 0.002},
            "power": {"energy_mj_per_inf": 0.7, "power_w_avg": 4.25, "power_source": "ina219",
                      "is_estimate": False},
            "thermal": {"throttled": False}, "calls": 70})
    store.add_result(run_id, device, canonical_case({"seq_len": 4096, "precision": "int8"}),
                     {"status": "failed", "error": "RuntimeError: out of memory"})
    store.finish_run(run_id, "complete")
    return run_id


def _count(store: Store, model: Any) -> int:
    with store.Session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


# -- the same store on both engines ---------------------------------------------------------------------
def test_the_store_behaves_the_same_on_both_engines(any_db_url):
    store = Store(any_db_url)
    run_id = lab_run(store, "rpi5", [64, 128], tag="t")
    again = store.add_result(run_id, "rpi5", canonical_case({"seq_len": 64, "precision": "int8"}),
                             {"status": "ok", "samples_ms": [9.0]})
    assert not again.stored
    assert store.status_counts(run_id) == {"ok": 2, "failed": 1}
    assert store.stored_hashes(run_id, "rpi5") and store.run_devices(run_id) == ["rpi5"]
    [listed] = store.list_runs()
    assert listed["run_id"] == run_id and listed["counts"] == {"ok": 2, "failed": 1} and listed["tag"] == "t"
    rows = export_rows(store, [run_id])
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["seq_len"] for r in ok] == [64, 128]
    assert ok[0]["samples_ms"] == [0.64 + i / 1000 for i in range(7)]
    assert ok[0]["latency_ms_p50"] == pytest.approx(0.643) and ok[0]["n_samples"] == 7
    assert ok[0]["fingerprint"] == FINGERPRINT and ok[0]["idle_power_w"] == 2.5
    assert ok[0]["is_estimate"] is False and ok[0]["throttled"] is False and ok[0]["details"]["calls"] == 70


def test_emulated_devices_are_read_from_the_fingerprint_json_on_both_engines(any_db_url):
    from results import queries

    store = Store(any_db_url)
    real = lab_run(store, "rpi5", [64], tag="real")
    emulated = store.create_run(matrix_name="arm", matrix_text="", measure={}, devices=["a72", "rpi5"])
    store.set_run_device(emulated, "a72", status="complete",
                         fingerprint=dict(FINGERPRINT, emulated=True, emulation={"emulator": "qemu-aarch64-static"}))
    store.set_run_device(emulated, "rpi5", status="complete", fingerprint=dict(FINGERPRINT, emulated=False))
    assert queries.emulated_devices(store) == {emulated: ["a72"]}
    listed = {r["run_id"]: r["emulated"] for r in store.list_runs()}
    assert listed == {real: [], emulated: ["a72"]}
    assert list(queries.runs(store).set_index("run_id").loc[[real, emulated], "emulated"]) == ["", "a72"]


def test_nan_accuracy_is_stored_on_postgres_as_null_and_on_sqlite_as_nan(any_db_url):
    store = Store(any_db_url)
    run_id = store.create_run(matrix_name="m", matrix_text="", measure={}, devices=["local"])
    store.add_result(run_id, "local", canonical_case({"seq_len": 8}),
                     {"status": "ok", "samples_ms": [1.0], "accuracy": {"cos_sim": float("nan"), "rel_err": 0.5}})
    [row] = export_rows(store)
    assert row["cos_sim"] is None and row["rel_err"] == 0.5  # the column: empty, never NaN
    kept = row["details"]["accuracy"]["cos_sim"]
    if store.backend == "postgresql":
        assert kept is None  # PostgreSQL's JSON has no NaN
    else:
        assert math.isnan(kept)


def test_harness_db_points_every_command_at_postgresql(home, pg_url, tmp_path):
    lab = Store(f"sqlite:///{tmp_path / 'lab.db'}")
    run_id = lab_run(lab, "rpi4", [64, 256], tag="lab-a")
    out = tmp_path / "lab.csv"
    with open(out, "w", newline="") as fh:
        write_csv(export_rows(lab), fh)
    env = {"HARNESS_DB": pg_url}
    imported = harness("results", "import", str(out), env=env)
    assert imported.returncode == 0, imported.stderr
    assert "imported 3 measurement(s) in 1 new run(s); 0 already present" in imported.stdout
    listing = harness("results", "list", env=env, check=True).stdout
    assert run_id in listing and "lab-a" in listing
    exported = harness("results", "export", "--all", "--format", "json", env=env, check=True).stdout
    buffer = io.StringIO()
    write_json(export_rows(lab), buffer)  # what export writes: the test-only key left out when unused
    assert json.loads(exported) == json.loads(buffer.getvalue())
    shown = harness("results", "show", run_id[:6], env=env, check=True).stdout
    assert "rpi4" in shown and "2 ok" in shown


def test_a_bad_postgresql_url_is_a_clear_error(home):
    proc = harness("results", "list", "--db", "postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    assert proc.returncode == 2 and "cannot open results database" in proc.stderr
    proc = harness("results", "list", "--db", "mysql://u@h/db")
    assert proc.returncode == 2 and "SQLite (sqlite:///FILE) or PostgreSQL" in proc.stderr


# -- import: bulk, one transaction, dedupe --------------------------------------------------------------
def synthetic_rows(runs: int, devices: int, cases: int, samples: int = 20) -> list[dict[str, Any]]:
    """Rows as export writes them, without going through a store."""
    rows = []
    for r in range(runs):
        for d in range(devices):
            for c in range(cases):
                values = [1.0 + r + c / 100 + i / 1000 for i in range(samples)]
                rows.append({"run_id": f"lab{r:03d}", "started_at": f"2026-01-{r + 1:02d}T02:00:00+00:00",
                             "run_status": "complete", "matrix": "nightly", "tag": None, "harness_version": "0.1.0",
                             "device": f"board{d}", "status": "ok", "variant": "dense", "precision": "fp32",
                             "seq_len": 16 * (c + 1), "latency_ms_p50": float(np.median(values)), "n_samples": samples,
                             "samples_ms": values, "details": {"calls": samples}, "fingerprint": {"arch": "x"},
                             "measured_at": "2026-01-01T02:00:01.250000+00:00"})
    return rows


def test_bulk_import_keeps_every_row_and_sample_and_skips_duplicates_in_the_file(any_db_url):
    store = Store(any_db_url)
    rows = synthetic_rows(runs=4, devices=3, cases=50)
    counts = import_rows(store, rows + rows[:25])  # the file repeats 25 rows: stored once
    assert counts == {"runs_added": 4, "measurements_added": 600, "measurements_skipped": 25}
    assert _count(store, Measurement) == 600 and _count(store, SampleSet) == 600
    back = {(r["run_id"], r["device"], r["seq_len"]): r for r in export_rows(store)}
    for row in rows:
        got = back[(row["run_id"], row["device"], row["seq_len"])]
        assert got["samples_ms"] == row["samples_ms"] and got["latency_ms_p50"] == row["latency_ms_p50"]
        assert got["started_at"] == row["started_at"] and got["measured_at"] == row["measured_at"]
    # Measurements written after a bulk import get fresh ids (the PostgreSQL sequence moved on).
    assert store.add_result("lab000", "board0", canonical_case({"seq_len": 8}), {"status": "ok"}).stored
    assert import_rows(store, rows)["measurements_skipped"] == 600


def test_an_import_that_fails_midway_writes_nothing(any_db_url, monkeypatch):
    store = Store(any_db_url)
    rows = synthetic_rows(runs=2, devices=1, cases=20)
    method = "_copy_measurements" if store.backend == "postgresql" else "_executemany_measurements"
    original = getattr(Store, method)

    def insert_then_fail(self: Store, s: Any, todo: Any) -> None:
        original(self, s, todo)  # everything inserted...
        raise RuntimeError("disk full")  # ...then the transaction fails

    monkeypatch.setattr(Store, method, insert_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        import_rows(store, rows)
    monkeypatch.undo()
    assert _count(store, Run) == 0 and _count(store, Measurement) == 0 and _count(store, SampleSet) == 0


def test_an_invalid_row_is_refused_before_anything_is_written(any_db_url, tmp_path):
    store = Store(any_db_url)
    rows = synthetic_rows(runs=1, devices=1, cases=3)
    rows[-1]["precision"] = "int3"
    with pytest.raises(ConfigError, match="key 'precision': row 3: unknown value 'int3'"):
        import_rows(store, rows, "lab.json")
    rows[-1]["precision"] = "fp32"
    rows[-1]["samples_ms"] = ["fast"]
    with pytest.raises(ConfigError, match="samples_ms"):
        import_rows(store, rows, "lab.json")
    assert _count(store, Run) == 0


# -- merging labs -------------------------------------------------------------------------------------------
def _export_all(url: str, path: Path, fmt: str) -> None:
    proc = harness("results", "export", "--all", "--format", fmt, "--db", url, "-o", str(path))
    assert proc.returncode == 0, proc.stderr


def test_histories_from_several_labs_merge_without_duplicates_and_keep_run_ids(home, any_db_url, tmp_path):
    lab_a = Store(f"sqlite:///{tmp_path / 'a.db'}")
    a1 = lab_run(lab_a, "rpi4", [64, 128], tag="lab-a")
    a2 = lab_run(lab_a, "rpi4", [64, 128], tag="lab-a", scale=1.1)
    lab_b = Store(f"sqlite:///{tmp_path / 'b.db'}")
    b1 = lab_run(lab_b, "jetson", [64, 512], tag="lab-b")
    # Lab B had already imported lab A's first run: the merged history must still hold it once.
    a_file = tmp_path / "a.json"
    _export_all(lab_a.url, a_file, "json")
    import_rows(lab_b, [r for r in read_rows(str(a_file)) if r["run_id"] == a1])
    b_file = tmp_path / "b.csv"
    _export_all(lab_b.url, b_file, "csv")

    first = harness("results", "import", str(a_file), "--db", any_db_url)
    assert first.returncode == 0, first.stderr
    assert "imported 6 measurement(s) in 2 new run(s); 0 already present" in first.stdout
    second = harness("results", "import", str(b_file), "--db", any_db_url)
    assert second.returncode == 0, second.stderr
    assert "imported 3 measurement(s) in 1 new run(s); 3 already present" in second.stdout
    again = harness("results", "import", str(b_file), "--db", any_db_url, check=True)
    assert "imported 0 measurement(s) in 0 new run(s); 6 already present" in again.stdout

    merged = open_store(any_db_url)
    assert {r["run_id"] for r in merged.list_runs()} == {a1, a2, b1}
    assert _count(merged, Measurement) == 9
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in export_rows(merged):
        by_run.setdefault(row["run_id"], []).append(row)
    assert by_run[a1] == export_rows(lab_a, [a1]) and by_run[a2] == export_rows(lab_a, [a2])
    assert by_run[b1] == export_rows(lab_b, [b1])


def test_sqlite_to_postgresql_round_trip_is_exact(home, pg_url, tmp_path):
    lab = Store(f"sqlite:///{tmp_path / 'lab.db'}")
    for night in range(3):
        lab_run(lab, "rpi4", [32, 64, 128], tag="nightly", scale=1 + night / 10)
    out = tmp_path / "lab.csv"
    _export_all(lab.url, out, "csv")
    harness("results", "import", str(out), "--db", pg_url, check=True)
    back = tmp_path / "back.csv"
    _export_all(pg_url, back, "csv")
    assert back.read_text() == out.read_text()
    # And back again into a new SQLite file: the same rows (JSON cells came through CSV with sorted keys).
    again = tmp_path / "again.db"
    harness("results", "import", str(back), "--db", f"sqlite:///{again}", check=True)
    final = tmp_path / "final.json"
    _export_all(f"sqlite:///{again}", final, "json")
    with open(tmp_path / "lab.json", "w") as fh:
        write_json(export_rows(lab), fh)
    assert json.loads(final.read_text()) == json.loads((tmp_path / "lab.json").read_text())


def test_without_postgresql_binaries_the_tests_skip_locally_and_fail_under_ci(monkeypatch):
    import pg

    def missing() -> Any:
        raise pg.PostgresUnavailable("no PostgreSQL server binaries")

    monkeypatch.setattr(pg, "shared_cluster", missing)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL not available"):
        pg.cluster_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run under CI"):
        pg.cluster_or_skip()
