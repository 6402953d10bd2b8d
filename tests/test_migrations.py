"""Schema migrations on SQLite and PostgreSQL: a database made by an older revision, filled with raw SQL,
upgrades in place (explicitly, and on open with a message) and keeps every row; the migrations build
exactly the schema the models declare."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from helpers import REPO, harness
from pg import any_db_url  # noqa: F401  (fixture)
from results.exchange import export_rows
from results.models import SCHEMA_REVISION, Base
from results.store import MIGRATIONS, Store, make_engine, open_store, pack_samples, unpack_samples
from workloads.errors import StoreError

# Every table of revision 0001 and its columns, as that revision created them: the test reads them with
# raw SQL, so it does not depend on today's models.
TABLES_0001 = {
    "devices": ("id", "name"),
    "cases": ("id", "hash", "variant", "precision", "backend", "scope", "seq_len", "batch", "heads", "head_dim",
              "model_dim", "threads", "inputs", "window", "block_size", "density", "topk", "rank", "depth",
              "group_size", "quant", "diff_lambda", "slowdown", "params"),
    "runs": ("id", "started_at", "finished_at", "status", "matrix_name", "matrix_text", "measure", "tag",
             "harness_version", "git_revision", "controller_host", "controller_pid", "heartbeat_at"),
    "run_devices": ("id", "run_id", "device_id", "status", "error", "fingerprint", "env_key", "idle_power_w",
                    "power_source"),
    "measurements": ("id", "run_id", "device_id", "case_id", "status", "error", "started_at", "finished_at",
                     "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_std",
                     "n_samples", "inner_loops", "threads", "peak_mem_mb", "kv_bytes", "input_bytes",
                     "energy_mj_per_inf", "power_w_avg", "power_source", "is_estimate", "cos_sim", "rel_err",
                     "max_abs_err", "rmse", "throttled", "details"),
    "samples": ("measurement_id", "n", "values"),
}
ORDER = {"samples": "measurement_id"}


def at_revision(url: str, revision: str) -> Engine:
    """A database migrated to `revision` only, the way an older harness left it."""
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return engine


def fill_0001(engine: Engine) -> None:
    """Two runs, two devices, two cases, three measurements (one failed, no samples), with raw SQL."""
    sqlite = engine.dialect.name == "sqlite"

    def ts(*args: int) -> Any:  # what each driver is given for a timestamp column
        t = datetime(*args)
        return t.isoformat(" ", "microseconds") if sqlite else t

    def insert(conn: Any, table: str, **values: Any) -> None:
        cols = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join(f":{c}" for c in values)
        conn.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({marks})"), values)

    with engine.begin() as conn:
        insert(conn, "devices", id=1, name="rpi4")
        insert(conn, "devices", id=2, name="jetson")
        for cid, seq in ((1, 64), (2, 256)):
            insert(conn, "cases", id=cid, hash=f"{cid:016x}", variant="dense", precision="int8", backend="torch",
                   scope="core", seq_len=seq, batch=1, heads=4, head_dim=32, inputs="random", window=None,
                   density=None, params=f'{{"variant": "dense", "precision": "int8", "seq_len": {seq}}}')
        insert(conn, "runs", id="run0000000a", started_at=ts(2025, 1, 2, 3, 4, 5, 678901), status="complete",
               finished_at=ts(2025, 1, 2, 4, 0), matrix_name="nightly", matrix_text="name: nightly\n",
               measure='{"min_samples": 10}', tag="lab-a", harness_version="0.0.9", git_revision="abc",
               controller_host="ci", controller_pid=None, heartbeat_at=ts(2025, 1, 2, 4, 0))
        insert(conn, "runs", id="run0000000b", started_at=ts(2025, 2, 1), status="partial", finished_at=None,
               matrix_name="adhoc", matrix_text="", measure="{}", tag=None, harness_version="0.0.9",
               git_revision=None, controller_host="laptop", controller_pid=4242, heartbeat_at=None)
        insert(conn, "run_devices", id=1, run_id="run0000000a", device_id=1, status="complete", error=None,
               fingerprint='{"arch": "aarch64", "torch": "2.4.1"}', env_key="e1", idle_power_w=2.5,
               power_source="ina219")
        insert(conn, "run_devices", id=2, run_id="run0000000b", device_id=2, status="unreachable",
               error="ssh: timed out", fingerprint=None, env_key=None, idle_power_w=None, power_source=None)
        insert(conn, "measurements", id=1, run_id="run0000000a", device_id=1, case_id=1, status="ok",
               started_at=ts(2025, 1, 2, 3, 5), finished_at=ts(2025, 1, 2, 3, 6), latency_ms_p50=1.5,
               latency_ms_p90=1.75, latency_ms_p99=2.0, latency_ms_mean=1.6, latency_ms_std=0.1, n_samples=3,
               inner_loops=8, threads=4, peak_mem_mb=12.5, kv_bytes=4096, input_bytes=8192, energy_mj_per_inf=0.25,
               power_w_avg=4.5, power_source="ina219", is_estimate=False, cos_sim=0.9999, rel_err=0.004,
               max_abs_err=0.01, rmse=0.002, throttled=False, details='{"calls": 24, "stopped_by": "min_time"}')
        insert(conn, "measurements", id=2, run_id="run0000000a", device_id=1, case_id=2, status="failed",
               error="RuntimeError: out of memory", started_at=None, finished_at=None, is_estimate=None,
               throttled=None, details=None)
        insert(conn, "measurements", id=3, run_id="run0000000b", device_id=2, case_id=1, status="ok",
               latency_ms_p50=0.5, n_samples=2, is_estimate=True, throttled=True, details='{"notes": ["hot"]}')
        insert(conn, "samples", measurement_id=1, n=3, values=pack_samples([1.25, 1.5, 2.0]))
        insert(conn, "samples", measurement_id=3, n=2, values=pack_samples([0.5, 0.5]))


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every 0001 table, read with raw SQL."""
    out = {}
    with engine.connect() as conn:
        for table, cols in TABLES_0001.items():
            quoted = ", ".join(f'"{c}"' for c in cols)
            out[table] = [tuple(r) for r in conn.execute(text(f"SELECT {quoted} FROM {table} "
                                                              f"ORDER BY {ORDER.get(table, 'id')}"))]
    return out


