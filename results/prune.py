"""Dropping old raw samples: `harness results prune --older-than 180d`.

Raw samples are most of a results database (a float64 per timed call); summaries (p50, p90, p99, mean, std,
n_samples), accuracy, energy and every other column of a measurement are kept, so the dashboard, compare and
regress still see old runs, from their summaries. A pruned run is stamped `runs.samples_pruned_at`: "no
samples" then reads as "pruned", not "never recorded". Runs whose controller is still alive are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from workloads.errors import ConfigError

from .models import Measurement, Run, SampleSet
from .store import IN_CHUNK, Store, controller_alive, utcnow

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, key: str = "--older-than") -> timedelta:
    """'180d' -> 180 days. Units: s, m (minutes), h, d, w; a whole number, more than zero."""
    found = _DURATION.match(text or "")
    if not found or int(found.group(1)) <= 0:
        raise ConfigError(f"{text!r} is not an age; give a whole number and a unit: 180d (days), 26w (weeks), "
                          "12h (hours), 30m (minutes), 90s (seconds)", key=key)
    return timedelta(seconds=int(found.group(1)) * _UNIT_S[found.group(2)])


@dataclass(frozen=True)
class PruneResult:
    """What a prune dropped: sample sets of `measurements` in `runs`, `samples` values (8 bytes each)."""

    cutoff: datetime
    runs: int
    measurements: int
    samples: int

    @property
    def bytes(self) -> int:
        return self.samples * 8


def prune_samples(store: Store, older_than: timedelta, *, now: datetime | None = None) -> PruneResult:
    """Delete the raw samples of runs started before `now - older_than` (naive UTC), in one transaction."""
    cutoff = (now or utcnow()) - older_than

    def body(s: Session) -> PruneResult:
        now_db = store.db_now(s)
        old = s.scalars(select(Run).where(Run.started_at < cutoff).order_by(Run.id)).all()
        ids = [r.id for r in old if not (r.status == "running" and controller_alive(r, now_db))]
        runs = measurements = samples = 0
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start:start + IN_CHUNK]
            of_chunk = select(Measurement.id).where(Measurement.run_id.in_(chunk))
            stats = s.execute(select(Measurement.run_id, func.count(), func.coalesce(func.sum(SampleSet.n), 0))
                              .join(SampleSet, SampleSet.measurement_id == Measurement.id)
                              .where(Measurement.run_id.in_(chunk)).group_by(Measurement.run_id)).all()
            if not stats:
                continue
            s.execute(delete(SampleSet).where(SampleSet.measurement_id.in_(of_chunk)))
            pruned = [run_id for run_id, _, _ in stats]
            s.execute(update(Run).where(Run.id.in_(pruned)).values(samples_pruned_at=now_db))
            runs += len(pruned)
            measurements += sum(int(n) for _, n, _ in stats)
            samples += sum(int(v) for _, _, v in stats)
        return PruneResult(cutoff=cutoff, runs=runs, measurements=measurements, samples=samples)

    return store.write(body)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def describe(result: PruneResult, backend: str) -> str:
    """One line for a human: what was dropped (or that nothing was), and what was kept."""
    when = result.cutoff.strftime("%Y-%m-%d %H:%M UTC")
    if not result.measurements:
        return f"nothing to prune: no run started before {when} still has raw samples"
    line = (f"dropped the raw samples of {result.measurements:,} measurement(s) in {result.runs:,} run(s) started "
            f"before {when}: {result.samples:,} samples ({_size(result.bytes)}); summaries kept")
    if backend == "sqlite":
        line += " (the SQLite file reuses the space; `sqlite3 FILE VACUUM` shrinks it)"
    return line
