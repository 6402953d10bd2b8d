"""The results store: opens a database by SQLAlchemy URL, keeps its schema current, writes results as
they arrive (one transaction each, so nothing completed is lost) and reads them back.

SQLite gets WAL mode and a busy timeout so a dashboard can read while a run writes, and two controllers
can write at once. The conversion of an agent's result line into columns (`measurement_columns`) is a
pure function: the summaries are derived from the raw samples, which are stored too.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import Engine, create_engine, event, func, inspect, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from workloads.errors import StoreError
from workloads.spec import CASE_COLUMNS, case_hash
from workloads.stats import summarize

from .models import SCHEMA_REVISION, Case, Device, Measurement, Run, RunDevice, SampleSet

DEFAULT_DB = "sqlite:///harness.db"
MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


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
    details = {k: record[k] for k in ("compute", "kernel_bytes", "kernel_meta", "warmup_calls", "warmup_s",
                                      "calls", "stopped_by", "notes", "torch_device", "rss_before_mb",
                                      "peak_mem_source", "traceback", "thermal", "power", "window_start",
                                      "window_end", "test_slowdown")
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


class Store:
    """The results database behind a URL (`sqlite:///harness.db`, `postgresql+psycopg://...`)."""

    def __init__(self, url: str = DEFAULT_DB, *, upgrade: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade:
            self.upgrade()

    # -- schema ---------------------------------------------------------------------------------------
    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self, *, announce: Any = None) -> tuple[str | None, str]:
        """Bring the schema to the head revision in place; returns (before, after)."""
        from alembic import command
        from alembic.config import Config

        before = self.current_revision()
        if before == SCHEMA_REVISION:
            return before, before
        if before is None and inspect(self.engine).has_table("runs"):
            raise StoreError(f"{self.url} has harness tables but no schema revision; it was not created by "
                             "attn-harness migrations. Point --db at another database.")
        if before is not None and announce:
            announce(f"upgrading the results database schema from revision {before} to {SCHEMA_REVISION}")
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return before, SCHEMA_REVISION

    # -- writes ---------------------------------------------------------------------------------------
    def create_run(self, *, matrix_name: str, matrix_text: str, measure: Mapping[str, Any],
                   devices: Iterable[str], tag: str | None = None, run_id: str | None = None) -> str:
        from harness import __version__

        run_id = run_id or uuid.uuid4().hex[:12]
        with self.Session.begin() as s:
            run = Run(id=run_id, started_at=utcnow(), status="running", matrix_name=matrix_name,
                      matrix_text=matrix_text, measure=dict(measure), tag=tag, harness_version=__version__,
                      git_revision=git_revision(), controller_host=socket.gethostname(),
                      controller_pid=os.getpid(), heartbeat_at=utcnow())
            s.add(run)
            for name in devices:
                s.add(RunDevice(run=run, device_id=self._device_id(s, name), status="pending"))
        return run_id

    def _device_id(self, s: Session, name: str) -> int:
        found = s.scalar(select(Device.id).where(Device.name == name))
        if found is not None:
            return found
        # Another controller may insert the same name at once: a savepoint keeps our transaction alive.
        try:
            with s.begin_nested():
                device = Device(name=name)
                s.add(device)
            return device.id
        except IntegrityError:
            return s.scalar(select(Device.id).where(Device.name == name))  # type: ignore[return-value]

    def _case_id(self, s: Session, case: Mapping[str, Any]) -> int:
        h = case_hash(case)
        found = s.scalar(select(Case.id).where(Case.hash == h))
        if found is not None:
            return found
        cols = {k: case.get(k) for k in CASE_COLUMNS}
        try:
            with s.begin_nested():
                row = Case(hash=h, params=dict(case), **cols)
                s.add(row)
            return row.id
        except IntegrityError:
            return s.scalar(select(Case.id).where(Case.hash == h))  # type: ignore[return-value]

    def add_result(self, run_id: str, device: str, case: Mapping[str, Any],
                   record: Mapping[str, Any]) -> StoredResult:
        """Store one result in its own transaction; a result already stored for (run, device, case) is
        left as it is (exactly once across resumes and journal replays)."""
        cols = measurement_columns(record)
        samples = record.get("samples_ms") or []
        with self.Session.begin() as s:
            device_id = self._device_id(s, device)
            case_id = self._case_id(s, case)
            existing = s.scalar(select(Measurement.id).where(
                Measurement.run_id == run_id, Measurement.device_id == device_id, Measurement.case_id == case_id))
            if existing is not None:
                return StoredResult(False, existing)
            m = Measurement(run_id=run_id, device_id=device_id, case_id=case_id, **cols)
            if samples:
                m.samples = SampleSet(n=len(samples), values=pack_samples(samples))
            s.add(m)
            s.flush()
            return StoredResult(True, m.id)

    def set_run_device(self, run_id: str, device: str, **fields: Any) -> None:
        from devices.probe import stable

        with self.Session.begin() as s:
            device_id = self._device_id(s, device)
            rd = s.scalar(select(RunDevice).where(RunDevice.run_id == run_id, RunDevice.device_id == device_id))
            if rd is None:
                rd = RunDevice(run_id=run_id, device_id=device_id, status="pending")
                s.add(rd)
            if "fingerprint" in fields and fields["fingerprint"] is not None:
                fields["env_key"] = env_key(stable(fields["fingerprint"]))
            for key, value in fields.items():
                setattr(rd, key, value)

    def finish_run(self, run_id: str, status: str) -> None:
        with self.Session.begin() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise StoreError(f"no run {run_id}")
            run.status = status
            run.finished_at = utcnow()
            run.controller_pid = None

    def reopen_run(self, run_id: str) -> Run:
        """Mark a run as running again for --resume, refusing one another live controller is running."""
        with self.Session.begin() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise StoreError(f"no run '{run_id}' in {self.url}; `harness results list` shows the runs")
            if run.status == "running" and run.controller_host == socket.gethostname() and \
                    run.controller_pid and _pid_alive(run.controller_pid) and run.controller_pid != os.getpid():
                raise StoreError(f"run {run_id} is still being run by process {run.controller_pid} on this "
                                 "host; wait for it to finish or stop it before --resume")
            run.status = "running"
            run.controller_pid = os.getpid()
            run.controller_host = socket.gethostname()
            run.heartbeat_at = utcnow()
            return run

    # -- reads ----------------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run:
        with self.Session() as s:
            run = s.get(Run, run_id)
            if run is None:
                # Accept an unambiguous prefix, as git does.
                matches = s.scalars(select(Run).where(Run.id.like(f"{run_id}%"))).all()
                if len(matches) == 1:
                    return matches[0]
                hint = "is ambiguous" if matches else "does not exist"
                raise StoreError(f"run '{run_id}' {hint} in {self.url}; `harness results list` shows the runs")
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

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.Session() as s:
            counts = (select(Measurement.run_id, Measurement.status, func.count())
                      .group_by(Measurement.run_id, Measurement.status).subquery())
            runs = s.scalars(select(Run).order_by(Run.started_at.desc()).limit(limit)).all()
            out = []
            for run in runs:
                by_status = {st: n for _, st, n in s.execute(select(counts).where(counts.c.run_id == run.id))}
                out.append({"run_id": run.id, "started_at": run.started_at, "status": run.status,
                            "matrix": run.matrix_name, "tag": run.tag, "devices": self.run_devices(run.id),
                            "counts": by_status})
            return out

    def status_counts(self, run_id: str) -> dict[str, int]:
        """Stored measurements of a run by status (ok, failed, skipped, timeout)."""
        with self.Session() as s:
            rows = s.execute(select(Measurement.status, func.count()).where(Measurement.run_id == run_id)
                             .group_by(Measurement.status))
            return {status: n for status, n in rows}

    def count_runs(self) -> int:
        with self.Session() as s:
            return s.scalar(select(func.count()).select_from(Run)) or 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_engine(url: str) -> Engine:
    """An engine for the URL; SQLite in WAL mode with a busy timeout, its directory checked first."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot open {url}: directory {parent} does not exist")
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except Exception as exc:  # bad URL or missing driver: say which
        raise StoreError(f"cannot open results database {url!r}: {exc}") from None


def open_store(url: str | None = None) -> Store:
    """The store for --db / HARNESS_DB / the default, with a clear error when it cannot be opened."""
    url = url or os.environ.get("HARNESS_DB") or DEFAULT_DB
    try:
        return Store(url)
    except OperationalError as exc:
        raise StoreError(f"cannot open results database {url}: {exc.orig}") from None


def json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.replace(tzinfo=timezone.utc).isoformat()
    raise TypeError(type(o))


def dumps(o: Any) -> str:
    return json.dumps(o, default=json_default)
