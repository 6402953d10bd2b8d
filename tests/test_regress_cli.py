"""`harness regress` over an imported history, and `harness nightly` catching a planted slowdown."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np

from helpers import harness, write_matrix
from workloads.spec import canonical_case, case_hash

SPEC_KEYS = {"device", "case", "metric", "run_id", "started_at", "before", "after", "change_pct", "direction"}


def _history_rows(n_runs: int, step_at: int, step: float, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    case = canonical_case({"precision": "int8", "seq_len": 512})
    start = datetime(2026, 10, 1, 2, 0, tzinfo=timezone.utc)
    rows = []
    for i in range(n_runs):
        level = 4.0 * (1 + step if i >= step_at else 1)
        night = level * (1 + rng.normal(0, 0.004))
        samples = list(night * (1 + rng.normal(0, 0.01, 25)))
        rows.append({"run_id": f"night{i:02d}", "started_at": (start + timedelta(days=i)).isoformat(),
                     "run_status": "complete", "matrix": "nightly", "device": "rpi4", "status": "ok",
                     "case_hash": case_hash(case), **case, "samples_ms": samples,
                     "latency_ms_p50": float(np.median(samples)), "n_samples": len(samples),
                     "fingerprint": {"arch": "aarch64", "cpu_model": "Cortex-A72", "torch": "2.13.0"},
                     "git_revision": "abc1234" if i < step_at else "def5678"})
    return rows


def test_imported_history_yields_change_points_in_the_spec_format(home, db_url, tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps(_history_rows(16, 9, 0.12)))
    harness("results", "import", str(path), "--db", db_url, check=True)
    proc = harness("regress", "--history", "--format", "json", "--db", db_url)
    assert proc.returncode == 0, proc.stderr  # --history lists; it does not judge the newest run
    found = json.loads(proc.stdout)
    assert len(found) == 1
    cp = found[0]
    assert SPEC_KEYS <= set(cp) and "statistic" in cp and "p_value" in cp
    assert cp["device"] == "rpi4" and cp["case"]["precision"] == "int8" and cp["metric"] == "latency_ms"
    assert cp["run_id"] == "night09" and cp["direction"] == "regression"
    assert 9 < cp["change_pct"] < 15 and cp["before"] < cp["after"]
    assert cp["differs"]["git_revision"] == ["abc1234", "def5678"]


def test_a_clean_history_has_no_change_points_and_regress_exits_0(home, db_url, tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps(_history_rows(16, 99, 0.0)))
    harness("results", "import", str(path), "--db", db_url, check=True)
    assert json.loads(harness("regress", "--history", "--format", "json", "--db", db_url).stdout) == []
    proc = harness("regress", "--db", db_url)
    assert proc.returncode == 0 and "no regressions" in proc.stdout


def test_newest_night_that_regresses_makes_regress_exit_1(home, db_url, tmp_path):
    rows = _history_rows(12, 11, 0.30)
    path = tmp_path / "history.json"
    path.write_text(json.dumps(rows))
    harness("results", "import", str(path), "--db", db_url, check=True)
    proc = harness("regress", "--format", "markdown", "--db", db_url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "night11" in proc.stdout and "## Regressions" in proc.stdout


def test_nightly_twice_with_a_planted_slowdown_exits_1_and_names_the_slowed_cases(home, db_url, tmp_path):
    # One thread: on a loaded machine, OpenMP threads waiting for time slices swamp any planted change.
    # max_cpu_other 1.0: what this tests is the detection of a planted change; on a shared test machine every
    # night would be flagged contended, and regress rightly judges no contended night.
    matrix = write_matrix(home / "nightly.yaml", "defaults: {threads: 1}\nmatrix:\n  precision: [fp32, bf16]\n  seq_len: [64]\n",
                          "measure: {warmup_s: 0.05, min_time_s: 0.3, min_samples: 15, max_time_s: 5, timeout_s: 60, "
                          "max_cpu_other: 1.0, processes: 3}")
    first = harness("nightly", "--devices", "local", "--matrix", str(matrix), "--db", db_url,
                    "--report", str(tmp_path / "n1.md"))
    assert first.returncode == 0, first.stdout + first.stderr
    second = harness("nightly", "--devices", "local", "--matrix", str(matrix), "--db", db_url,
                     "--report", str(tmp_path / "n2.md"), env={"HARNESS_TEST_SLOWDOWN": "fp32=4"})
    assert second.returncode == 1, second.stdout + second.stderr
    report = (tmp_path / "n2.md").read_text()
    assert "dense fp32 torch L=64" in report and "dense bf16" not in report.split("## Improvements")[0]
    # Judged beyond the spread between the three worker processes each night measured the case in.
    assert "beyond the spread between worker processes" in report.split("## Improvements")[0], report
