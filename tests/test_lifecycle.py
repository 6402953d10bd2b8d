"""Every way a run ends is recorded, and one run measures on a device at a time: real controller processes
on the local device (SIGTERM, SIGHUP, `timeout`, SIGKILL), two controllers at once, a database that fills
up mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import HARNESS, REPO, harness, stored_count, wait_for, write_matrix
from results.exchange import export_rows
from results.store import Store

pytestmark = pytest.mark.slow

# Each case measures for about a second, long enough to be stopped in the middle.
SLOW_MEASURE = "measure: {warmup_s: 0.05, min_time_s: 1.0, min_samples: 3, max_time_s: 10, timeout_s: 60}"
FOUR_CASES = "matrix:\n  precision: [fp32, bf16]\n  seq_len: [32, 64]\n"
SIX_CASES = "matrix:\n  precision: [fp32, bf16]\n  seq_len: [32, 48, 64]\n"
TEN_CASES = "matrix:\n  precision: [fp32, bf16]\n  seq_len: [32, 40, 48, 56, 64]\n"
QUICK_MEASURE = "measure: {warmup_s: 0.05, min_time_s: 0.3, min_samples: 3, max_time_s: 10, timeout_s: 60}"


def _start(args: list[str], **env: str) -> subprocess.Popen[str]:
    full = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.Popen(HARNESS + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)




def harness_processes(home: Path) -> list[tuple[int, str]]:
    """Agents and workers started by this test: processes of `python -m harness.agent|worker` whose
    environment has this test's HOME (other tests and sessions on the machine have other ones)."""
    marker = f"HOME={home}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            if b"harness.agent" not in cmdline and b"harness.worker" not in cmdline:
                continue
            with open(f"/proc/{entry}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if marker not in fh.read().split(b"\0"):
                    continue
        except OSError:
            continue
        found.append((int(entry), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def _gone(home: Path, timeout: float = 10.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = harness_processes(home)
        if not left:
            return []
        time.sleep(0.1)
    return harness_processes(home)


@pytest.mark.parametrize("sig, code, processes", [(signal.SIGTERM, 143, 1), (signal.SIGHUP, 129, 1),
                                                   (signal.SIGTERM, 143, 2)])
def test_a_stop_signal_mid_sweep_interrupts_the_run_stops_the_agent_and_resume_stores_each_case_once(
        home, db_url, sig, code, processes):
    # processes 2: each case measured in two worker processes; neither may outlive the stop.
    matrix = write_matrix(home / "m.yaml", FOUR_CASES,
                          SLOW_MEASURE.replace("timeout_s: 60}", f"timeout_s: 60, processes: {processes}}}"))
    proc = _start(["run", "--devices", "local", "--matrix", str(matrix), "--db", db_url])
    wait_for(lambda: stored_count(db_url) >= 1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"{signal.Signals(sig).name} received" in err
    store = Store(db_url)
    run = store.list_runs()[0]
    assert run["status"] == "interrupted" and run["error"] == f"stopped by {signal.Signals(sig).name}"
    # The resume hint is printed once, and works as printed.
    hint = [line for line in out.splitlines() if line.startswith("resume with: ")]
    assert len(hint) == 1 and f"--db {db_url}" in hint[0]
    assert _gone(home) == []  # no agent or worker measuring on, re-parented to PID 1
    stored_before = sum(run["counts"].values())
    assert 1 <= stored_before < 4
    resumed = harness(*hint[0].removeprefix("resume with: harness ").split())
    assert resumed.returncode == 0, resumed.stderr
    rows = export_rows(store, [run["run_id"]])
    assert len(rows) == 4 and len({r["case_hash"] for r in rows}) == 4
    assert all(r["status"] == "ok" for r in rows)
    assert store.list_runs()[0]["status"] == "complete"
    if processes > 1:
        assert all(len(r["details"]["processes"]) == processes for r in rows)
        # The stop came in the second pass (a result is stored only when a case's last pass is done): every
        # first pass came from the journal of the stopped agent's first worker, none was measured again.
        assert len({r["details"]["processes"][0]["worker_pid"] for r in rows}) == 1, rows


def test_timeout_the_command_ends_the_run_interrupted(home, db_url):
    matrix = write_matrix(home / "m.yaml", SIX_CASES, SLOW_MEASURE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(["timeout", "6"] + HARNESS + ["run", "--devices", "local", "--matrix", str(matrix),
                                                       "--db", db_url], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 124  # timeout's own code: the command ended on its SIGTERM
    assert "Traceback" not in proc.stderr
    run = Store(db_url).list_runs()[0]
    assert run["status"] == "interrupted" and "SIGTERM" in run["error"]
    assert _gone(home) == []


def test_a_killed_controller_leaves_an_abandoned_run_that_resume_refuses_until_its_agent_is_stopped(home, db_url):
    matrix = write_matrix(home / "m.yaml", TEN_CASES, SLOW_MEASURE)
    proc = _start(["run", "--devices", "local", "--matrix", str(matrix), "--db", db_url])
    wait_for(lambda: stored_count(db_url) >= 1)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(timeout=30)  # not communicate(): the orphan still holds the stderr pipe it inherited
    agents = [pid for pid, cmd in harness_processes(home) if "harness.agent" in cmd]
    assert agents, "the orphaned agent measures on (into its journal) until it is stopped"
    store = Store(db_url)
    run = store.list_runs()[0]
    assert run["status"] == "abandoned"  # running in the database, its controller gone
    listed = harness("results", "list", "--db", db_url)
    assert "abandoned" in listed.stdout
    refused = harness("run", "--resume", run["run_id"], "--db", db_url)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "still has agents running" in refused.stderr and f"agent pid {agents[0]}" in refused.stderr
    assert "--stop-stale" in refused.stderr
    resumed = harness("run", "--resume", run["run_id"], "--stop-stale", "--db", db_url)
    assert resumed.returncode == 0, resumed.stderr
    rows = export_rows(store, [run["run_id"]])
    assert len(rows) == 10 and len({r["case_hash"] for r in rows}) == 10
    assert all(r["status"] == "ok" for r in rows)
    assert _gone(home) == []


def test_resume_goes_ahead_once_the_orphaned_agent_has_finished_and_nothing_measures_twice(home, db_url):
    matrix = write_matrix(home / "m.yaml", FOUR_CASES, QUICK_MEASURE)
    proc = _start(["run", "--devices", "local", "--matrix", str(matrix), "--db", db_url])
    wait_for(lambda: stored_count(db_url) >= 1)
    proc.kill()
    proc.wait(timeout=30)
    assert _gone(home, timeout=120) == []  # the orphan measured the rest into its journal, then ended
    run_id = Store(db_url).list_runs()[0]["run_id"]
    resumed = harness("run", "--resume", run_id, "--db", db_url)
    assert resumed.returncode == 0, resumed.stderr
    rows = export_rows(Store(db_url), [run_id])
    assert len(rows) == 4 and len({r["case_hash"] for r in rows}) == 4
    # What the orphan measured came from its journal, not from a second measurement: one result per case.
    journaled = [json.loads(line) for path in (home / ".cache" / "attn-harness" / "journal").glob("*.jsonl")
                 for line in path.read_text().splitlines() if line.strip()]
    results = [r["case_hash"] for r in journaled if r.get("type") == "result" and r.get("run_id") == run_id]
    assert sorted(results) == sorted(r["case_hash"] for r in rows)


def _windows(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((r["measured_at"], r["measured_until"], r["run_id"]) for r in rows)


def test_two_runs_on_one_device_take_turns_and_their_windows_never_overlap(home, db_url):
    matrix = write_matrix(home / "m.yaml", SIX_CASES, QUICK_MEASURE)
    first = _start(["run", "--devices", "local", "--matrix", str(matrix), "--db", db_url, "--tag", "a"])
    second = _start(["run", "--devices", "local", "--matrix", str(matrix), "--db", db_url, "--tag", "b"])
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    waited = " ".join((err1 + err2).split())
    assert "waiting for local (held by run" in waited  # the one that came second said so
    rows = export_rows(Store(db_url))
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    spans = _windows(rows)
    for (start_a, end_a, run_a), (start_b, end_b, run_b) in zip(spans, spans[1:]):
        if run_a != run_b:
            assert end_a <= start_b, f"run {run_a} measured until {end_a}, run {run_b} from {start_b}"


def test_a_device_busy_past_the_wait_timeout_ends_busy_and_the_run_can_be_resumed(home, db_url):
    matrix = write_matrix(home / "m.yaml", TEN_CASES, SLOW_MEASURE)
    holder = _start(["run", "--devices", "local", "--matrix", str(matrix), "--db", db_url])
    wait_for(lambda: stored_count(db_url) >= 1)
    listed = " ".join(harness("devices", "list").stdout.split())
    holder_run = Store(db_url).list_runs()[0]["run_id"]
    assert f"run {holder_run} since" in listed  # who holds it
    quick = write_matrix(home / "q.yaml", "matrix:\n  seq_len: [16]\n", QUICK_MEASURE)
    busy = harness("run", "--devices", "local", "--matrix", str(quick), "--db", db_url, "--wait-timeout", "1")
    assert busy.returncode == 1, busy.stderr
    said = " ".join(busy.stdout.split())  # rich wraps long lines
    assert "device local: busy" in said and "past --wait-timeout" in said, busy.stdout
    holder.communicate(timeout=300)
    assert holder.returncode == 0
    busy_run = [r for r in Store(db_url).list_runs() if r["matrix"] == "q"][0]
    assert busy_run["status"] == "partial" and busy_run["counts"] == {}
    resumed = harness("run", "--resume", busy_run["run_id"], "--db", db_url)
    assert resumed.returncode == 0, resumed.stderr
    assert "free" in harness("devices", "list").stdout


def test_a_database_that_fills_up_mid_run_fails_the_run_with_the_reason(home, tmp_path):
    """SQLite's own SQLITE_FULL, as on a full disk: the database is capped a few pages past its size."""
    from sqlalchemy import event

    from devices.inventory import load_inventory
    from harness.controller import RunFailed, run_sweep
    from workloads.matrix import parse_matrix

    url = f"sqlite:///{tmp_path / 'full.db'}"
    store = Store(url)
    # 300 samples a case at least (2.4 KB of raw samples each): the capped pages run out within a few cases,
    # however fast or loaded the machine is.
    sweep = parse_matrix("name: full\nmatrix:\n  seq_len: [16, 32, 48, 64, 80, 96, 112, 128]\n"
                         "measure: {warmup_s: 0.02, min_time_s: 0.05, min_samples: 300, max_time_s: 30, "
                         "timeout_s: 60, min_sample_s: 0.0005}\n", "<test>")
    with store.Session() as s:
        pages = s.connection().exec_driver_sql("PRAGMA page_count").scalar()
    store.engine.dispose()

    @event.listens_for(store.engine, "connect")
    def cap(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count={pages + 4}")

    with pytest.raises(RunFailed) as caught:
        run_sweep(load_inventory(), store, devices=["local"], sweep=sweep)
    message = str(caught.value)
    assert "database or disk is full" in message and "harness run --resume" in message
    assert caught.value.exit_code == 1
    run = Store(url).list_runs()[0]
    assert run["status"] == "failed" and "database or disk is full" in run["error"]
    assert sum(run["counts"].values()) < 8
    assert _gone(home) == []
