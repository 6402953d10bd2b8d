"""Read-side queries over a real SQLite store filled with planted runs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from results import queries
from results.models import Run
from results.store import Store
from workloads.errors import StoreError
from workloads.spec import canonical_case, case_hash

T0 = datetime(2026, 3, 1, 2, 0, 0)
FP32 = canonical_case({"precision": "fp32", "seq_len": 128})
INT8 = canonical_case({"precision": "int8", "seq_len": 128})
FP = {"arch": "aarch64", "cpu_model": "Cortex-A72", "cores": 4, "torch": "2.4.1", "os": "Debian 12"}


def noisy(median: float, n: int = 30, cv: float = 0.01, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in median * (1 + cv * rng.standard_normal(n))]


def record(samples: list[float] | None, status: str = "ok", error: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"status": status, "error": error, "samples_ms": samples or [], "started_at": 1.0e9,
            "finished_at": 1.0e9 + 1, **extra}


def plant(store: Store, when: datetime, results: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]],
          git: str = "rev1", fingerprint: dict[str, Any] | None = None) -> str:
    """A run at `when` with results per device; finished_at of every measurement is `when` too."""
    run_id = store.create_run(matrix_name="planted", matrix_text="", measure={}, devices=list(results))
    for device, items in results.items():
        store.set_run_device(run_id, device, status="complete", fingerprint=fingerprint or FP)
        for case, rec in items:
            epoch = when.replace(tzinfo=timezone.utc).timestamp()
            store.add_result(run_id, device, case, dict(rec, started_at=epoch, finished_at=epoch))
    store.finish_run(run_id, "complete")
    with store.Session.begin() as s:
        run = s.get(Run, run_id)
        run.started_at, run.git_revision = when, git
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'results.db'}")


def test_runs_come_newest_first_with_counts_by_status_and_devices(store: Store) -> None:
    old = plant(store, T0, {"rpi4": [(FP32, record(noisy(10.0))), (INT8, record(None, "skipped", "no _int_mm"))]})
    new = plant(store, T0 + timedelta(days=1), {
        "rpi4": [(FP32, record(noisy(10.0))), (INT8, record(None, "failed", "boom"))],
        "jetson": [(FP32, record(noisy(2.0)))]})
    df = queries.runs(store)
    assert list(df["run_id"]) == [new, old]
    first = df.iloc[0]
    assert (first["ok"], first["failed"], first["skipped"], first["timeout"], first["measurements"]) == (2, 1, 0, 0, 3)
    assert first["devices"] == "jetson, rpi4"
    assert (df.iloc[1]["ok"], df.iloc[1]["skipped"]) == (1, 1)


def test_resolve_run_takes_prefixes_latest_and_previous(store: Store) -> None:
    a = plant(store, T0, {"rpi4": [(FP32, record(noisy(10.0)))]})
    b = plant(store, T0 + timedelta(hours=1), {"rpi4": [(FP32, record(noisy(10.0)))]})
    assert queries.resolve_run(store, "latest") == b
    assert queries.resolve_run(store, "previous") == a
    assert queries.resolve_run(store, a[:5]) == a
    with pytest.raises(StoreError, match="run 'zzz' does not exist"):
        queries.resolve_run(store, "zzz")


def test_device_status_gives_newest_run_counts_and_marks_quiet_devices_stale(store: Store) -> None:
    plant(store, T0, {"rpi4": [(FP32, record(noisy(10.0)))], "jetson": [(FP32, record(noisy(2.0)))]})
    newest = plant(store, T0 + timedelta(days=2), {
        "rpi4": [(FP32, record(noisy(10.0))), (INT8, record(None, "timeout", "took too long"))]})
    df = queries.device_status(store, now=T0 + timedelta(days=2, hours=3)).set_index("device")
    assert df.loc["rpi4", "run_id"] == newest
    assert (df.loc["rpi4", "ok"], df.loc["rpi4", "timeout"]) == (1, 1)
    assert df.loc["rpi4", "hours_since_result"] == pytest.approx(3.0)
    assert not df.loc["rpi4", "stale"]
    assert df.loc["jetson", "stale"]
    assert df.loc["jetson", "hours_since_result"] == pytest.approx(51.0)


def test_noise_floor_is_the_cv_of_a_cases_p50_across_runs(store: Store) -> None:
    # p50s 9, 10, 11 (constant samples): sample std 1, mean 10 -> CV 10%; within-run CV is 0.
    for i, p50 in enumerate((9.0, 10.0, 11.0)):
        plant(store, T0 + timedelta(days=i), {"rpi4": [(FP32, record([p50] * 5))]})
    df = queries.noise_floor(store).set_index("device")
    assert df.loc["rpi4", "repeated_cases"] == 1
    assert df.loc["rpi4", "run_to_run_cv"] == pytest.approx(0.1, rel=1e-6)
    assert df.loc["rpi4", "within_run_cv"] == pytest.approx(0.0, abs=1e-12)


def test_noise_floor_looks_only_at_each_devices_newest_runs(store: Store) -> None:
    plant(store, T0, {"rpi4": [(FP32, record([50.0] * 5))]})  # an old outlier outside the window
    for i in range(3):
        plant(store, T0 + timedelta(days=1 + i), {"rpi4": [(FP32, record([10.0] * 5))]})
    df = queries.noise_floor(store, last_runs=3).set_index("device")
    assert df.loc["rpi4", "run_to_run_cv"] == pytest.approx(0.0, abs=1e-9)


def test_measurements_carry_case_keys_label_status_and_error(store: Store) -> None:
    run = plant(store, T0, {"rpi4": [(FP32, record(noisy(10.0), cos_sim=None)),
                                     (INT8, record(None, "failed", "RuntimeError: boom"))]})
    df = queries.measurements(store, run).set_index("precision")
    assert df.loc["fp32", "case"] == "dense fp32 torch L=128"
    assert df.loc["int8", "status"] == "failed" and df.loc["int8", "error"] == "RuntimeError: boom"
    assert df.loc["fp32", "case_hash"] == case_hash(FP32)
    assert df.loc["fp32", "latency_ms_p50"] == pytest.approx(float(np.median(noisy(10.0))))
    assert np.isnan(df.loc["int8", "latency_ms_p50"])
    mid = int(df.loc["fp32", "measurement_id"])
    assert queries.samples(store, [mid])[mid] == pytest.approx(noisy(10.0))


def test_series_is_one_case_on_one_device_in_time_order(store: Store) -> None:
    ids = [plant(store, T0 + timedelta(days=d), {"rpi4": [(FP32, record([10.0 + d] * 3))],
                                                 "jetson": [(FP32, record([1.0] * 3))]}, git=f"rev{d}")
           for d in (2, 0, 1)]
    df = queries.series(store, "rpi4", case_hash(FP32))
    assert list(df["run_id"]) == [ids[1], ids[2], ids[0]]
    assert list(df["value"]) == [10.0, 11.0, 12.0]
    assert list(df["git_revision"]) == ["rev0", "rev1", "rev2"]
    assert df["env_key"].nunique() == 1


def test_device_cases_counts_runs_per_case(store: Store) -> None:
    plant(store, T0, {"rpi4": [(FP32, record([1.0])), (INT8, record([1.0]))]})
    plant(store, T0 + timedelta(days=1), {"rpi4": [(FP32, record([1.0]))]})
    df = queries.device_cases(store, "rpi4").set_index("precision")
    assert (df.loc["fp32", "runs"], df.loc["int8", "runs"]) == (2, 1)
    assert queries.devices(store) == ["rpi4"]


def test_latest_regressions_flags_a_planted_slowdown_in_the_newest_run_only(store: Store) -> None:
    for night in range(10):
        slow = night == 9
        plant(store, T0 + timedelta(days=night), {"rpi4": [
            (FP32, record(noisy(13.0 if slow else 10.0, cv=0.01, seed=night))),
            (INT8, record(noisy(5.0, cv=0.01, seed=100 + night)))]})
    df = queries.latest_regressions(store)
    assert list(df["case"]) == ["dense fp32 torch L=128"]
    assert df.iloc[0]["change_pct"] == pytest.approx(30.0, abs=2.0)
    assert df.iloc[0]["device"] == "rpi4"


def test_latest_regressions_is_empty_on_a_steady_history(store: Store) -> None:
    for night in range(8):
        plant(store, T0 + timedelta(days=night), {"rpi4": [(FP32, record(noisy(10.0, seed=night)))]})
    assert queries.latest_regressions(store).empty


def test_read_only_engine_reads_but_cannot_write(store: Store, tmp_path: Path) -> None:
    plant(store, T0, {"rpi4": [(FP32, record([1.0]))]})
    engine = queries.read_only_engine(store.url)
    queries.check_schema(engine)
    assert len(queries.runs(engine)) == 1
    with engine.connect() as conn:
        with pytest.raises(Exception, match="readonly|read-only|query_only"):
            conn.execute(text("DELETE FROM runs"))


def test_read_only_engine_never_creates_a_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(StoreError, match="no results database"):
        queries.read_only_engine(f"sqlite:///{missing}")
    assert not missing.exists()


def test_check_schema_says_how_to_upgrade(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with pytest.raises(StoreError, match="harness db upgrade"):
        queries.check_schema(queries.read_only_engine(f"sqlite:///{path}"))


EMULATED_FP = dict(FP, emulated=True, emulation={"emulator": "qemu-aarch64-static", "cpu": "cortex-a72",
                                                 "host_cpu": "AMD EPYC"})


def test_runs_and_series_say_which_devices_ran_under_an_emulator(store: Store) -> None:
    real = plant(store, T0, {"rpi4": [(FP32, record(noisy(10.0)))]})
    emulated = plant(store, T0 + timedelta(days=1), {"rpi4": [(FP32, record(noisy(900.0)))]},
                     fingerprint=EMULATED_FP)
    df = queries.runs(store).set_index("run_id")
    assert df.loc[emulated, "emulated"] == "rpi4" and df.loc[real, "emulated"] == ""
    assert queries.emulated_devices(store) == {emulated: ["rpi4"]}
    assert queries.emulated_devices(store, [real]) == {}
    series = queries.series(store, "rpi4", case_hash(FP32))
    assert [bool(x) for x in series["emulated"]] == [False, True]
