"""Faults on the local device: a worker killed mid-case, a hung case, Ctrl-C and --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from helpers import HARNESS, REPO, harness, stored_count, wait_for, write_matrix
from results.exchange import export_rows
from results.store import Store

# Each case measures for about a second, long enough to be interrupted in the middle.
SLOW_MEASURE = "measure: {warmup_s: 0.05, min_time_s: 1.2, min_samples: 3, max_time_s: 10, timeout_s: 60}"
FOUR_CASES = "matrix:\n  precision: [fp32, bf16]\n  seq_len: [32, 64]\n"


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(HARNESS + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie not yet reaped
        return ""


def _workers_of(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if "harness.worker" in _cmdline(p)]


def test_worker_killed_mid_case_fails_that_case_and_the_sweep_goes_on(home, db_url):
    matrix = write_matrix(home / "m.yaml", "matrix:\n  seq_len: [32, 48, 64]\n", SLOW_MEASURE)
    proc = _start(["run", "--devices", "local", "--matrix", str(matrix), "--db", db_url])
    wait_for(lambda: stored_count(db_url) >= 1)
    time.sleep(0.4)  # the second case is measuring now
    workers = _workers_of(proc.pid)
    assert len(workers) == 1
    workers[0].send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    rows = sorted(export_rows(Store(db_url)), key=lambda r: r["seq_len"])
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "signal 9 (SIGKILL)" in rows[1]["error"]
    assert rows[1]["latency_ms_p50"] is None  # nothing made up for the killed case


def test_a_case_past_its_timeout_is_cut_off_and_recorded(home, db_url):
    # slowdown multiplies the work a million-fold: seconds per call on any CPU, far past a 2 s timeout.
    matrix = write_matrix(home / "m.yaml", "matrix:\n  seq_len: [32]\ninclude:\n  - {seq_len: 64, slowdown: 1000000}\n",
                          "measure: {warmup_s: 0.05, min_time_s: 0.1, min_samples: 3, max_time_s: 2, timeout_s: 2}")
    t0 = time.monotonic()
    proc = harness("run", "--devices", "local", "--matrix", str(matrix), "--db", db_url)
    assert proc.returncode == 1
    assert time.monotonic() - t0 < 60
    rows = {r["seq_len"]: r for r in export_rows(Store(db_url))}
    assert rows[32]["status"] == "ok"
    assert rows[64]["status"] == "timeout" and "timeout_s = 2" in rows[64]["error"]


def test_ctrl_c_keeps_stored_results_and_resume_stores_every_case_exactly_once(home, db_url):
    matrix = write_matrix(home / "m.yaml", FOUR_CASES, SLOW_MEASURE)
    proc = _start(["run", "--devices", "local", "--matrix", str(matrix), "--db", db_url])
    wait_for(lambda: stored_count(db_url) >= 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in out
    store = Store(db_url)
    run = store.list_runs()[0]
    assert run["status"] == "interrupted"
    before = sum(run["counts"].values())
    assert 2 <= before < 4
    # No agent or worker left behind.
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and
                run["run_id"] in " ".join(p.info["cmdline"])]
    resumed = harness("run", "--resume", run["run_id"], "--db", db_url)
    assert resumed.returncode == 0, resumed.stderr
    rows = export_rows(store, [run["run_id"]])
    assert len(rows) == 4 and len({r["case_hash"] for r in rows}) == 4
    assert all(r["status"] == "ok" for r in rows)
    assert store.list_runs()[0]["status"] == "complete"


def test_a_further_worker_process_killed_leaves_the_case_its_other_samples_and_a_note(home, db_url):
    # measure.processes 2: every case is measured in one pass by a first worker, then in a second pass by a
    # fresh one. The second pass's worker is killed as soon as it shows up (while it starts or measures); the
    # case it was on keeps its first-pass samples and says what happened, and the rest of the pass gets
    # another fresh worker.
    matrix = write_matrix(home / "m.yaml", "matrix:\n  seq_len: [32, 48, 64]\n",
                          SLOW_MEASURE.replace("timeout_s: 60}", "timeout_s: 60, processes: 2}"))
    proc = _start(["run", "--devices", "local", "--matrix", str(matrix), "--db", db_url])
    agents: list[psutil.Process] = []
    wait_for(lambda: bool(agents.extend(p for p in psutil.Process(proc.pid).children(recursive=True)
                                        if "harness.agent" in _cmdline(p)) or agents))
    cmdline = agents[0].cmdline()
    journal = Path(cmdline[cmdline.index("--journal") + 1])

    def first_pass_done() -> bool:
        lines = journal.read_text().splitlines() if journal.exists() else []
        return sum('"type": "partial"' in line and '"pass": 1,' in line for line in lines) == 3

    wait_for(first_pass_done)
    first = {w.pid for w in _workers_of(proc.pid)}  # the first pass's worker, until the agent closes it
    second: list[psutil.Process] = []
    wait_for(lambda: bool(second.extend(w for w in _workers_of(proc.pid) if w.pid not in first) or second),
             poll=0.01)
    second[0].send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = sorted(export_rows(Store(db_url)), key=lambda r: r["seq_len"])
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    sizes = [[p["n"] for p in r["details"]["processes"]] for r in rows]
    assert sorted(len(s) for s in sizes) == [1, 2, 2], sizes
    assert all(sum(s) == r["n_samples"] == len(r["samples_ms"]) for s, r in zip(sizes, rows))
    [hit] = [r for r in rows if len(r["details"]["processes"]) == 1]
    said = " ".join(hit["details"]["notes"])
    assert "process 2 of 2: failed: " in said and "signal 9 (SIGKILL)" in said, said
    # Each pass ran in its own process: one pid for the first pass on every row, the killed one on none.
    assert len({r["details"]["processes"][0]["worker_pid"] for r in rows}) == 1
    assert all(second[0].pid not in [p["worker_pid"] for p in r["details"]["processes"]] for r in rows)
