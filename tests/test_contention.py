"""Contention: the pure core on planted counters, the device lease on real files and processes, and real
sweeps with and without two CPU burners running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices.contention import CLK_TCK, CpuCounters, CpuSnapshot, contention
from harness import lease
from harness.agent import precheck
from helpers import harness, write_matrix
from results.exchange import export_rows
from results.store import Store


def snap(at: float, idle: dict[int, float], self_cpu: float, steal: dict[int, float] | None = None,
         psi: int | None = None) -> CpuSnapshot:
    steal = steal or {}
    return CpuSnapshot(at=at, cpus={c: CpuCounters(idle_s=v, steal_s=steal.get(c, 0.0)) for c, v in idle.items()},
                       self_cpu_s=self_cpu, runnable=3, load1=1.5, psi_some_us=psi)


def test_cpu_other_is_busy_time_of_the_workers_cpus_minus_its_own_over_their_capacity():
    # 2 CPUs, 1 s: 0.5 s idle in all, so 1.5 CPU-seconds busy; the worker used 1.0 of them.
    c = contention(snap(10.0, {0: 100.0, 1: 200.0}, 5.0, psi=0), snap(11.0, {0: 100.25, 1: 200.25}, 6.0, psi=400_000))
    assert c.cpu_other == pytest.approx(0.25)
    assert c.self_cpu == pytest.approx(1.0)
    assert c.resolution == pytest.approx(2.0 / CLK_TCK)
    assert c.cpu_pressure == pytest.approx(0.4)
    assert c.contended(0.10) is True and c.contended(0.30) is False


def test_only_the_cpus_the_worker_may_use_count():
    before = snap(0.0, {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}, 0.0)
    after = snap(2.0, {0: 0.0, 1: 2.0, 2: 2.0, 3: 2.0}, 2.0)  # CPU 0 busy with the worker alone
    assert contention(before, after, cpus=[0]).cpu_other == pytest.approx(0.0)
    assert contention(before, after).cpu_other == pytest.approx(0.0)  # the others idle: nobody else


def test_steal_counts_as_other_use_and_is_reported_on_its_own():
    before = snap(0.0, {0: 0.0}, 0.0, steal={0: 0.0})
    after = snap(1.0, {0: 0.0}, 0.7, steal={0: 0.3})
    c = contention(before, after)
    assert c.steal == pytest.approx(0.3) and c.cpu_other == pytest.approx(0.3)


def test_a_short_window_is_not_called_contended_for_rounding_alone():
    # 50 ms window: one tick of rounding per CPU is 20% of it; 15% measured is within that.
    before = snap(0.0, {0: 0.0, 1: 0.0}, 0.0)
    after = snap(0.05, {0: 0.0, 1: 0.035}, 0.05)
    c = contention(before, after)
    assert c.cpu_other == pytest.approx(0.15)
    assert c.contended(0.10) is False


def test_without_counters_contention_is_absent_never_zero():
    c = contention(None, snap(1.0, {0: 0.0}, 0.0))
    assert c.cpu_other is None and c.contended(0.1) is None


def test_a_real_snapshot_reads_this_machines_counters():
    a = CpuSnapshot.take()
    assert a is not None and a.cpus and a.self_cpu_s >= 0
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < 0.3:  # this process busy for 0.3 s: its own time, not "other"
        pass
    used = time.process_time() - cpu0
    b = CpuSnapshot.take()
    c = contention(a, b)
    assert c.cpu_other is not None and 0.0 <= c.cpu_other <= 1.0
    assert c.self_cpu == pytest.approx(used / (b.at - a.at), rel=0.05)
    # What this process used is not counted as other: the two together fit in the CPUs.
    assert c.cpu_other + c.self_cpu / len(c.cpus) <= 1.0 + c.resolution


# -- the lease -----------------------------------------------------------------------------------------
HOLD = """
import sys, time
from harness.lease import DeviceLease, Holder
lease = DeviceLease(sys.argv[1])
lease.acquire(Holder(run_id="run-a", device="pi", pid=__import__("os").getpid(), since=time.time(),
                     host="h"), wait_timeout_s=None)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold(workdir: Path, seconds: float) -> subprocess.Popen[str]:
    # `-c` code with "harness.agent" in argv, so the holder counts as an agent for is_agent().
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir), str(seconds), "harness.agent"],
                            stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_taker_waits_names_the_holder_and_gets_the_lease_when_the_holder_dies(tmp_path):
    holder = _hold(tmp_path, 60)
    try:
        seen = []
        taker = lease.DeviceLease(tmp_path)
        with pytest.raises(lease.LeaseTimeout) as caught:
            taker.acquire(lease.Holder("run-b", "pi", os.getpid(), time.time(), "h"), wait_timeout_s=0.6,
                          on_wait=lambda h, s: seen.append(h))
        assert caught.value.holder is not None and caught.value.holder.run_id == "run-a"
        assert seen and seen[0].run_id == "run-a"
        assert lease.current_holder(tmp_path).pid == holder.pid
        holder.kill()  # SIGKILL: no clean-up; the kernel drops the lock with the process
        holder.wait()
        waited = taker.acquire(lease.Holder("run-b", "pi", os.getpid(), time.time(), "h"), wait_timeout_s=5)
        assert waited < 5
        info = json.loads((tmp_path / lease.LEASE_INFO).read_text())
        assert info["run_id"] == "run-b"
    finally:
        holder.kill()


