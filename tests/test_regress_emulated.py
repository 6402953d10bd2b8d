"""Regression history never mixes emulated and real runs of a device: they are separate series, and findings
on emulated series say so in every format."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from harness.report import findings_json, findings_markdown, findings_text
from results import regress
from results.models import Run
from results.store import Store
from workloads.spec import canonical_case

T0 = datetime(2026, 3, 1, 2, 0, 0)
CASE = canonical_case({"precision": "fp32", "seq_len": 128})
REAL = {"arch": "aarch64", "cpu_model": "Cortex-A72", "torch": "2.9.1"}
EMULATED = dict(REAL, emulated=True, emulation={"emulator": "qemu-aarch64-static", "cpu": "cortex-a72",
                                                "host_cpu": "AMD EPYC"})


def night(store: Store, day: int, median: float, fingerprint: dict) -> str:
    rng = np.random.default_rng(day)
    run_id = store.create_run(matrix_name="nightly", matrix_text="", measure={}, devices=["rpi4"])
    store.set_run_device(run_id, "rpi4", status="complete", fingerprint=fingerprint)
    samples = [float(x) for x in median * (1 + 0.01 * rng.standard_normal(30))]
    store.add_result(run_id, "rpi4", CASE, {"status": "ok", "samples_ms": samples})
    store.finish_run(run_id, "complete")
    with store.Session.begin() as s:
        s.get(Run, run_id).started_at = T0 + timedelta(days=day)
    return run_id


def test_real_then_emulated_nights_are_two_series_and_no_change_is_found_between_them(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    for day in range(8):
        night(store, day, 10.0, REAL)
    for day in range(8, 16):
        night(store, day, 900.0, EMULATED)  # 90x slower: the emulator, not a regression
    series = regress.load_series(store)
    assert sorted((s.emulated, len(s.points)) for s in series) == [(False, 8), (True, 8)]
    assert regress.history(store) == []
    assert regress.latest(store) == []


def test_a_step_inside_the_emulated_history_is_found_and_labelled_emulated(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    for day in range(4):
        night(store, day, 10.0, REAL)
    for day in range(4, 10):
        night(store, day, 900.0, EMULATED)
    for day in range(10, 16):
        night(store, day, 1200.0, EMULATED)
    found = regress.history(store)
    assert [(f.direction, f.emulated) for f in found] == [("regression", True)]
    assert 850 < found[0].before < 950 and 1150 < found[0].after < 1250  # the real 10 ms nights took no part
    assert "REGRESSION rpi4 (emulated)" in findings_text(found, mode="history")
    assert "EMULATED: rpi4" in findings_text(found, mode="history")
    assert "| rpi4 (emulated) |" in findings_markdown(found, title="t", mode="history")
    assert json.loads(findings_json(found))[0]["emulated"] is True
