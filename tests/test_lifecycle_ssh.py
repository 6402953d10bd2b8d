"""Run lifecycle over real OpenSSH devices: a SIGTERMed controller stops its agents on every device, and two
controllers sharing one board take turns through the lease on the board."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


import pytest

from helpers import HARNESS, REPO, stored_count, wait_for, write_matrix
from results.exchange import export_rows
from results.store import Store
from sshd import Env, ssh_env, ssh_lab  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

SLOW_MEASURE = "measure: {warmup_s: 0.05, min_time_s: 1.0, min_samples: 3, max_time_s: 10, timeout_s: 60}"
QUICK_MEASURE = "measure: {warmup_s: 0.05, min_time_s: 0.3, min_samples: 3, max_time_s: 10, timeout_s: 60}"
SIX_CASES = "defaults: {heads: 2, head_dim: 16}\nmatrix:\n  precision: [fp32, bf16]\n  seq_len: [32, 48, 64]\n"


def _start(env: Env, *args: str) -> subprocess.Popen[str]:
    full = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(HARNESS + list(args) + ["--db", env.db_url, "--inventory", str(env.tmp / "inventory.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)


def _run(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(HARNESS + list(args) + ["--db", env.db_url, "--inventory", str(env.tmp / "inventory.yaml")],
                          capture_output=True, text=True, env=full, timeout=600)




def agents_in(workdir: Path) -> list[int]:
    """Live agent or worker processes of a device whose workdir is `workdir` (its journal paths hold it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if b"harness.agent" in cmdline and str(workdir).encode() in cmdline:
            found.append(int(entry))
    return found


def test_sigterm_stops_the_agents_on_every_ssh_device_and_resume_stores_each_case_once(ssh_env: Env):
    ssh_env.inventory()
    matrix = write_matrix(ssh_env.tmp / "m.yaml", SIX_CASES, SLOW_MEASURE)
    proc = _start(ssh_env, "run", "--devices", "pi,jetson", "--matrix", str(matrix))
    wait_for(lambda: stored_count(ssh_env.db_url) >= 2, timeout=180)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    store = Store(ssh_env.db_url)
    run = store.list_runs()[0]
    assert run["status"] == "interrupted" and "SIGTERM" in run["error"]
    assert sum(run["counts"].values()) < 12
    for server in ("pi", "jetson"):
        deadline = time.monotonic() + 15
        while agents_in(ssh_env.tmp / f"work-{server}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert agents_in(ssh_env.tmp / f"work-{server}") == [], f"an agent measures on on {server}"
    resumed = _run(ssh_env, "run", "--resume", run["run_id"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = export_rows(store, [run["run_id"]])
    assert len(rows) == 12
    assert len({(r["device"], r["case_hash"]) for r in rows}) == 12
    assert all(r["status"] == "ok" for r in rows)


def test_two_controllers_on_one_ssh_device_take_turns_and_their_windows_never_overlap(ssh_env: Env):
    ssh_env.inventory({"pi": ssh_env.device("pi")}, trusted=("pi",))
    matrix = write_matrix(ssh_env.tmp / "m.yaml", SIX_CASES, QUICK_MEASURE)
    first = _start(ssh_env, "run", "--devices", "pi", "--matrix", str(matrix), "--tag", "a")
    second = _start(ssh_env, "run", "--devices", "pi", "--matrix", str(matrix), "--tag", "b")
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0, out1 + err1
    assert second.returncode == 0, out2 + err2
    assert "waiting for pi (held by run" in " ".join((err1 + err2).split())
    rows = export_rows(Store(ssh_env.db_url))
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    spans = sorted((r["measured_at"], r["measured_until"], r["run_id"]) for r in rows)
    for (start_a, end_a, run_a), (start_b, end_b, run_b) in zip(spans, spans[1:]):
        if run_a != run_b:
            assert end_a <= start_b, f"run {run_a} measured until {end_a}, run {run_b} from {start_b}"
    full = dict(os.environ, PYTHONPATH=str(REPO))
    listed = subprocess.run(HARNESS + ["devices", "list", "--inventory", str(ssh_env.tmp / "inventory.yaml")],
                            capture_output=True, text=True, env=full, timeout=120)
    assert listed.returncode == 0 and "free" in listed.stdout, listed.stdout + listed.stderr
