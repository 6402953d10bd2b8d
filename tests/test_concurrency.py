"""Several writers on one results database at once, SQLite and PostgreSQL: two `harness run` processes,
a crowd of store writers racing on the same devices, cases and measurements, concurrent imports of one
file; nothing lost, nothing stored twice, no lock error. And `--resume` of a run another live controller
is still running is refused (same host: its process; any host: its heartbeat)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select, text, update

import harness.controller as controller
from devices.inventory import load_inventory
from helpers import HARNESS, REPO, harness, write_matrix
from pg import any_db_url  # noqa: F401  (fixture)
from results.exchange import export_rows, write_json
from results.models import Case, Device, Measurement, Run
from results.store import HEARTBEAT_STALE_S, Store
from workloads.errors import StoreError
from workloads.matrix import parse_matrix
from workloads.spec import canonical_case

LOCK_WORDS = ("database is locked", "deadlock", "Traceback", "UniqueViolation", "IntegrityError")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)


def _wait_for(predicate: Any, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _count(store: Store, model: Any) -> int:
    with store.Session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


# -- two controllers ------------------------------------------------------------------------------------
def test_two_harness_runs_on_one_new_database_at_once_lose_nothing_and_duplicate_nothing(home, any_db_url):
    # Overlapping sweeps: both create the schema, the device `local` and the shared cases at the same time.
    a = write_matrix(home / "a.yaml", "name: a\nmatrix:\n  precision: [fp32, bf16]\n  seq_len: [32, 48]\n")
    b = write_matrix(home / "b.yaml", "name: b\nmatrix:\n  precision: [fp32, bf16]\n  seq_len: [32, 64]\n")
    procs = [_spawn(HARNESS + ["run", "--devices", "local", "--matrix", str(m), "--db", any_db_url]) for m in (a, b)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
        assert not [w for w in LOCK_WORDS if w in out + err], out + err
    store = Store(any_db_url)
    runs = {r["matrix"]: r for r in store.list_runs()}
    assert set(runs) == {"a", "b"}
    for name in ("a", "b"):
        assert runs[name]["status"] == "complete" and runs[name]["counts"] == {"ok": 4}
    assert _count(store, Measurement) == 8
    assert _count(store, Case) == 6  # fp32/bf16 x 32, 48, 64: the shared two created once
    assert _count(store, Device) == 1


# -- many store writers ------------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import json, sys, time
    from results.store import Store
    from workloads.spec import canonical_case

    url, shared_run, index, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    while time.time() < start_at:
        time.sleep(0.005)
    store = Store(url)  # the first writers also race to create the schema
    own = store.create_run(matrix_name=f"writer{index}", matrix_text="", measure={}, devices=["dev0", "dev1"])
    stored_shared = stored_own = 0
    for seq in range(8, 8 + 4 * 30, 4):
        case = canonical_case({"seq_len": seq})
        for device in ("dev0", "dev1"):
            record = {"status": "ok", "samples_ms": [index + 1.0, seq / 10, 2.0]}
            stored_own += store.add_result(own, device, case, record).stored
            stored_shared += store.add_result(shared_run, device, case, record).stored
        store.heartbeat(own)
    store.finish_run(own, "complete")
    print(json.dumps({"own": own, "stored_own": stored_own, "stored_shared": stored_shared}))
""")


def test_concurrent_writers_racing_on_devices_cases_and_measurements_store_each_once(any_db_url):
    setup = Store(any_db_url)
    shared = setup.create_run(matrix_name="shared", matrix_text="", measure={}, devices=[])
    setup.engine.dispose()
    writers = 4
    start_at = time.time() + 3.0  # every process imported and waiting before the first write
    procs = [_spawn([sys.executable, "-c", WRITER, any_db_url, shared, str(i), str(start_at)]) for i in range(writers)]
    outs = [p.communicate(timeout=300) for p in procs]
    import json

    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert not [w for w in LOCK_WORDS if w in err], err
        results.append(json.loads(out.strip().splitlines()[-1]))
    store = Store(any_db_url)
    # Every writer stored all of its own run; of the shared run's 60 keys each was stored by exactly one.
    assert [r["stored_own"] for r in results] == [60] * writers
    assert sum(r["stored_shared"] for r in results) == 60
    assert store.status_counts(shared) == {"ok": 60}
    for r in results:
        assert store.status_counts(r["own"]) == {"ok": 60}
    assert _count(store, Measurement) == 60 * (writers + 1)
    assert _count(store, Case) == 30 and _count(store, Device) == 2
    with store.Session() as s:  # each measurement has its samples, and they are the writer's own
        n = s.execute(text("SELECT count(*) FROM samples JOIN measurements m ON m.id = samples.measurement_id")
                      ).scalar()
    assert n == 60 * (writers + 1)


