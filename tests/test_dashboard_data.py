"""The dashboard's cached query functions (dashboard/data.py) over a planted SQLite store."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import streamlit as st

from results.models import Run
from results.store import Store
from workloads.spec import canonical_case, case_hash

logging.getLogger("streamlit").setLevel(logging.ERROR)

from dashboard import data  # noqa: E402  (after quieting Streamlit's "no runtime" warnings)

T0 = datetime(2026, 3, 1, 2, 0, 0)
FP32 = canonical_case({"precision": "fp32", "seq_len": 256})
FP = {"arch": "aarch64", "cpu_model": "Cortex-A72", "cores": 4, "torch": "2.4.1", "os": "Debian 12"}


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def plant(store: Store, night: int, median: float, git: str, fingerprint: dict[str, Any]) -> str:
    rng = np.random.default_rng(night)
    when = T0 + timedelta(days=night)
    run_id = store.create_run(matrix_name="nightly", matrix_text="", measure={}, devices=["rpi4"])
    store.set_run_device(run_id, "rpi4", status="complete", fingerprint=fingerprint)
    epoch = when.replace(tzinfo=timezone.utc).timestamp()
    store.add_result(run_id, "rpi4", FP32, {"status": "ok", "samples_ms": list(median * (1 + 0.005 * rng.standard_normal(25))),
                                           "started_at": epoch, "finished_at": epoch})
    store.finish_run(run_id, "complete")
    with store.Session.begin() as s:
        run = s.get(Run, run_id)
        run.started_at, run.git_revision = when, git
    return run_id


def test_trend_finds_a_planted_step_and_names_the_revision_that_changed(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    ids = [plant(store, i, 10.0 if i < 8 else 11.0, f"rev{i:02d}", FP) for i in range(16)]
    series, changes, note = data.trend(store.url, "rpi4", case_hash(FP32), "latency_ms_p50")
    assert list(series["run_id"]) == ids
    assert note is None
    assert list(changes["run_id"]) == [ids[8]]
    row = changes.iloc[0]
    assert row["direction"] == "regression" and row["change %"] == pytest.approx(10.0, abs=1.0)
    assert row["what changed"] == "git rev07 -> rev08"
    assert row["cause"] == ""


def test_trend_blames_a_library_upgrade_at_the_step(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    for i in range(16):
        plant(store, i, 10.0 if i < 8 else 12.0, "rev", FP if i < 8 else dict(FP, torch="2.5.0"))
    _, changes, _ = data.trend(store.url, "rpi4", case_hash(FP32), "latency_ms_p50")
    row = changes.iloc[0]
    assert row["cause"] == "environment changed"
    assert row["what changed"] == "torch 2.4.1 -> 2.5.0"


def test_trend_says_why_a_short_history_has_no_change_points(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    for i in range(3):
        plant(store, i, 10.0, "rev", FP)
    series, changes, note = data.trend(store.url, "rpi4", case_hash(FP32), "latency_ms_p50")
    assert len(series) == 3 and changes.empty
    assert note is not None and note.startswith("3 run(s) with a result")


def test_comparison_is_forced_and_keyed_on_scalars(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    a = plant(store, 0, 10.0, "rev", FP)
    b = plant(store, 1, 5.0, "rev", dict(FP, torch="2.5.0"))
    cmp = data.comparison(store.url, a, b, "rpi4", 0.05)
    assert not cmp.comparable and [d.field for d in cmp.stable_diffs] == ["torch"]
    assert [c.verdict for c in cmp.cases] == ["faster"]
    assert data.comparison(store.url, a, b, "rpi4", 0.05) == cmp  # cached: the same answer


def test_the_dashboard_engine_refuses_to_write(tmp_path: Path) -> None:
    from sqlalchemy import text

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    plant(store, 0, 10.0, "rev", FP)
    with data.engine(store.url).connect() as conn:
        with pytest.raises(Exception, match="readonly|read-only"):
            conn.execute(text("UPDATE runs SET status = 'x'"))


def test_launch_serves_on_loopback_headless() -> None:
    from dashboard.launch import command

    cmd = command(8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8765"
    assert flags["--server.headless"] == "true"


def test_launch_refuses_a_missing_database_before_starting_anything(tmp_path: Path) -> None:
    from dashboard.launch import launch
    from workloads.errors import StoreError

    with pytest.raises(StoreError, match="no results database"):
        launch(f"sqlite:///{tmp_path / 'missing.db'}", 8765)
    assert not (tmp_path / "missing.db").exists()
