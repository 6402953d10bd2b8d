"""The progress display hears of a case when it starts, not when it ends (over a local pipe and over SSH),
and the resume hint printed after Ctrl-C works when pasted, with the database and inventory it was given."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from devices.inventory import load_inventory
from harness.controller import run_sweep
from helpers import HARNESS, REPO, write_matrix
from results.exchange import export_rows
from results.store import Store
from sshd import Env, ssh_env, ssh_lab  # noqa: F401 (fixtures)

# Each case is timed for at least 0.8 s: long enough that "heard of it while it ran" cannot be luck.
SLOW = "measure: {warmup_s: 0.05, min_time_s: 0.8, min_samples: 3, max_time_s: 10, timeout_s: 60}"
CASES = "defaults: {heads: 2, head_dim: 16, threads: 1}\nmatrix:\n  seq_len: [32, 48, 64]\n"


def _arrivals(inv: Any, device: str, matrix: Path, db: str) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """When (wall clock) each case's `start` event reached the controller, and each case's result record."""
    started: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}

    def events(dev: str, kind: str, payload: Any) -> None:
        if kind == "start" and payload.get("case_hash"):
            started.setdefault(payload["case_hash"], time.time())
        elif kind == "result":
            results[payload["case_hash"]] = dict(payload)

    outcome = run_sweep(inv, Store(db), devices=[device], matrix_path=str(matrix), events=events)
    assert outcome.status == "complete", outcome
    return started, results


def _assert_heard_while_running(started: dict[str, float], results: dict[str, dict[str, Any]]) -> None:
    assert set(started) == set(results) and len(results) == 3
    for h, record in results.items():
        assert record["status"] == "ok", record
        # the case was still being measured for a good while after its start line arrived
        assert started[h] < record["finished_at"] - 0.5, (h, started[h], record["started_at"], record["finished_at"])


def test_the_start_of_a_local_case_arrives_while_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HARNESS_INVENTORY", raising=False)
    matrix = write_matrix(tmp_path / "m.yaml", CASES, SLOW)
    _assert_heard_while_running(*_arrivals(load_inventory(None), "local", matrix, f"sqlite:///{tmp_path / 'r.db'}"))


@pytest.mark.slow
def test_the_start_of_a_case_on_an_ssh_device_arrives_while_it_runs(ssh_env: Env) -> None:
    inv = ssh_env.inventory({"pi": ssh_env.device("pi")}, trusted=("pi",))
    matrix = write_matrix(ssh_env.tmp / "m.yaml", CASES, SLOW)
    _assert_heard_while_running(*_arrivals(inv, "pi", matrix, ssh_env.db_url))


def test_the_resume_hint_after_ctrl_c_works_when_pasted(tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    db = f"sqlite:///{tmp_path / 'team.db'}"  # not the default ./harness.db
    inventory = tmp_path / "lab inventory.yaml"  # a space: the hint must quote it
    inventory.write_text("devices:\n  local: {}\n")
    matrix = write_matrix(tmp_path / "m.yaml", CASES.replace("[32, 48, 64]", "[32, 40, 48, 56, 64]"), SLOW)
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path))
    env.pop("HARNESS_DB", None)
    env.pop("HARNESS_INVENTORY", None)
    proc = subprocess.Popen(HARNESS + ["run", "--devices", "local", "--matrix", str(matrix), "--db", db,
                                       "--inventory", str(inventory)], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (tmp_path / "team.db").exists() and sum(sum(r["counts"].values()) for r in Store(db).list_runs()) >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    hints = [line for line in (out + err).splitlines() if line.startswith("resume with: ")]
    assert len(hints) == 1, out + err  # printed once
    command = hints[0].removeprefix("resume with: ")
    args = shlex.split(command)
    assert args[:3] == ["harness", "run", "--resume"] and "--db" in args and "--inventory" in args
    assert args[args.index("--db") + 1] == db and args[args.index("--inventory") + 1] == str(inventory)
    assert not (work / "harness.db").exists()
    pasted = subprocess.run(HARNESS + args[1:], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    rows = export_rows(Store(db), [args[3]])
    assert len(rows) == 5 and len({r["case_hash"] for r in rows}) == 5 and all(r["status"] == "ok" for r in rows)
    assert not (work / "harness.db").exists()  # the pasted command used the database it named


def test_the_nightly_report_lists_timed_out_and_skipped_cases_and_json_says_so(tmp_path: Path) -> None:
    """Every case without a result is in the report (and in --format json), not only on stdout."""
    matrix = write_matrix(tmp_path / "n.yaml", "defaults: {heads: 2, head_dim: 16, threads: 1}\nmatrix:\n"
                                               "  seq_len: [32]\ninclude:\n  - {seq_len: 64, slowdown: 1000000}\n"
                                               "  - {seq_len: 32, precision: int4, group_size: 6}\n",
                          "measure: {warmup_s: 0.05, min_time_s: 0.1, min_samples: 3, max_time_s: 2, timeout_s: 2}")
    report = tmp_path / "night.md"
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path))
    proc = subprocess.run(HARNESS + ["nightly", "--devices", "local", "--matrix", str(matrix), "--report", str(report),
                                     "--db", f"sqlite:///{tmp_path / 'n.db'}", "--format", "json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    import json

    summary = json.loads(proc.stdout)
    assert summary["exit_code"] == 1 and summary["report"] == str(report)
    assert sorted(p["status"] for p in summary["problems"]) == ["skipped", "timeout"]
    text = report.read_text()
    section = text.split("## Cases without a result")[1]
    assert "| timeout |" in section and "timeout_s = 2" in section
    assert "| skipped |" in section and "group_size 6" in section
    assert "Exit code 1" in text