def test_concurrent_imports_of_one_file_add_each_row_once(any_db_url, tmp_path):
    source = Store(f"sqlite:///{tmp_path / 'lab.db'}")
    for night in range(3):
        run = source.create_run(matrix_name="nightly", matrix_text="", measure={}, devices=["rpi4", "rpi5"])
        for seq in range(16, 16 + 8 * 25, 8):
            for device in ("rpi4", "rpi5"):
                source.add_result(run, device, canonical_case({"seq_len": seq}),
                                  {"status": "ok", "samples_ms": [1.0 + night, 2.0, float(seq)]})
        source.finish_run(run, "complete")
    export = tmp_path / "lab.json"
    with open(export, "w") as fh:
        write_json(export_rows(source), fh)
    Store(any_db_url).engine.dispose()  # schema first: this test is about the rows
    procs = [_spawn(HARNESS + ["results", "import", str(export), "--db", any_db_url]) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    added = skipped = 0
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        words = out.split()
        added += int(words[1])
        skipped += int(words[words.index("already") - 1])
    assert (added, skipped) == (150, 300)
    store = Store(any_db_url)
    assert _count(store, Measurement) == 150 and _count(store, Run) == 3
    assert export_rows(store) == export_rows(source)


# -- --resume of a run that is still running -------------------------------------------------------------
def _make_run(store: Store) -> str:
    return store.create_run(matrix_name="m", matrix_text="matrix:\n  seq_len: [32]\n", measure={},
                            devices=["local"])


def _set(store: Store, run_id: str, **values: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(**values))


def _db_clock(store: Store) -> Any:
    with store.Session() as s:
        return store.db_now(s)


def test_resume_is_refused_while_another_hosts_heartbeat_is_fresh(home, any_db_url):
    store = Store(any_db_url)
    run_id = _make_run(store)
    _set(store, run_id, controller_host="lab-pc-2", controller_pid=4242, heartbeat_at=_db_clock(store))
    proc = harness("run", "--resume", run_id, "--db", any_db_url)
    assert proc.returncode == 2
    message = proc.stderr.replace("\n", " ")
    assert f"run {run_id} is still being run by process 4242 on lab-pc-2 (last heartbeat" in message
    assert "wait for it to finish, or stop that process and --resume again" in message
    with pytest.raises(StoreError, match="still being run"):
        store.reopen_run(run_id)
    assert store.get_run(run_id).controller_host == "lab-pc-2"  # the refusal changed nothing


def test_resume_is_allowed_once_the_other_hosts_heartbeat_is_stale(any_db_url):
    store = Store(any_db_url)
    run_id = _make_run(store)
    stale = _db_clock(store) - timedelta(seconds=HEARTBEAT_STALE_S + 5)
    _set(store, run_id, controller_host="lab-pc-2", controller_pid=4242, heartbeat_at=stale)
    run = store.reopen_run(run_id)
    assert run.controller_host == socket.gethostname() and run.controller_pid == os.getpid()
    assert run.heartbeat_at > stale


def test_resume_is_allowed_when_the_controller_on_this_host_died(any_db_url):
    store = Store(any_db_url)
    run_id = _make_run(store)
    dead = subprocess.Popen(["true"])
    dead.wait()
    # Its heartbeat is fresh, but this host can see that its process is gone.
    _set(store, run_id, controller_host=socket.gethostname(), controller_pid=dead.pid, heartbeat_at=_db_clock(store))
    assert store.reopen_run(run_id).controller_pid == os.getpid()


def test_resume_of_a_run_a_live_controller_on_this_host_is_running_is_refused(home, any_db_url):
    # One quick case, then one that takes a while: the controller is alive and mid-run when we resume.
    matrix = write_matrix(home / "m.yaml", "matrix:\n  seq_len: [32]\ninclude:\n  - {seq_len: 64, slowdown: 30000}\n",
                          "measure: {warmup_s: 0.02, min_time_s: 0.05, min_samples: 3, max_time_s: 60, timeout_s: 90}")
    proc = _spawn(HARNESS + ["run", "--devices", "local", "--matrix", str(matrix), "--db", any_db_url])
    try:
        def first_result() -> bool:
            try:
                return any(r["counts"] for r in Store(any_db_url, upgrade=False).list_runs())
            except Exception:
                return False  # schema not there yet
        _wait_for(first_result)
        run_id = Store(any_db_url).list_runs()[0]["run_id"]
        refused = harness("run", "--resume", run_id, "--db", any_db_url)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"still being run by process {proc.pid} on {socket.gethostname()} (its process is alive)" in \
            refused.stderr.replace("\n", " ")
    finally:
        proc.send_signal(signal.SIGINT)  # the controller stops its agent and marks the run interrupted
        proc.communicate(timeout=120)
    assert Store(any_db_url).get_run(run_id).status == "interrupted"
    assert Store(any_db_url).reopen_run(run_id).status == "running"  # now nobody runs it: allowed


class _SlowFakeSession:
    """An agent that reports a result every 0.3 s (no torch, no subprocess)."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan

    def lines(self, silence_timeout_s: float) -> Iterator[dict[str, Any]]:
        yield {"type": "hello", "fingerprint": {"arch": "test"}}
        for item in self.plan["cases"]:
            time.sleep(0.3)
            yield {"type": "result", "run_id": self.plan["run_id"], "case_hash": item["hash"], "status": "ok",
                   "samples_ms": [1.0, 1.1, 1.2]}
        yield {"type": "done"}

    def stop(self) -> None:
        pass


class _FakeTransport:
    def start(self, plan: dict[str, Any]) -> _SlowFakeSession:
        return _SlowFakeSession(plan)


def test_the_controller_refreshes_its_runs_heartbeat_while_it_runs(home, any_db_url, monkeypatch):
    monkeypatch.setattr(controller, "HEARTBEAT_INTERVAL_S", 0.2)
    store = Store(any_db_url)
    watcher = Store(any_db_url)
    sweep = parse_matrix("name: beat\nmatrix:\n  seq_len: [16, 32, 48, 64, 80, 96]\n", "<test>")
    seen: list[Any] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with watcher.Session() as s:
                seen.extend(s.scalars(select(Run.heartbeat_at).where(Run.status == "running")))
            time.sleep(0.1)

    t = threading.Thread(target=watch)
    t.start()
    try:
        outcome = controller.run_sweep(load_inventory(), store, devices=["local"], sweep=sweep,
                                       transport_factory=lambda device, inv: _FakeTransport())
    finally:
        done.set()
        t.join()
    assert outcome.status == "complete" and outcome.counts == {"ok": 6}
    beats = sorted(set(seen))
    assert len(beats) >= 4, beats  # about 1.8 s of running at one beat per 0.2 s
    assert beats[-1] - beats[0] >= timedelta(seconds=0.8)


def test_heartbeat_tells_a_controller_that_another_one_took_its_run_over(any_db_url):
    store = Store(any_db_url)
    run_id = _make_run(store)
    assert store.heartbeat(run_id)
    _set(store, run_id, controller_host="lab-pc-2", controller_pid=99)
    assert not store.heartbeat(run_id)


def test_sqlite_write_transactions_hold_the_write_lock_from_their_first_read(tmp_path, monkeypatch):
    # add_result reads (device, case ids) before it writes. Begun DEFERRED, another writer could commit in
    # between and SQLite would refuse the lock upgrade at once ("database is locked", no waiting). Begun
    # IMMEDIATE, the other writer waits for us instead: its UPDATE takes as long as our pause.
    import sqlite3

    path = tmp_path / "r.db"
    store = Store(f"sqlite:///{path}")
    run_id = _make_run(store)
    inside = threading.Event()
    original = Store._device_id

    def slow_device_id(self: Store, s: Any, name: str) -> int:
        found = original(self, s, name)
        inside.set()
        time.sleep(0.6)
        return found

    monkeypatch.setattr(Store, "_device_id", slow_device_id)
    t = threading.Thread(target=lambda: store.add_result(run_id, "local", canonical_case({"seq_len": 8}),
                                                           {"status": "ok", "samples_ms": [1.0]}))
    t.start()
    assert inside.wait(30)
    other = sqlite3.connect(path, timeout=30, isolation_level=None)
    started = time.monotonic()
    other.execute("UPDATE runs SET tag = 'touched'")
    waited = time.monotonic() - started
    other.close()
    t.join(timeout=30)
    assert waited >= 0.3
    assert store.status_counts(run_id) == {"ok": 1} and store.get_run(run_id).tag == "touched"
