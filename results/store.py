"""The results store: opens a database by SQLAlchemy URL (SQLite or PostgreSQL), keeps its schema current,
writes results as they arrive (one transaction each, so nothing completed is lost) and reads them back.

Several writers at once (two controllers, an import, the nightly job):
- SQLite runs in WAL mode (a dashboard reads while a run writes) and every write transaction starts with
  `BEGIN IMMEDIATE`: it takes the write lock up front, waiting up to the busy timeout, so a transaction
  never has to upgrade a read lock to a write lock mid-way (the upgrade SQLite answers "database is
  locked" at once, whatever the timeout). Writers queue; none fails.
- PostgreSQL writers run concurrently; devices, cases and measurements are inserted with
  `ON CONFLICT DO NOTHING` and looked up again, so two controllers creating the same case both get its id.
- Either way a write transaction that still meets a lock timeout, a deadlock or a serialization failure
  is retried from the start (it is idempotent: keyed by run, device and case).
- Schema upgrades take a lock first (the SQLite write lock, a PostgreSQL advisory lock), so two processes
  opening an old or empty database at once migrate it once.

A running controller refreshes its run's heartbeat (`heartbeat`); `reopen_run` refuses to --resume a run
whose controller is alive on this host or whose heartbeat is fresh (any host).

Bulk merges (`merge`, used by import) write in one transaction with the engine's fast path: the driver's
`executemany` on SQLite, `COPY` on PostgreSQL. The conversion of an agent's result line into columns
(`measurement_columns`) is a pure function: the summaries are derived from the raw samples, which are
stored too.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from sqlalchemy import (JSON, Boolean, DateTime, Engine, Table, create_engine, event, func, insert, inspect, select,
                        text, update)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from harness.safe_text import mask_url, redact, terminal
from harness.lease import pid_alive
from workloads.errors import DatabaseError, StoreError
from workloads.spec import CASE_COLUMNS, case_hash
from workloads.stats import summarize

from .models import SCHEMA_REVISION, Case, Device, Measurement, Run, RunDevice, SampleSet

DEFAULT_DB = "sqlite:///harness.db"
MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# The controller refreshes runs.heartbeat_at this often; a heartbeat older than HEARTBEAT_STALE_S means its
# controller is gone (crashed, killed, lost its host) and the run may be resumed from anywhere.
HEARTBEAT_INTERVAL_S = 15.0
HEARTBEAT_STALE_S = 120.0
# Attempts of a write transaction that met a lock timeout, a deadlock or a concurrent duplicate.
WRITE_ATTEMPTS = 8
# pg_advisory_xact_lock key serializing schema upgrades ("harn").
PG_UPGRADE_LOCK = 0x6861726E
# Rows per IN (...) list: far under SQLite's variable limit and PostgreSQL's parameter limit.
IN_CHUNK = 500
SUPPORTED_BACKENDS = ("sqlite", "postgresql")

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def from_epoch(t: float | None) -> datetime | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None)


def pack_samples(values: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def unpack_samples(blob: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(blob) // 8}d", blob))


def _finite(x: Any) -> float | None:
    """NaN and infinity are stored as NULL (with the raw value kept in details): JSON and SQL agree on NULL."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def measurement_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """Columns of a Measurement from an agent result line (pure). Summaries come from the raw samples."""
    samples = record.get("samples_ms") or []
    cols: dict[str, Any] = {
        "status": record["status"],
        "error": record.get("error"),
        "started_at": from_epoch(record.get("started_at")),
        "finished_at": from_epoch(record.get("finished_at")),
        "inner_loops": record.get("inner_loops"),
        "threads": record.get("threads"),
        "peak_mem_mb": record.get("peak_mem_mb"),
        "input_bytes": record.get("input_bytes"),
        "kv_bytes": (record.get("kernel_bytes") or {}).get("kv"),
    }
    if samples:
        s = summarize(samples)
        cols.update(latency_ms_p50=s.p50, latency_ms_p90=s.p90, latency_ms_p99=s.p99, latency_ms_mean=s.mean,
                    latency_ms_std=s.std, n_samples=s.n)
    acc = record.get("accuracy") or {}
    for key in ("cos_sim", "rel_err", "max_abs_err", "rmse"):
        cols[key] = _finite(acc.get(key))
    power = record.get("power") or {}
    cols.update(energy_mj_per_inf=power.get("energy_mj_per_inf"), power_w_avg=power.get("power_w_avg"),
                power_source=power.get("power_source"), is_estimate=power.get("is_estimate"))
    thermal = record.get("thermal") or {}
    cols["throttled"] = thermal.get("throttled")
    cols["cpu_other"] = _finite(record.get("cpu_other"))
    cols["contended"] = record.get("contended")
    details = {k: record[k] for k in ("compute", "kernel_bytes", "kernel_meta", "warmup_calls", "warmup_s",
                                      "calls", "stopped_by", "notes", "torch_device", "rss_before_mb",
                                      "peak_mem_source", "traceback", "thermal", "power", "window_start",
                                      "window_end", "test_slowdown", "contention", "contention_retry",
                                      "contention_wait", "warmup_extended", "warmup_samples_ms",
                                      "threads_requested", "oversubscribed", "plugin", "reference", "processes")
               if record.get(k) not in (None, [], {})}
    if acc:
        details["accuracy"] = acc  # NaN kept here (JSON allows it in Python), so a failed accuracy shows
    cols["details"] = details or None
    return cols


def git_revision() -> str | None:
    """The harness checkout's revision (with '-dirty' for local changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def env_key(stable_fields: Mapping[str, Any]) -> str:
    return case_hash(stable_fields)


@dataclass(frozen=True)
class StoredResult:
    """What `add_result` did: stored a new row or found it already there (resume, replay)."""

    stored: bool
    measurement_id: int | None