def test_a_dead_holders_record_is_not_a_holder(tmp_path):
    (tmp_path / lease.LEASE_INFO).write_text(json.dumps({"run_id": "old", "device": "pi", "pid": 2 ** 22 + 17,
                                                         "since": 1.0, "host": "h"}))
    assert lease.read_holder(tmp_path).run_id == "old"
    assert lease.current_holder(tmp_path) is None
    assert lease.status(tmp_path)["holder"] is None


def test_lease_main_takes_names_that_look_like_options_as_data(tmp_path):
    out = subprocess.run([sys.executable, "-", str(tmp_path), "status", "--help", "-rf"],
                         input=Path(lease.__file__).read_text(), capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"holder": None, "host": os.uname().nodename, "agents": []}


# -- threads that fit the device --------------------------------------------------------------------------
CAPS = {"modules": {"torch": True, "onnxruntime": True}}


def test_threads_beyond_the_devices_cpus_is_a_skip_with_the_reason():
    cpus = len(os.sched_getaffinity(0))
    reason = precheck({"backend": "torch", "threads": cpus + 1}, CAPS, None, {})
    assert reason and f"more than the {cpus} CPU(s)" in reason and "allow_oversubscribe" in reason
    assert precheck({"backend": "torch", "threads": cpus}, CAPS, None, {}) is None
    assert precheck({"backend": "torch", "threads": cpus + 1}, CAPS, None, {"allow_oversubscribe": True}) is None


# -- real sweeps with burners -------------------------------------------------------------------------------
BURNER = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass\n"
# threads: 1, so the worker, two burners and the machine's two CPUs give the burners about 2/3 of them.
CONTENTION_SWEEP = ("matrix:\n  precision: [fp32, bf16]\n  seq_len: [64, 128]\ndefaults: {threads: 1}\n")
CONTENTION_MEASURE = "measure: {warmup_s: 0.1, min_time_s: 0.5, min_samples: 5, max_time_s: 10, timeout_s: 60}"


def _other_cpu_share(seconds: float = 1.0) -> float:
    """What the rest of the machine uses now (this test process sleeps meanwhile)."""
    from devices.contention import sample_other

    return sample_other(seconds).cpu_other or 0.0


@pytest.mark.slow
def test_two_cpu_burners_make_every_case_contended(home, db_url):
    matrix = write_matrix(home / "m.yaml", CONTENTION_SWEEP, CONTENTION_MEASURE)
    burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(2)]
    try:
        time.sleep(0.5)
        proc = harness("run", "--devices", "local", "--matrix", str(matrix), "--db", db_url)
    finally:
        for b in burners:
            b.kill()
    assert proc.returncode == 0, proc.stderr
    rows = export_rows(Store(db_url))
    assert len(rows) == 4
    figures = [r["cpu_other"] for r in rows]
    print("cpu_other with two burners:", figures)
    assert all(r["contended"] is True for r in rows), figures
    # Two burners and a one-thread worker on two CPUs: the scheduler usually leaves the worker a CPU of its own
    # and the burners share the other, so others use half the capacity: at least 0.5 within the reading's
    # resolution (two clock ticks per CPU over the window).
    assert all(r["cpu_other"] >= 0.5 - r["details"]["contention"]["resolution"] for r in rows), figures
    assert "measured while other processes used the CPUs" in " ".join(proc.stderr.split())
    detail = rows[0]["details"]["contention"]
    assert detail["window_s"] > 0 and detail["runnable"] and detail["load1"]


