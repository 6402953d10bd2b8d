"""The results schema (SQLAlchemy 2, typed). Models hold data, never presentation.

- `Run`: one `harness run` invocation (its matrix text kept, so `--resume` needs no file).
- `Device`: a declared device name.
- `RunDevice`: a device's part in a run: the environment fingerprint it reported, its status, idle power.
- `Case`: canonical case keys as real columns, plus the canonical hash that identifies it.
- `Measurement`: one (run, device, case) result: status, error, summaries derived from the raw samples,
  memory, energy, accuracy, telemetry.
- `SampleSet`: the raw samples of a measurement (float64 little-endian), kept apart so summaries survive
  `harness results prune`.

Schema changes go through Alembic (`results/migrations`); `SCHEMA_REVISION` is the head revision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_REVISION = "0004"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[Optional[datetime]]
    # running, complete, partial (a device could not finish), interrupted, failed
    status: Mapped[str] = mapped_column(String(16), index=True)
    matrix_name: Mapped[str] = mapped_column(String(200))
    matrix_text: Mapped[str] = mapped_column(Text)
    measure: Mapped[dict[str, Any]]
    tag: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    harness_version: Mapped[str] = mapped_column(String(40))
    git_revision: Mapped[Optional[str]] = mapped_column(String(64))
    controller_host: Mapped[Optional[str]] = mapped_column(String(200))
    # The process running it, so another controller can refuse to --resume a run still in progress.
    controller_pid: Mapped[Optional[int]]
    # Refreshed by the controller every few seconds while it runs (results.store.HEARTBEAT_INTERVAL_S), on
    # the database's clock where it has one: a fresh heartbeat means "still running", from any host.
    heartbeat_at: Mapped[Optional[datetime]]
    # When `harness results prune` dropped this run's raw samples (its summaries stay); None: never pruned.
    samples_pruned_at: Mapped[Optional[datetime]]
    # Why the run ended as it did when that was not by finishing: the signal that stopped it, the database
    # error that failed it.
    error: Mapped[Optional[str]] = mapped_column(Text)

    devices: Mapped[list["RunDevice"]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)


class RunDevice(Base):
    __tablename__ = "run_devices"
    __table_args__ = (UniqueConstraint("run_id", "device_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    # pending, running, complete, unreachable, failed, interrupted
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[Optional[str]] = mapped_column(Text)
    fingerprint: Mapped[Optional[dict[str, Any]]]
    # Hash of the fingerprint's stable fields: equal means comparable hardware and software.
    env_key: Mapped[Optional[str]] = mapped_column(String(16), index=True)
    idle_power_w: Mapped[Optional[float]] = mapped_column(Float)
    power_source: Mapped[Optional[str]] = mapped_column(String(200))

    run: Mapped[Run] = relationship(back_populates="devices")
    device: Mapped[Device] = relationship()


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hash: Mapped[str] = mapped_column(String(16), unique=True)
    variant: Mapped[str] = mapped_column(String(32), index=True)
    # Empty only for an imported benchmark (variant external), which is its `name` alone.
    precision: Mapped[Optional[str]] = mapped_column(String(16), index=True)
    backend: Mapped[Optional[str]] = mapped_column(String(32))
    scope: Mapped[Optional[str]] = mapped_column(String(16))
    seq_len: Mapped[Optional[int]]
    batch: Mapped[Optional[int]]
    heads: Mapped[Optional[int]]
    head_dim: Mapped[Optional[int]]
    model_dim: Mapped[Optional[int]]
    threads: Mapped[Optional[int]]
    inputs: Mapped[Optional[str]] = mapped_column(String(16))
    window: Mapped[Optional[int]]
    block_size: Mapped[Optional[int]]
    density: Mapped[Optional[float]] = mapped_column(Float)
    topk: Mapped[Optional[int]]
    rank: Mapped[Optional[int]]
    depth: Mapped[Optional[int]]
    group_size: Mapped[Optional[int]]
    quant: Mapped[Optional[str]] = mapped_column(String(16))
    diff_lambda: Mapped[Optional[float]] = mapped_column(Float)
    slowdown: Mapped[Optional[int]]
    name: Mapped[Optional[str]] = mapped_column(String(500))
    # The canonical case as JSON: the identity, including keys added by later schema revisions.
    params: Mapped[dict[str, Any]]


class Measurement(Base):
    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint("run_id", "device_id", "case_id"),
        # A (device, case) series across runs (trends, regress, compare): the run id in the index lets the
        # join to runs start from the index alone. Also serves (device) and (device, case) lookups.
        Index("ix_measurements_device_case_run", "device_id", "case_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # No index of its own: the unique (run_id, device_id, case_id) index starts with it.
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    status: Mapped[str] = mapped_column(String(16), index=True)  # ok, failed, skipped, timeout
    error: Mapped[Optional[str]] = mapped_column(Text)
    started_at: Mapped[Optional[datetime]]
    finished_at: Mapped[Optional[datetime]]
    # Summaries of the raw samples (ms per call); derived, recomputable from SampleSet.
    latency_ms_p50: Mapped[Optional[float]] = mapped_column(Float)
    latency_ms_p90: Mapped[Optional[float]] = mapped_column(Float)
    latency_ms_p99: Mapped[Optional[float]] = mapped_column(Float)
    latency_ms_mean: Mapped[Optional[float]] = mapped_column(Float)
    latency_ms_std: Mapped[Optional[float]] = mapped_column(Float)
    n_samples: Mapped[Optional[int]]
    inner_loops: Mapped[Optional[int]]
    threads: Mapped[Optional[int]]
    peak_mem_mb: Mapped[Optional[float]] = mapped_column(Float)
    kv_bytes: Mapped[Optional[int]]
    input_bytes: Mapped[Optional[int]]
    energy_mj_per_inf: Mapped[Optional[float]] = mapped_column(Float)
    power_w_avg: Mapped[Optional[float]] = mapped_column(Float)
    power_source: Mapped[Optional[str]] = mapped_column(String(200))
    is_estimate: Mapped[Optional[bool]]
    cos_sim: Mapped[Optional[float]] = mapped_column(Float)
    rel_err: Mapped[Optional[float]] = mapped_column(Float)
    max_abs_err: Mapped[Optional[float]] = mapped_column(Float)
    rmse: Mapped[Optional[float]] = mapped_column(Float)
    throttled: Mapped[Optional[bool]]
    # Share (0..1) of the CPUs' capacity other processes used during the timed window, and whether that
    # passed measure.max_cpu_other. NULL: not measured (an older agent, a platform without counters).
    cpu_other: Mapped[Optional[float]] = mapped_column(Float)
    contended: Mapped[Optional[bool]]
    # How it was computed, warnings, timing details, thermal before/after, accuracy vs dense: not keys.
    details: Mapped[Optional[dict[str, Any]]]

    case: Mapped[Case] = relationship()
    device: Mapped[Device] = relationship()
    samples: Mapped[Optional["SampleSet"]] = relationship(cascade="all, delete-orphan", uselist=False)


class SampleSet(Base):
    __tablename__ = "samples"

    measurement_id: Mapped[int] = mapped_column(ForeignKey("measurements.id", ondelete="CASCADE"),
                                                primary_key=True)
    n: Mapped[int]
    # float64 little-endian, ms per call, in the order they were taken.
    values: Mapped[bytes] = mapped_column(LargeBinary)