# A measurement's own columns (all but id, run_id, device_id, case_id), in the order MergeRow.values holds
# them and COPY / executemany write them.
MEASUREMENT_VALUE_COLUMNS = tuple(c.name for c in Measurement.__table__.columns)[4:]


@dataclass(slots=True)
class MergeRow:
    """One measurement to merge: its key (run, device name, canonical case and its hash), its columns as a
    tuple in MEASUREMENT_VALUE_COLUMNS order and its raw samples (packed float64, or None). A tuple, not a
    dict: a merge handles 100,000 of them."""

    run_id: str
    device: str
    case: Mapping[str, Any]
    case_hash: str
    values: tuple[Any, ...]
    samples: bytes | None = None


@dataclass
class MergeCounts:
    """What `merge` did; `attempts` > 1 when a concurrent writer made it start over, `timings` where the
    time went (seconds: lookups of runs, devices and cases; dedupe; the bulk insert)."""

    runs_added: int = 0
    measurements_added: int = 0
    measurements_skipped: int = 0
    attempts: int = 1
    timings: dict[str, float] = field(default_factory=dict)


# Measurement columns a merge writes, in COPY / executemany order (id first).
_MEASUREMENT_COLS = tuple(c.name for c in Measurement.__table__.columns)
_RUN_COLS = tuple(c.name for c in Run.__table__.columns)