@pytest.mark.slow
def test_on_a_quiet_machine_no_case_is_contended(home, db_url):
    busy = _other_cpu_share()
    if busy > 0.05:
        pytest.skip(f"the machine is not quiet: other processes use {busy:.0%} of its CPUs right now")
    matrix = write_matrix(home / "m.yaml", CONTENTION_SWEEP, CONTENTION_MEASURE)
    proc = harness("run", "--devices", "local", "--matrix", str(matrix), "--db", db_url)
    assert proc.returncode == 0, proc.stderr
    rows = export_rows(Store(db_url))
    figures = [r["cpu_other"] for r in rows]
    print("cpu_other on a quiet machine:", figures)
    assert all(r["contended"] is False for r in rows), figures


@pytest.mark.slow
def test_retry_measures_a_contended_case_again_and_keeps_the_first_attempt(home, db_url):
    matrix = write_matrix(home / "m.yaml", "matrix:\n  seq_len: [64]\ndefaults: {threads: 1}\n",
                          CONTENTION_MEASURE.replace("}", ", on_contention: retry}"))
    burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(2)]
    try:
        time.sleep(0.5)
        proc = harness("run", "--devices", "local", "--matrix", str(matrix), "--db", db_url)
    finally:
        for b in burners:
            b.kill()
    assert proc.returncode == 0, proc.stderr
    [row] = export_rows(Store(db_url))
    first = row["details"]["contention_retry"]
    assert first["cpu_other"] >= 0.5 and first["samples_ms"]
    assert row["contended"] is True  # still contended the second time: flagged, not hidden


@pytest.mark.slow
def test_wait_holds_each_case_until_the_device_is_quiet_or_the_wait_runs_out(home, db_url):
    matrix = write_matrix(home / "m.yaml", "matrix:\n  seq_len: [64]\ndefaults: {threads: 1}\n",
                          CONTENTION_MEASURE.replace("}", ", on_contention: wait, contention_wait_s: 3}"))
    burner = subprocess.Popen([sys.executable, "-c", BURNER])
    try:
        time.sleep(0.3)
        proc = harness("run", "--devices", "local", "--matrix", str(matrix), "--db", db_url)
    finally:
        burner.kill()
    assert proc.returncode == 0, proc.stderr
    [row] = export_rows(Store(db_url))
    waited = row["details"]["contention_wait"]
    assert waited["quiet"] is False and waited["waited_s"] >= 3 and waited["cpu_other"] > 0.1


# -- regress keeps contended nights out -------------------------------------------------------------------
def _import(rows: list[dict], db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.write_text(json.dumps(rows))
    harness("results", "import", str(path), "--db", db_url, check=True)


def test_a_contended_newest_night_is_not_called_a_regression(home, db_url, tmp_path):
    from test_regress_cli import _history_rows

    rows = _history_rows(12, 11, 0.30)
    rows[-1].update(cpu_other=0.62, contended=True)
    _import(rows, db_url, tmp_path)
    proc = harness("regress", "--format", "json", "--db", db_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == []


def test_nights_measured_under_contention_are_no_level_of_the_history(home, db_url, tmp_path):
    from test_regress_cli import _history_rows

    rows = _history_rows(20, 99, 0.0)
    for night in range(8, 13):  # five slow nights in a row: enough to form a segment of their own
        rows[night]["samples_ms"] = [v * 1.5 for v in rows[night]["samples_ms"]]
        rows[night]["latency_ms_p50"] *= 1.5
    flagged = [dict(r, cpu_other=0.7, contended=True) if 8 <= i < 13 else r for i, r in enumerate(rows)]
    _import(flagged, db_url, tmp_path)
    assert json.loads(harness("regress", "--history", "--format", "json", "--db", db_url).stdout) == []
    other_db = f"sqlite:///{tmp_path / 'unflagged.db'}"
    _import(rows, other_db, tmp_path)
    assert len(json.loads(harness("regress", "--history", "--format", "json", "--db", other_db).stdout)) == 2