def old_database(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = at_revision(url, "0001")
    fill_0001(engine)
    before = snapshot(engine)
    assert sum(len(rows) for rows in before.values()) == 13
    engine.dispose()
    return before


def test_harness_db_upgrade_migrates_an_old_database_in_place_keeping_every_row(any_db_url):
    before = old_database(any_db_url)
    proc = harness("db", "upgrade", "--db", any_db_url)
    assert proc.returncode == 0, proc.stderr
    assert f"from schema revision 0001 to {SCHEMA_REVISION}" in proc.stdout
    assert f"schema at revision {SCHEMA_REVISION} (was 0001)" in proc.stdout
    store = Store(any_db_url, upgrade=False)
    assert store.current_revision() == SCHEMA_REVISION
    assert snapshot(store.engine) == before
    # And the harness reads the old rows through today's models.
    rows = {(r["run_id"], r["device"], r["seq_len"]): r for r in export_rows(store)}
    assert len(rows) == 3
    ok = rows[("run0000000a", "rpi4", 64)]
    assert ok["samples_ms"] == [1.25, 1.5, 2.0] and ok["latency_ms_p50"] == 1.5 and ok["is_estimate"] is False
    assert ok["started_at"] == "2025-01-02T03:04:05.678901+00:00" and ok["details"]["calls"] == 24
    assert ok["fingerprint"] == {"arch": "aarch64", "torch": "2.4.1"} and ok["idle_power_w"] == 2.5
    failed = rows[("run0000000a", "rpi4", 256)]
    assert failed["status"] == "failed" and failed["samples_ms"] is None and failed["latency_ms_p50"] is None
    assert rows[("run0000000b", "jetson", 64)]["throttled"] is True
    # Upgrading again is a no-op that says so.
    again = harness("db", "upgrade", "--db", any_db_url, check=True)
    assert "upgrading" not in again.stdout and f"schema at revision {SCHEMA_REVISION}" in again.stdout


def test_a_read_command_on_an_old_database_asks_for_an_upgrade_and_changes_nothing(any_db_url):
    before = old_database(any_db_url)
    proc = harness("results", "list", "--db", any_db_url)
    assert proc.returncode == 2 and "harness db upgrade --db URL" in proc.stderr and "Traceback" not in proc.stderr
    store = Store(any_db_url, upgrade=False)
    assert store.current_revision() == "0001"
    assert snapshot(store.engine) == before


def test_a_writing_command_upgrades_an_old_database_with_a_message_on_stderr(any_db_url):
    before = old_database(any_db_url)
    proc = harness("results", "prune", "--older-than", "36500d", "--db", any_db_url)
    assert proc.returncode == 0, proc.stderr
    assert f"upgrading the results database {any_db_url} from schema revision 0001 to {SCHEMA_REVISION}" \
        in proc.stderr.replace("\n", "")
    listed = harness("results", "list", "--db", any_db_url, check=True)
    assert "run0000000a" in listed.stdout and "run0000000b" in listed.stdout
    store = Store(any_db_url, upgrade=False)
    assert store.current_revision() == SCHEMA_REVISION
    assert snapshot(store.engine) == before
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs WHERE samples_pruned_at IS NULL")).scalar() == 2


def test_two_processes_opening_an_old_database_at_once_migrate_it_once(any_db_url):
    before = old_database(any_db_url)
    code = ("import sys; from results.store import open_store; s = open_store(sys.argv[1]); "
            "print(s.current_revision())")
    procs = [subprocess.Popen([sys.executable, "-c", code, any_db_url], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == SCHEMA_REVISION
    # Exactly one of them announced the upgrade; the others found it done once they had the lock.
    assert sum("upgrading the results database" in err for _, err in outs) == 1
    assert snapshot(make_engine(any_db_url)) == before


def test_migrations_build_exactly_the_schema_the_models_declare(any_db_url):
    store = Store(any_db_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_downgrade_to_0001_and_upgrade_again_keeps_every_row(any_db_url):
    before = old_database(any_db_url)
    Store(any_db_url).downgrade("0001")  # on SQLite, rebuilds `runs`: children must not cascade away
    engine = make_engine(any_db_url)
    assert snapshot(engine) == before
    assert Store(any_db_url).current_revision() == SCHEMA_REVISION
    assert snapshot(engine) == before


def test_a_database_from_a_newer_harness_is_refused_with_the_fix(any_db_url):
    Store(any_db_url)
    engine = make_engine(any_db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(StoreError, match="newer than this harness knows .*upgrade attn-harness"):
        open_store(any_db_url)


def test_samples_written_before_the_upgrade_read_back_exactly(any_db_url):
    old_database(any_db_url)
    store = open_store(any_db_url)
    with store.engine.connect() as conn:
        blob = conn.execute(text('SELECT "values" FROM samples WHERE measurement_id = 1')).scalar()
    assert unpack_samples(bytes(blob)) == [1.25, 1.5, 2.0]