class Store:
    """The results database behind a URL (`sqlite:///harness.db`, `postgresql+psycopg://...`)."""

    def __init__(self, url: str = DEFAULT_DB, *, upgrade: bool = True,
                 announce: Callable[[str], Any] | None = None, read_only: bool = False) -> None:
        self.url = url
        # What messages and logs show: the URL without its password.
        self.safe_url = mask_url(url)
        self.read_only = read_only
        self.engine = make_read_only_engine(url) if read_only else make_engine(url)
        self.backend = self.engine.dialect.name
        # Writes go through an engine whose transactions SQLite begins IMMEDIATE (see make_engine).
        self.write_engine = self.engine.execution_options(harness_write=True)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self.WriteSession = sessionmaker(self.write_engine, expire_on_commit=False)
        if read_only:
            self.check_schema()
        elif upgrade:
            self.upgrade(announce=announce)

    # -- schema ---------------------------------------------------------------------------------------
    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def check_schema(self) -> None:
        """Refuse (StoreError) a database that is not a harness database at this harness's revision; for
        read-only use, where nothing may be migrated."""
        try:
            with self.engine.connect() as conn:
                tables = set(inspect(conn).get_table_names())
                before = _revision(conn) if "alembic_version" in tables else None
        except DBAPIError as exc:
            raise database_error(exc, self.url, "cannot open results database") from None
        _refuse_foreign(tables, before, self.safe_url)
        if before != SCHEMA_REVISION:
            raise StoreError(f"the results database {self.safe_url} is at schema revision {before or 'none'}; this "
                             f"harness reads {SCHEMA_REVISION}. Run `harness db upgrade --db URL` first (it keeps "
                             "every row)")

    def upgrade(self, *, announce: Callable[[str], Any] | None = None) -> tuple[str | None, str]:
        """Bring the schema to the head revision in place; returns (before, after).

        Takes a lock first (SQLite's write lock, a PostgreSQL advisory lock) and reads the revision again
        under it, so two processes opening the same old database migrate it once. `announce` hears one
        line before an existing database is upgraded (a new, empty one is created silently)."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        before = self.current_revision()
        if before == SCHEMA_REVISION:
            return before, before
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
        with self.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
        _refuse_foreign(tables, before, self.safe_url)
        if before is not None and before not in known:
            raise StoreError(f"{self.safe_url} is at schema revision {before}, newer than this harness knows "
                             f"(its newest is {SCHEMA_REVISION}); upgrade attn-harness on this machine")
        with self._migration_connection() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            if before == SCHEMA_REVISION:
                return before, before  # another process migrated it while we waited for the lock
            _refuse_foreign(set(inspect(conn).get_table_names()), before, self.safe_url)
            if before is not None and announce:
                announce(f"upgrading the results database {self.safe_url} from schema revision {before} to "
                         f"{SCHEMA_REVISION} (in place; every stored row is kept)")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return before, SCHEMA_REVISION

    def downgrade(self, revision: str) -> None:
        """Migrate the schema down to `revision` (for recovery and for tests of the migrations)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_connection() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)

    @contextmanager
    def _migration_connection(self) -> Iterator[Any]:
        """A connection in a transaction that holds the migration lock (SQLite's write lock, a PostgreSQL
        advisory lock). On SQLite, foreign keys are off while it runs: a batch migration rebuilds a table
        by copy, drop and rename, and dropping `runs` with foreign keys on would cascade-delete every
        measurement. They are checked once the migration committed, before they are switched back on."""
        with self.write_engine.connect() as conn:
            raw = conn.connection.driver_connection if self.backend == "sqlite" else None
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=OFF")  # outside any transaction, where it takes effect
            try:
                with conn.begin():
                    if self.backend == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_UPGRADE_LOCK})
                    yield conn
                if raw is not None:
                    broken = raw.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StoreError(f"{self.safe_url}: the schema migration left rows whose references are "
                                         f"broken (first: {broken[0]}); restore the database from a backup")
            finally:
                if raw is not None:
                    raw.execute("PRAGMA foreign_keys=ON")

    # -- the write path -------------------------------------------------------------------------------
    def write(self, body: Callable[[Session], T], *, attempts: int = WRITE_ATTEMPTS) -> T:
        """Run `body(session)` in one write transaction; retried from the start (after a short random
        back-off) when it meets a lock timeout, a deadlock, a serialization failure or a row a concurrent
        writer inserted first. `body` must therefore be idempotent, as every Store write is."""
        delay = 0.05
        for attempt in range(1, attempts + 1):
            try:
                with self.WriteSession.begin() as s:
                    return body(s)
            except Exception as exc:
                if attempt == attempts or not _transient(exc):
                    # The bulk paths call the driver directly: its own errors are database errors too.
                    if isinstance(exc, (DBAPIError, sqlite3.Error)) or type(exc).__module__.startswith("psycopg"):
                        raise database_error(exc, self.url) from exc
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def db_now(self, s: Session) -> datetime:
        """Naive UTC now on the database's clock where it has one (PostgreSQL), else this host's: heartbeats
        written and judged by different hosts then agree however their clocks drift."""
        if self.backend == "postgresql":
            return s.scalar(text("SELECT clock_timestamp() AT TIME ZONE 'UTC'"))  # type: ignore[return-value]
        return utcnow()

    def _insert_ignore(self, table: Table, conflict: Sequence[str]) -> Any:
        """INSERT ... ON CONFLICT (conflict) DO NOTHING for this engine."""
        if self.backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        elif self.backend == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            raise StoreError(f"results databases on {self.backend} are not supported; use one of "
                             f"{', '.join(SUPPORTED_BACKENDS)}")
        return dialect_insert(table).on_conflict_do_nothing(index_elements=list(conflict))

    # -- writes ---------------------------------------------------------------------------------------
    def create_run(self, *, matrix_name: str, matrix_text: str, measure: Mapping[str, Any],
                   devices: Iterable[str], tag: str | None = None, run_id: str | None = None) -> str:
        from harness import __version__

        run_id = run_id or uuid.uuid4().hex[:12]
        devices = list(devices)
        revision = git_revision()

        def body(s: Session) -> str:
            run = Run(id=run_id, started_at=utcnow(), status="running", matrix_name=matrix_name,
                      matrix_text=matrix_text, measure=dict(measure), tag=tag, harness_version=__version__,
                      git_revision=revision, controller_host=socket.gethostname(),
                      controller_pid=os.getpid(), heartbeat_at=self.db_now(s))
            s.add(run)
            for name in devices:
                s.add(RunDevice(run=run, device_id=self._device_id(s, name), status="pending"))
            return run_id

        return self.write(body)

    def _device_id(self, s: Session, name: str) -> int:
        found = s.scalar(select(Device.id).where(Device.name == name))
        if found is not None:
            return found
        # Another controller may insert the same name at once: whoever loses the race reads the winner's id.
        s.execute(self._insert_ignore(Device.__table__, ["name"]).values(name=name))
        return s.scalar(select(Device.id).where(Device.name == name))  # type: ignore[return-value]

    def _case_id(self, s: Session, case: Mapping[str, Any], h: str | None = None) -> int:
        h = h or case_hash(case)
        found = s.scalar(select(Case.id).where(Case.hash == h))
        if found is not None:
            return found
        s.execute(self._insert_ignore(Case.__table__, ["hash"]).values(_case_row(case, h)))
        return s.scalar(select(Case.id).where(Case.hash == h))  # type: ignore[return-value]

    def add_result(self, run_id: str, device: str, case: Mapping[str, Any],
                   record: Mapping[str, Any]) -> StoredResult:
        """Store one result in its own transaction; a result already stored for (run, device, case) is
        left as it is (exactly once across resumes, journal replays and concurrent controllers)."""
        cols = measurement_columns(record)
        samples = record.get("samples_ms") or []
        blob = pack_samples(samples) if samples else None
        m = Measurement.__table__

        def body(s: Session) -> StoredResult:
            device_id = self._device_id(s, device)
            case_id = self._case_id(s, case)
            key = (m.c.run_id == run_id) & (m.c.device_id == device_id) & (m.c.case_id == case_id)
            existing = s.scalar(select(m.c.id).where(key))
            if existing is not None:
                return StoredResult(False, existing)
            values = dict(run_id=run_id, device_id=device_id, case_id=case_id, **cols)
            if self.backend == "sqlite":
                # The write lock has been ours since BEGIN IMMEDIATE: nobody inserted it since we looked.
                # (No RETURNING: it needs SQLite 3.35, newer than some distributions' Python links.)
                new_id = s.execute(insert(m).values(values)).inserted_primary_key[0]
            else:
                new_id = s.scalar(self._insert_ignore(m, ["run_id", "device_id", "case_id"]).values(values)
                                  .returning(m.c.id))
                if new_id is None:  # a concurrent writer stored it between our look and our insert
                    return StoredResult(False, s.scalar(select(m.c.id).where(key)))
            if blob is not None:
                s.execute(insert(SampleSet.__table__).values(measurement_id=new_id, n=len(samples), values=blob))
            return StoredResult(True, new_id)

        return self.write(body)

    def set_run_device(self, run_id: str, device: str, **fields: Any) -> None:
        from devices.probe import stable

        if "fingerprint" in fields and fields["fingerprint"] is not None:
            fields["env_key"] = env_key(stable(fields["fingerprint"]))

        def body(s: Session) -> None:
            device_id = self._device_id(s, device)
            s.execute(self._insert_ignore(RunDevice.__table__, ["run_id", "device_id"])
                      .values(run_id=run_id, device_id=device_id, status="pending"))
            if fields:
                s.execute(update(RunDevice).where(RunDevice.run_id == run_id, RunDevice.device_id == device_id)
                          .values(**fields))

        self.write(body)

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        def body(s: Session) -> None:
            run = s.get(Run, run_id)
            if run is None:
                raise StoreError(f"no run {run_id}")
            run.status = status
            run.error = error
            run.finished_at = utcnow()
            run.controller_pid = None

        self.write(body)

    def heartbeat(self, run_id: str) -> bool:
        """Refresh the run's heartbeat (the controller calls this every HEARTBEAT_INTERVAL_S while it runs).
        False when the run is no longer this process's (another controller resumed it after this one's
        heartbeat went stale)."""
        host, pid = socket.gethostname(), os.getpid()

        def body(s: Session) -> bool:
            done = s.execute(update(Run).where(Run.id == run_id, Run.controller_pid == pid,
                                               Run.controller_host == host)
                             .values(heartbeat_at=self.db_now(s)))
            return done.rowcount == 1

        return self.write(body)

    def reopen_run(self, run_id: str) -> Run:
        """Mark a run as running again for --resume, refusing one another live controller is running: one
        whose process is alive on this host, or whose heartbeat (any host) is under HEARTBEAT_STALE_S old."""
        host, pid = socket.gethostname(), os.getpid()

        def body(s: Session) -> Run:
            # FOR UPDATE on PostgreSQL (SQLite's write lock already covers it): two resumes at once, one wins.
            run = s.get(Run, run_id, with_for_update=True)
            if run is None:
                raise StoreError(f"no run '{run_id}' in {self.safe_url}; `harness results list` shows the runs")
            now = self.db_now(s)
            _refuse_live_controller(run, now)
            run.status = "running"
            run.error = None
            run.controller_pid = pid
            run.controller_host = host
            run.heartbeat_at = now
            return run

        return self.write(body)

    # -- bulk merge (import) ---------------------------------------------------------------------------
    def merge(self, runs: Mapping[str, Mapping[str, Any]],
              run_devices: Mapping[tuple[str, str], Mapping[str, Any]], rows: Sequence[MergeRow]) -> MergeCounts:
        """Merge runs, devices' parts in them and measurements, in one transaction.

        `runs` maps run id to Run columns (used only for runs not yet stored: a stored run keeps its own);
        `run_devices` maps (run id, device) to RunDevice columns (likewise). A measurement already stored
        for its (run, device, case), or met twice in `rows`, is skipped. Measurements and samples go in
        with the engine's fast path: the driver's executemany (SQLite), COPY (PostgreSQL)."""
        attempts = 0

        def body(s: Session) -> MergeCounts:
            nonlocal attempts
            attempts += 1
            counts = self._merge(s, runs, run_devices, rows)
            counts.attempts = attempts
            return counts

        return self.write(body)

    def _merge(self, s: Session, runs: Mapping[str, Mapping[str, Any]],
               run_devices: Mapping[tuple[str, str], Mapping[str, Any]], rows: Sequence[MergeRow]) -> MergeCounts:
        from devices.probe import stable

        t0 = time.perf_counter()
        counts = MergeCounts()
        # Keys are taken in sorted order everywhere: two concurrent merges then lock rows in the same order
        # and cannot deadlock each other on PostgreSQL.
        run_ids = sorted(set(runs) | {r.run_id for r in rows})
        stored_runs = {r[0] for r in select_in(s, select(Run.id), Run.id, run_ids)}
        new_runs = []
        for rid in run_ids:
            if rid in stored_runs:
                continue
            given = runs.get(rid) or {}
            row = {c: given.get(c) for c in _RUN_COLS}
            row.update(id=rid, started_at=given.get("started_at") or utcnow(),
                       status=given.get("status") or "complete", matrix_name=given.get("matrix_name") or "imported",
                       matrix_text=given.get("matrix_text") or "", measure=given.get("measure") or {},
                       harness_version=given.get("harness_version") or "unknown")
            new_runs.append(row)
        if new_runs:
            s.execute(self._insert_ignore(Run.__table__, ["id"]), new_runs)
        counts.runs_added = len(new_runs)

        names = sorted(set(r.device for r in rows) | {d for _, d in run_devices})
        device_ids = {name: self._device_id(s, name) for name in names}

        cases: dict[str, Mapping[str, Any]] = {}
        for r in rows:
            cases.setdefault(r.case_hash, r.case)
        hashes = sorted(cases)
        case_ids = dict(select_in(s, select(Case.hash, Case.id), Case.hash, hashes))
        missing = [_case_row(cases[h], h) for h in hashes if h not in case_ids]
        if missing:
            s.execute(self._insert_ignore(Case.__table__, ["hash"]), missing)
            case_ids.update(select_in(s, select(Case.hash, Case.id), Case.hash, [c["hash"] for c in missing]))

        pairs = sorted(set(run_devices) | {(r.run_id, r.device) for r in rows})
        stored_pairs = {tuple(r) for r in select_in(s, select(RunDevice.run_id, RunDevice.device_id),
                                                    RunDevice.run_id, run_ids)}
        new_pairs = []
        for rid, name in pairs:
            if (rid, device_ids[name]) in stored_pairs:
                continue
            given = run_devices.get((rid, name)) or {}
            fp = given.get("fingerprint")
            new_pairs.append({"run_id": rid, "device_id": device_ids[name], "status": given.get("status") or "complete",
                              "error": given.get("error"), "fingerprint": fp,
                              "env_key": env_key(stable(fp)) if fp else None,
                              "idle_power_w": given.get("idle_power_w"), "power_source": given.get("power_source")})
        if new_pairs:
            s.execute(self._insert_ignore(RunDevice.__table__, ["run_id", "device_id"]), new_pairs)
        t1 = time.perf_counter()

        m = Measurement.__table__
        seen = {tuple(r) for r in select_in(s, select(m.c.run_id, m.c.device_id, m.c.case_id), m.c.run_id, run_ids)}
        todo: list[tuple[int, int, MergeRow]] = []
        for r in rows:
            key = (r.run_id, device_ids[r.device], case_ids[r.case_hash])
            if key in seen:
                counts.measurements_skipped += 1
                continue
            seen.add(key)
            todo.append((key[1], key[2], r))
        t2 = time.perf_counter()
        if todo:
            if self.backend == "postgresql":
                self._copy_measurements(s, todo)
            else:
                self._executemany_measurements(s, todo)
        counts.measurements_added = len(todo)
        counts.timings = {"lookups_s": t1 - t0, "dedupe_s": t2 - t1, "insert_s": time.perf_counter() - t2}
        return counts

    @staticmethod
    def _measurement_tuples(todo: Sequence[tuple[int, int, MergeRow]], ids: Sequence[int],
                            convert: Mapping[str, Callable[[Any], Any]]) -> Iterator[tuple[Any, ...]]:
        """(id, run_id, device_id, case_id, *values) per row, `convert`ed where not None."""
        assert _MEASUREMENT_COLS[:4] == ("id", "run_id", "device_id", "case_id"), _MEASUREMENT_COLS
        build = _row_builder(convert)
        return (build(mid, r.run_id, device_id, case_id, r.values) for mid, (device_id, case_id, r) in zip(ids, todo))

    def _executemany_measurements(self, s: Session, todo: Sequence[tuple[int, int, MergeRow]]) -> None:
        """SQLite: ids assigned here (safe: the transaction holds the write lock), then the driver's
        executemany for measurements and samples, values converted as SQLAlchemy would store them."""
        dialect = self.engine.dialect
        convert = {}
        for c in Measurement.__table__.columns:
            if isinstance(c.type, DateTime):
                # SQLAlchemy's SQLite storage format for naive datetimes, without its per-value formatting.
                convert[c.name] = _sqlite_datetime
                continue
            if isinstance(c.type, JSON):
                convert[c.name] = dialect._json_serializer or json.dumps  # type: ignore[attr-defined]
                continue
            if isinstance(c.type, Boolean):
                continue  # sqlite3 stores Python bools as 0 and 1 itself
            proc = c.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                convert[c.name] = proc
        start = (s.scalar(select(func.max(Measurement.id))) or 0) + 1
        ids = range(start, start + len(todo))
        cur = s.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
        cols = ", ".join(f'"{c}"' for c in _MEASUREMENT_COLS)
        marks = ", ".join("?" * len(_MEASUREMENT_COLS))
        cur.executemany(f"INSERT INTO measurements ({cols}) VALUES ({marks})",
                        self._measurement_tuples(todo, ids, convert))
        cur.executemany('INSERT INTO samples (measurement_id, n, "values") VALUES (?, ?, ?)',
                        ((mid, len(r.samples) // 8, r.samples) for mid, (_, _, r) in zip(ids, todo) if r.samples))
        cur.close()

    def _copy_measurements(self, s: Session, todo: Sequence[tuple[int, int, MergeRow]]) -> None:
        """PostgreSQL: ids drawn from the table's sequence, then COPY for measurements and samples. A row a
        concurrent writer stored meanwhile fails the COPY (unique key); `write` retries, and the retry
        skips it."""
        ids = s.scalars(text("SELECT nextval(pg_get_serial_sequence('measurements', 'id')) "
                             "FROM generate_series(1, :n)"), {"n": len(todo)}).all()
        dumps = self.engine.dialect._json_serializer or json.dumps  # type: ignore[attr-defined]
        json_cols = {c.name: dumps for c in Measurement.__table__.columns if isinstance(c.type, JSON)}
        cur = s.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
        cols = ", ".join(f'"{c}"' for c in _MEASUREMENT_COLS)
        with cur.copy(f"COPY measurements ({cols}) FROM STDIN") as copy:
            for values in self._measurement_tuples(todo, ids, json_cols):
                copy.write_row(values)
        with cur.copy('COPY samples (measurement_id, n, "values") FROM STDIN (FORMAT BINARY)') as copy:
            copy.set_types(["int4", "int4", "bytea"])
            for mid, (_, _, r) in zip(ids, todo):
                if r.samples:
                    copy.write_row((mid, len(r.samples) // 8, r.samples))
        cur.close()

    # -- reads ----------------------------------------------------------------------------------------
    def get_run(self, ref: str) -> Run:
        """The run a reference names (an id, a unique prefix, tag:NAME, latest~N, ...: `results.runref`)."""
        from .runref import resolve

        run_id = resolve(self, ref)
        with self.Session() as s:
            run = s.get(Run, run_id)
            assert run is not None
            return run

    def stored_hashes(self, run_id: str, device: str) -> set[str]:
        with self.Session() as s:
            rows = s.scalars(select(Case.hash).join(Measurement, Measurement.case_id == Case.id)
                             .join(Device, Device.id == Measurement.device_id)
                             .where(Measurement.run_id == run_id, Device.name == device))
            return set(rows)

    def run_devices(self, run_id: str) -> list[str]:
        with self.Session() as s:
            return list(s.scalars(select(Device.name).join(RunDevice, RunDevice.device_id == Device.id)
                                  .where(RunDevice.run_id == run_id).order_by(RunDevice.id)))

    def check_resumable(self, run_id: str) -> None:
        """Refuse (StoreError) to resume a run another live controller is running; `reopen_run` checks again
        under the write lock."""
        with self.Session() as s:
            run = s.get(Run, run_id)
            if run is not None:
                _refuse_live_controller(run, self.db_now(s))

    def run_state(self, run: Run) -> str:
        """The run's status as a reader should see it: a `running` run whose controller is gone (its process
        dead on this host, or its heartbeat stale) is `abandoned`; `--resume` takes it up."""
        if run.status != "running":
            return run.status
        with self.Session() as s:
            now = self.db_now(s)
        return "abandoned" if controller_alive(run, now) is None else "running"

    def run_plugins(self, run_id: str) -> list[dict[str, Any]]:
        """The plugins a run recorded in its devices' fingerprints (each once, by sha256): what `--resume`
        checks the plugins it is given against. Records only: nothing here is ever imported."""
        out: dict[str, dict[str, Any]] = {}
        with self.Session() as s:
            for fp in s.scalars(select(RunDevice.fingerprint).where(RunDevice.run_id == run_id)):
                for rec in (fp or {}).get("plugins") or [] if isinstance(fp, dict) else []:
                    if isinstance(rec, dict) and isinstance(rec.get("sha256"), str):
                        out.setdefault(rec["sha256"], rec)
        return list(out.values())

    def run_device_states(self, run_id: str) -> dict[str, tuple[str, str | None]]:
        """Each device's part in a run: its status and error, in the order the run named them."""
        with self.Session() as s:
            rows = s.execute(select(Device.name, RunDevice.status, RunDevice.error)
                             .join(RunDevice, RunDevice.device_id == Device.id)
                             .where(RunDevice.run_id == run_id).order_by(RunDevice.id))
            return {name: (status, error) for name, status, error in rows}

    def list_runs(self, limit: int = 50, *, tag: str | None = None, device: str | None = None,
                  status: str | None = None, since: datetime | None = None,
                  until: datetime | None = None) -> list[dict[str, Any]]:
        """Runs newest first, at most `limit`, with their devices and result counts; filtered by tag,
        a device that took part, status (as `run_state` reads it: `abandoned` included) and start time
        (naive UTC, `since` inclusive, `until` exclusive)."""
        q = select(Run).order_by(Run.started_at.desc(), Run.id.desc())
        if tag is not None:
            q = q.where(Run.tag == tag)
        if device is not None:
            q = q.where(Run.id.in_(select(RunDevice.run_id).join(Device, Device.id == RunDevice.device_id)
                                   .where(Device.name == device)))
        if status is not None:
            # running and abandoned are both stored as running; which one is decided below, per run
            q = q.where(Run.status == ("running" if status in ("running", "abandoned") else status))
        if since is not None:
            q = q.where(Run.started_at >= since)
        if until is not None:
            q = q.where(Run.started_at < until)
        with self.Session() as s:
            now = self.db_now(s)
            if status in ("running", "abandoned"):
                runs = [r for r in s.scalars(q).all()
                        if (controller_alive(r, now) is None) == (status == "abandoned")][:limit]
            else:
                runs = s.scalars(q.limit(limit)).all()
            ids = [r.id for r in runs]
            counts: dict[str, dict[str, int]] = {}
            for rid, st, n in select_in(s, select(Measurement.run_id, Measurement.status, func.count())
                                         .group_by(Measurement.run_id, Measurement.status),
                                         Measurement.run_id, ids):
                counts.setdefault(rid, {})[st] = n
            names: dict[str, list[str]] = {}
            for rid, name in select_in(s, select(RunDevice.run_id, Device.name)
                                        .join(Device, Device.id == RunDevice.device_id).order_by(RunDevice.id),
                                        RunDevice.run_id, ids):
                names.setdefault(rid, []).append(name)
        from .queries import emulated_devices

        emulated = emulated_devices(self.engine, ids)
        return [{"run_id": run.id, "started_at": run.started_at,
                 "status": "abandoned" if run.status == "running" and controller_alive(run, now) is None else run.status,
                 "error": run.error, "matrix": run.matrix_name, "tag": run.tag, "devices": names.get(run.id, []),
                 "emulated": emulated.get(run.id, []), "counts": counts.get(run.id, {})} for run in runs]

    def status_counts(self, run_id: str) -> dict[str, int]:
        """Stored measurements of a run by status (ok, failed, skipped, timeout)."""
        with self.Session() as s:
            rows = s.execute(select(Measurement.status, func.count()).where(Measurement.run_id == run_id)
                             .group_by(Measurement.status))
            return {status: n for status, n in rows}

    def count_runs(self) -> int:
        with self.Session() as s:
            return s.scalar(select(func.count()).select_from(Run)) or 0


def _refuse_live_controller(run: Run, now: datetime) -> None:
    host, pid = socket.gethostname(), os.getpid()
    if run.status == "running" and not (run.controller_host == host and run.controller_pid == pid):
        why = controller_alive(run, now)
        if why:
            who = f"process {run.controller_pid}" if run.controller_pid else "a controller"
            raise StoreError(f"run {run.id} is still being run by {who} on {run.controller_host or 'an unknown host'} "
                             f"({why}); wait for it to finish, or stop that process and --resume again (a "
                             f"controller that died counts as gone {HEARTBEAT_STALE_S:.0f} s after its last "
                             "heartbeat)")


def controller_alive(run: Run, now: datetime) -> str | None:
    """Why the run's controller counts as alive (for refusing --resume), or None when it is gone: its
    process alive on this host, or (any host) a heartbeat younger than HEARTBEAT_STALE_S."""
    if run.controller_host == socket.gethostname():
        return "its process is alive" if run.controller_pid and pid_alive(run.controller_pid) else None
    if run.heartbeat_at is not None:
        age = (now - run.heartbeat_at).total_seconds()
        if age < HEARTBEAT_STALE_S:
            return f"last heartbeat {max(age, 0):.0f} s ago"
    return None


def _row_builder(convert: Mapping[str, Callable[[Any], Any]]) -> Callable[..., tuple[Any, ...]]:
    """A function (id, run_id, device_id, case_id, values) -> the row's tuple with `convert[column]` applied
    to the non-None values of those columns. Generated as one tuple expression: a merge builds 100,000 rows,
    and a per-column loop in Python costs as much as the driver's insert."""
    scope: dict[str, Any] = {}
    parts = []
    for i, column in enumerate(MEASUREMENT_VALUE_COLUMNS):
        if column in convert:
            scope[f"f{i}"] = convert[column]
            parts.append(f"(None if v[{i}] is None else f{i}(v[{i}]))")
        else:
            parts.append(f"v[{i}]")
    source = f"lambda mid, run_id, device_id, case_id, v: (mid, run_id, device_id, case_id, {', '.join(parts)})"
    return eval(source, scope)  # noqa: S307 (built from column names above, no outside input)


def _sqlite_datetime(t: datetime) -> str:
    """A naive datetime as SQLAlchemy stores it in SQLite ('2026-01-01 02:00:00.000000')."""
    return t.isoformat(" ", "microseconds")


def _case_row(case: Mapping[str, Any], h: str) -> dict[str, Any]:
    row = {k: case.get(k) for k in CASE_COLUMNS}
    row.update(hash=h, params=dict(case))
    return row


def select_in(s: Session, query: Any, column: Any, values: Sequence[Any]) -> Iterator[Any]:
    """Rows of `query` filtered by `column IN values`, in chunks of IN_CHUNK values."""
    values = list(values)
    for start in range(0, len(values), IN_CHUNK):
        yield from s.execute(query.where(column.in_(values[start:start + IN_CHUNK])))


def _transient(exc: BaseException) -> bool:
    """A failure the same transaction may not meet again: lock timeout (SQLite busy), deadlock,
    serialization failure, or a unique key a concurrent writer took first."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(orig, "sqlstate", None)
    if code in ("40001", "40P01", "23505", "55P03"):
        return True
    if type(orig).__module__.startswith("sqlite3") or isinstance(exc, OperationalError):
        msg = str(orig).lower()
        return "database is locked" in msg or "database is busy" in msg or "database table is locked" in msg
    return False


def _finite_json(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_json(v) for v in o]
    return o


def pg_json_dumps(o: Any) -> str:
    """JSON for PostgreSQL, which rejects NaN and Infinity: they are stored as null there (SQLite keeps
    them, as Python's json writes them)."""
    try:
        return json.dumps(o, allow_nan=False)
    except ValueError:
        return json.dumps(_finite_json(o))


# Tables a harness database holds (any one of them is enough to recognise an older harness schema).
HARNESS_TABLES = {"runs", "devices", "cases", "run_devices", "measurements", "samples"}


def sqlite_path(url: str) -> str | None:
    """The file of a sqlite:/// URL (user directory expanded), or None for an in-memory database."""
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:
        database = url.split("///", 1)[1] if "///" in url else ""
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return os.path.expanduser(database)


def _revision(conn: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _refuse_foreign(tables: set[str], revision: str | None, safe_url: str) -> None:
    """StoreError when a database holds tables but is not (recognisably) a harness database: another
    application's tables, or a schema revision without the harness's tables."""
    tables = {t for t in tables if not t.startswith("sqlite_")}
    if not tables:
        return
    ours = tables & HARNESS_TABLES
    if revision is None and "alembic_version" not in tables:
        if ours:
            raise StoreError(f"{safe_url} has harness tables but no schema revision; it was not created by "
                             "attn-harness migrations. Point --db at another database.")
        raise StoreError(f"{safe_url} is not an attn-harness results database (it holds other tables: "
                         f"{', '.join(sorted(tables)[:5])}); nothing was changed. Point --db at a harness database "
                         "or a new file")
    if not ours:
        raise StoreError(f"{safe_url} is not an attn-harness results database (another application's schema "
                         f"revision {revision or 'none'}, tables {', '.join(sorted(tables)[:5])}); nothing was "
                         "changed. Point --db at a harness database or a new file")


def _check_sqlite_file(path: str, url: str) -> bool:
    """Before anything writes to an existing SQLite file (switching it to WAL is a write): refuse one that is
    not SQLite, or holds another application's tables. False when the file does not exist or is empty."""
    safe = mask_url(url)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot open {safe}: {exc.strerror}") from None
    import stat as stat_mod

    if not stat_mod.S_ISREG(st.st_mode):
        raise StoreError(f"cannot open {safe}: {path} is not a regular file")
    if st.st_size == 0:
        return False
    # The file is only ever opened through SQLite: closing any other descriptor of it would drop the POSIX
    # locks every SQLite connection of this process holds on it (and leave them reading stale snapshots).
    not_sqlite = (f"{safe} is not a SQLite database (nor an attn-harness one); nothing was changed. Point --db at "
                  "a harness database or a new file")
    try:
        conn = _sqlite_ro_connect(path)
    except sqlite3.Error as exc:
        raise StoreError(not_sqlite if "not a database" in str(exc) else f"cannot open {safe}: {exc}") from None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = None
        if "alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StoreError(not_sqlite) from None
        raise StoreError(f"{safe} cannot be read as a SQLite database ({exc}); nothing was changed") from None
    finally:
        conn.close()
    _refuse_foreign(tables, revision, safe)
    return True


def _sqlite_ro_connect(path: str) -> sqlite3.Connection:
    """A connection that never creates the file and is used only to read (callers add `query_only`).

    Where the file and its folder are writable it is opened `mode=rw`, as the harness's own connections
    are: a `mode=ro` connection to a WAL database makes SQLite share a read-only view of the WAL index with
    every other connection to that file in the process, which then stop seeing new commits. Where they are
    not writable (a read-only mount), `mode=ro`; and where WAL's -shm file cannot be created there, the
    file is opened immutable (nothing can be writing it)."""
    from urllib.parse import quote

    uri = "file:" + quote(os.path.abspath(path))
    if os.access(path, os.W_OK) and not _read_only_folder(path):
        return sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False)
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if "unable to open" not in str(exc) and "readonly" not in str(exc):
            raise
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)


def make_read_only_engine(url: str) -> Engine:
    """An engine that cannot write and never creates a database: SQLite opened `mode=ro` (a read-only
    mount works) with `PRAGMA query_only`; PostgreSQL in read-only transactions. A missing SQLite file is
    a StoreError that says how to create one."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is None:
            raise StoreError(f"{url}: an in-memory database holds no results; give a database file")
        if not _check_sqlite_file(path, url):
            raise StoreError(f"no results database at {os.path.abspath(path)}; create one with `harness db upgrade "
                             f"--db {mask_url(url)}` (or store a sweep in a new one: `harness run ... --db "
                             f"{mask_url(url)}`), or point --db at an existing one")

        def connect() -> sqlite3.Connection:
            conn = _sqlite_ro_connect(path)
            conn.execute("PRAGMA query_only=ON")
            conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            return conn

        return create_engine("sqlite://", creator=connect)
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.close()
            dbapi_conn.commit()
    return engine


def make_engine(url: str) -> Engine:
    """An engine for the URL: SQLite in WAL mode with a busy timeout and our own BEGIN (IMMEDIATE for
    writes), the file checked first (an existing file must be a harness database: switching another
    application's file to WAL would already change it); PostgreSQL with pre-ping and NaN-safe JSON."""
    safe = mask_url(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            parent = Path(path).resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot open {safe}: directory {parent} does not exist")
            _check_sqlite_file(path, url)
        try:
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        except Exception as exc:
            raise StoreError(f"cannot open results database {safe}: {redact(str(exc), url)}") from None

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # The driver's own transaction handling off: it would BEGIN DEFERRED behind our back.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A write transaction takes the write lock up front (waiting up to the busy timeout) instead of
            # upgrading a read lock later, which SQLite refuses at once with "database is locked".
            write = conn.get_execution_options().get("harness_write")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if not any(url.startswith(b) for b in SUPPORTED_BACKENDS):
        raise StoreError(f"cannot open results database {terminal(safe)!r}: the harness stores results in SQLite "
                         "(sqlite:///FILE) or PostgreSQL (postgresql+psycopg://USER@HOST:PORT/DB)")
    try:
        return create_engine(url, pool_pre_ping=True, json_serializer=pg_json_dumps)
    except Exception as exc:  # bad URL or missing driver: say which
        raise StoreError(f"cannot open results database {terminal(safe)!r}: {redact(str(exc), url)}") from None


# What a database error means for the user, by words in the driver's message (SQLite) or SQLSTATE
# (PostgreSQL): the first match wins.
_DB_ERRORS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("database or disk is full", "no space left"), ("53100",),
     "the disk holding the results database is full; free space there (a run keeps what it stored: "
     "`harness run --resume RUN` finishes it)"),
    (("readonly database", "read-only", "read only"), ("25006",),
     "the results database is read-only here; point --db at a writable one (read commands such as "
     "`harness results list` work on a read-only database)"),
    (("disk i/o error",), ("58030",), "the results database's disk reported an I/O error; check the disk"),
    (("file is not a database", "malformed", "not a database"), ("XX001", "XX002"),
     "the results database file is damaged or not a database; restore it from a backup"),
    (("unable to open database",), (), "the results database file cannot be opened; check its path and "
                                         "permissions"),
    (("connection refused", "could not connect", "connection failed", "could not translate host",
      "timeout expired", "name or service not known", "server closed the connection"), ("08001", "08006"),
     "cannot connect to the results database; check that the server is up and the URL is right"),
    (("password authentication failed", "authentication failed"), ("28P01", "28000"),
     "the results database refused the login; check the user and password"),
)


def database_error(exc: BaseException, url: str, doing: str = "") -> DatabaseError:
    """A DatabaseError (a HarnessError: a message, exit 2) saying what a driver error means and what to do;
    the URL's password is never part of it."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    raw = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    text = str(orig).lower()
    code = getattr(orig, "sqlstate", None)
    meaning = "the results database reported an error"
    for words, codes, what in _DB_ERRORS:
        if (code and code in codes) or any(w in text for w in words):
            meaning = what
            break
    path = sqlite_path(url) if url.startswith("sqlite") else None
    if path and os.path.exists(path) and _read_only_folder(path) and "locked" not in text:
        meaning = ("the results database is read-only here (its folder cannot be written); point --db at a "
                   "writable one (read commands such as `harness results list` work on a read-only database)")
    return DatabaseError(f"{doing + ' ' if doing else ''}{mask_url(url)}: {meaning} ({terminal(redact(raw, url))[:300]})")


def _read_only_folder(path: str) -> bool:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY) or not os.access(folder, os.W_OK)
    except OSError:
        return False


def announce_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_store(url: str | None = None, *, read_only: bool = False) -> Store:
    """The store for --db / HARNESS_DB / the default, with a clear error when it cannot be opened.

    Writers (`read_only=False`) create a missing database and upgrade an older schema in place, saying so
    on stderr. Readers (`read_only=True`: results list/show/export, compare, regress, the dashboard) never
    create or change anything: a missing SQLite file, another application's database or an old schema is
    a StoreError saying what to do, and SQLite is opened read-only (a read-only mount works)."""
    url = url or os.environ.get("HARNESS_DB") or DEFAULT_DB
    if read_only:
        try:
            return Store(url, read_only=True)
        except DBAPIError as exc:
            raise database_error(exc, url, "cannot open results database") from None
    # Two controllers creating a new SQLite file at once: switching it to WAL can report "locked" without
    # waiting on the busy handler, so opening is retried for as long as a write would wait.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.05
    while True:
        try:
            return Store(url, announce=announce_on_stderr)
        except OperationalError as exc:
            if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                raise database_error(exc, url, "cannot open results database") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        except DBAPIError as exc:
            raise database_error(exc, url, "cannot open results database") from None


def json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.replace(tzinfo=timezone.utc).isoformat()
    raise TypeError(type(o))


def dumps(o: Any) -> str:
    return json.dumps(o, default=json_default)
