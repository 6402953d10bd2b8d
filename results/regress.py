"""Regression findings over the stored history: series from the database in, findings out.

A series is (device, case, metric) over runs in time order; runs under an emulator form a series of their
own, so an emulated night is never held against real ones, nor the other way round. Latency series carry
each run's raw samples; energy and accuracy carry one value per run. The statistics are `results.detect` (a
pure core); this module only loads series, calls it, and says what differed between the runs on both sides
of a change (harness revision, library versions, fingerprint fields, the revision of the user's plugin
whose kernel the series measures), which is the likely cause.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from sqlalchemy import select

from devices.probe import STABLE_FIELDS, emulation_key

from workloads.spec import case_label

from . import detect
from .models import Case, Device, Measurement, Run, RunDevice, SampleSet
from .store import Store, unpack_samples
from .validate import BadValue, sample_problem, value_problem

# metric -> (column, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "latency_ms": ("latency_ms_p50", True),
    "energy_mj_per_inf": ("energy_mj_per_inf", True),
    "cos_sim": ("cos_sim", False),
}
# With fewer runs than the detector's history needs, the newest run is compared with the one before it:
# Mann-Whitney on raw samples (asv's test) at this level, and a larger minimum effect, because one run
# against one run cannot separate a change from night-to-night drift.
SHORT_HISTORY_ALPHA = 0.002
SHORT_HISTORY_MIN_EFFECT = 0.10


@dataclass
class SeriesPoint:
    run_id: str
    started_at: datetime
    samples: list[float]
    env_key: str | None
    throttled: bool
    fingerprint: dict[str, Any] | None
    git_revision: str | None
    harness_version: str | None
    contended: bool = False  # measured while other processes used the device's CPUs


@dataclass
class Series:
    device: str
    case_hash: str
    case: dict[str, Any]
    metric: str
    points: list[SeriesPoint] = field(default_factory=list)
    emulated: bool = False  # every point ran under an emulator (emulated timings, never mixed with real ones)

    def runs(self) -> list[detect.Run]:
        return [detect.Run(p.samples, run_id=p.run_id, started_at=p.started_at, key=p.env_key,
                           throttled=p.throttled, contended=p.contended) for p in self.points]

    def without_contended(self, keep_newest: bool = False) -> "Series":
        """The series without runs measured under contention (they are no baseline); `keep_newest`: the newest
        run stays, to be judged (and called unstable if it was contended)."""
        last = len(self.points) - 1
        kept = [p for i, p in enumerate(self.points) if not p.contended or (keep_newest and i == last)]
        return Series(self.device, self.case_hash, self.case, self.metric, kept, emulated=self.emulated)


@dataclass
class Finding:
    """One change in one series, as `harness regress` reports it (SPEC.md's JSON shape plus context)."""

    device: str
    case: dict[str, Any]
    metric: str
    run_id: str
    started_at: str
    before: float
    after: float
    before_interval: tuple[float, float]
    after_interval: tuple[float, float]
    change_pct: float
    direction: str
    statistic: float
    statistic_name: str
    p_value: float
    runs_before: list[str]
    runs_after: list[str]
    differs: dict[str, tuple[Any, Any]]
    cause: str | None = None
    case_hash: str = ""
    # The device ran under an emulator in the run after the change (its history holds only emulated runs).
    emulated: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["differs"] = {k: list(v) for k, v in self.differs.items()}
        return d


def load_series(store: Store, *, devices: Sequence[str] | None = None, metric: str = "latency_ms",
                until_run: Mapping[str, str] | None = None, skipped: list[BadValue] | None = None) -> list[Series]:
    """Every (device, case) series of `metric` from ok measurements, runs in time order.

    A stored value that cannot be a measurement (NaN, infinite, a latency of zero or less, a cosine
    outside [-1, 1]: rows written before import validated them) is left out of its series and appended
    to `skipped`, so one bad row cannot stop the detection of every other series."""
    column, _ = METRICS[metric]
    with store.Session() as s:
        # Fingerprints are parsed once per (run, device), not once per measurement row.
        fingerprints = {(run_id, device): fp for run_id, device, fp in s.execute(
            select(RunDevice.run_id, Device.name, RunDevice.fingerprint).join(Device, Device.id == RunDevice.device_id))}
        query = (select(Device.name, Case.hash, Case.params, Run.id, Run.started_at, Run.git_revision,
                        Run.harness_version, RunDevice.env_key, Measurement.throttled, Measurement.contended,
                        getattr(Measurement, column), SampleSet.values)
                 .join(Device, Device.id == Measurement.device_id)
                 .join(Case, Case.id == Measurement.case_id)
                 .join(Run, Run.id == Measurement.run_id)
                 .outerjoin(RunDevice, (RunDevice.run_id == Measurement.run_id)
                            & (RunDevice.device_id == Measurement.device_id))
                 .outerjoin(SampleSet, SampleSet.measurement_id == Measurement.id)
                 .where(Measurement.status == "ok")
                 .order_by(Device.name, Case.hash, Run.started_at, Run.id))
        if metric != "latency_ms":  # empty means not measured; an ok row without a latency is a bad row
            query = query.where(getattr(Measurement, column).is_not(None))
        if devices:
            query = query.where(Device.name.in_(list(devices)))
        out: dict[tuple[str, str, bool], Series] = {}
        for (device, chash, params, run_id, started, rev, version, env_key, throttled, contended, value,
             blob) in s.execute(query):
            raw = unpack_samples(blob) if (metric == "latency_ms" and blob) else None
            bad_column, problem = column, value_problem(column, value)
            if value is None:
                problem = "is empty in an ok row (stored as NaN?)"
            elif not problem and raw and not (math.isfinite(sum(raw)) and min(raw) > 0):  # cheap first
                bad_column, problem = "samples_ms", sample_problem(raw)
            if problem:
                if skipped is not None:
                    label = case_label(params) if isinstance(params, dict) and "variant" in params else chash
                    skipped.append(BadValue(run_id, device, label, bad_column, problem))
                continue
            samples = raw if raw else [float(value)]
            fp = fingerprints.get((run_id, device))
            emulated = emulation_key(fp) is not None
            series = out.setdefault((device, chash, emulated), Series(device, chash, dict(params), metric,
                                                                      emulated=emulated))
            series.points.append(SeriesPoint(run_id, started, samples, env_key, bool(throttled), fp, rev, version,
                                             bool(contended)))
    return list(out.values())


def plugin_version(record: Mapping[str, Any] | None) -> str | None:
    """A plugin record's version in words: 'revision 1a2b3c4d5e6f' (+ ' with uncommitted changes, sha256 ...'),
    or 'sha256 0123456789ab' outside git."""
    if not record:
        return None
    sha = str(record.get("sha256") or "")[:12]
    rev = record.get("revision")
    if isinstance(rev, str) and rev:
        return f"revision {rev[:12]}" + (f" with uncommitted changes (sha256 {sha})" if record.get("dirty") else "")
    return f"sha256 {sha}"


def plugin_of(fingerprint: Mapping[str, Any] | None, case: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record (in a run's fingerprint) of the plugin whose kernel runs this case, or None."""
    key = f"{case.get('variant')}/{case.get('precision')}/{case.get('backend')}/{case.get('scope', 'core')}"
    for rec in (fingerprint or {}).get("plugins") or []:
        if isinstance(rec, dict) and key in (rec.get("kernels") or []):
            return rec
    return None


def plugin_change(a: SeriesPoint, b: SeriesPoint, case: Mapping[str, Any]) -> tuple[str, tuple[Any, Any]] | None:
    """('plugin NAME', (old version, new version)) when the plugin running this case changed between two runs."""
    ra, rb = plugin_of(a.fingerprint, case), plugin_of(b.fingerprint, case)
    if not ra and not rb:
        return None
    if ra and rb and ra.get("sha256") == rb.get("sha256"):
        return None
    name = (rb or ra or {}).get("name") or "?"
    return f"plugin {name}", (plugin_version(ra), plugin_version(rb))


def what_differs(a: SeriesPoint, b: SeriesPoint, case: Mapping[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Fields that changed between two runs: harness revision and version, stable fingerprint fields, and
    (given the series' `case`) the version of the plugin whose kernel runs it."""
    diff: dict[str, tuple[Any, Any]] = {}
    changed = plugin_change(a, b, case) if case is not None else None
    if changed:
        diff[changed[0]] = changed[1]
    if a.git_revision != b.git_revision:
        diff["git_revision"] = (a.git_revision, b.git_revision)
    if a.harness_version != b.harness_version:
        diff["harness_version"] = (a.harness_version, b.harness_version)
    fa, fb = a.fingerprint or {}, b.fingerprint or {}
    for key in STABLE_FIELDS:
        if fa.get(key) != fb.get(key):
            diff[key] = (fa.get(key), fb.get(key))
    ea, eb = emulation_key(fa), emulation_key(fb)
    if ea != eb:  # two emulations (another host CPU, say): a real and an emulated run are never compared
        diff["emulation"] = (ea, eb)
    return diff


def _cause(cause: str | None, differs: Mapping[str, tuple[Any, Any]]) -> str | None:
    """The likely cause: a plugin's new revision comes first (it is the code the series measures)."""
    plugins = [f"{k} changed ({a} -> {b})" for k, (a, b) in differs.items() if k.startswith("plugin ")]
    return "; ".join(plugins + ([cause] if cause else [])) or None


def _iso(t: Any) -> str:
    return t.isoformat() if isinstance(t, datetime) else str(t)


def _finding(series: Series, cp: Any, lower_is_better: bool) -> Finding:
    pts = series.points
    before_pt = pts[cp.before_runs[-1]] if cp.before_runs else pts[max(cp.index - 1, 0)]
    after_pt = pts[cp.index]
    differs = what_differs(before_pt, after_pt, series.case)
    return Finding(
        device=series.device, case=series.case, case_hash=series.case_hash, metric=series.metric,
        run_id=after_pt.run_id, started_at=_iso(after_pt.started_at), before=cp.before.median,
        after=cp.after.median, before_interval=(cp.before.low, cp.before.high),
        after_interval=(cp.after.low, cp.after.high), change_pct=cp.change_pct, direction=cp.direction,
        statistic=cp.statistic, statistic_name=cp.statistic_name, p_value=cp.p_value,
        runs_before=[pts[i].run_id for i in cp.before_runs], runs_after=[pts[i].run_id for i in cp.after_runs],
        differs=differs, cause=_cause(getattr(cp, "cause", None), differs),
        emulated=series.emulated)


def split_processes(samples: Sequence[float], sizes: Sequence[int] | None) -> list[list[float]] | None:
    """The samples of each worker process a case was measured in (`details.processes` gives the counts, in
    the order taken), or None when the run measured it in one process or the counts do not fit."""
    if not sizes or len(sizes) < 2 or any(not isinstance(n, int) or n < 3 for n in sizes) \
            or sum(sizes) != len(samples):
        return None
    out, at = [], 0
    for n in sizes:
        out.append(list(samples[at:at + n]))
        at += n
    return out


def gap_and_spread(lower: Sequence[float], higher: Sequence[float]) -> tuple[float, float]:
    """Process (or round) medians of two sides: how far the lowest of `higher` lies above the highest of
    `lower` (negative when the sides overlap), and the widest spread between medians of the same side
    (both as fractions)."""
    gap = min(higher) / max(lower) - 1.0
    spread = max(max(lower) / min(lower), max(higher) / min(higher)) - 1.0
    return gap, spread


def short_history_change(before: Sequence[float], after: Sequence[float], *, lower_is_better: bool = True,
                         alpha: float = SHORT_HISTORY_ALPHA, min_effect: float = SHORT_HISTORY_MIN_EFFECT,
                         before_sizes: Sequence[int] | None = None, after_sizes: Sequence[int] | None = None
                         ) -> tuple[str, float, float, float] | None:
    """Newest run against the one before it, on raw samples: (direction, change_pct, U, p) or None.

    When both runs measured the case in several worker processes (`*_sizes`: samples per process), the
    change must also clear the spread between processes: every process of one run beyond every process
    of the other, by more than processes of the same run differ among themselves. One run in one process
    cannot show that spread, and is judged on its samples alone (a larger minimum effect is all it gets)."""
    from scipy.stats import mannwhitneyu

    a, b = np.asarray(before, float), np.asarray(after, float)
    if a.size < 3 or b.size < 3:
        return None
    change = float(np.median(b) / np.median(a) - 1.0)
    if abs(change) < min_effect:
        return None
    u, p = mannwhitneyu(a, b, alternative="two-sided")
    if p >= alpha:
        return None
    split_a, split_b = split_processes(before, before_sizes), split_processes(after, after_sizes)
    if split_a and split_b:
        med_a = [float(np.median(x)) for x in split_a]
        med_b = [float(np.median(x)) for x in split_b]
        gap, spread = gap_and_spread(med_a, med_b) if change > 0 else gap_and_spread(med_b, med_a)
        if gap <= max(min_effect, spread):
            return None
    worse = change > 0 if lower_is_better else change < 0
    return ("regression" if worse else "improvement"), change * 100.0, float(u), float(p)


# Re-measurement (`regress --confirm`) judges whole worker processes: one process's median can land 20-40%
# from the next one's on the same code (memory placement, the core it ran on), so a handful of processes per
# side is the replication, never the thousands of samples inside them.
CONFIRM_MIN_ROUNDS = 3


@dataclass
class RoundsChange:
    """Old code against new code, each measured in several worker processes (rounds)."""
    change_pct: float  # median of the new rounds' medians against the old rounds'
    gap_pct: float  # the fastest new round against the slowest old round (negative: the sides overlap)
    spread_pct: float  # the widest spread between rounds of the same code, on either side
    p_value: float  # Mann-Whitney on the pooled raw samples (reported; never the verdict on its own)
    old_medians: list[float]
    new_medians: list[float]
    reproduced: bool

    def summary(self) -> str:
        return (f"{self.change_pct:+.1f}% (rounds' medians old {_ms(self.old_medians)}, new {_ms(self.new_medians)};"
                f" gap {self.gap_pct:+.1f}% against a spread of {self.spread_pct:.1f}% between rounds of the same "
                f"code), p = {self.p_value:.2g}")


def _ms(medians: Sequence[float]) -> str:
    return "/".join(f"{m:.4g}" for m in medians) + " ms"


def rounds_change(old_rounds: Sequence[Sequence[float]], new_rounds: Sequence[Sequence[float]], *,
                  min_effect: float = 0.05, alpha: float = SHORT_HISTORY_ALPHA) -> RoundsChange:
    """Is the new code slower, judged round by round? Reproduced only when every round of the new code is
    slower than every round of the old one, by more than `min_effect` and by more than rounds of the same
    code differ among themselves, and the pooled samples agree (Mann-Whitney, p < alpha). With 4 rounds per
    side, code that did not change passes by chance about 1 time in 1000 (2 in 1000 with this host's
    measured spread of process medians); with 3, about 1 in 100."""
    from scipy.stats import mannwhitneyu

    old_med = [float(np.median(r)) for r in old_rounds]
    new_med = [float(np.median(r)) for r in new_rounds]
    if len(old_med) < 1 or len(new_med) < 1 or min(old_med + new_med) <= 0:
        raise ValueError("each side needs at least one round of positive samples")
    pooled_old = np.concatenate([np.asarray(r, float) for r in old_rounds])
    pooled_new = np.concatenate([np.asarray(r, float) for r in new_rounds])
    p = float(mannwhitneyu(pooled_old, pooled_new, alternative="less").pvalue)
    change = float(np.median(new_med) / np.median(old_med) - 1.0)
    gap, spread = gap_and_spread(old_med, new_med)
    reproduced = (len(old_med) >= CONFIRM_MIN_ROUNDS and len(new_med) >= CONFIRM_MIN_ROUNDS
                  and gap > max(min_effect, spread) and p < alpha)
    return RoundsChange(change * 100, gap * 100, spread * 100, p, old_med, new_med, reproduced)


def history(store: Store, *, devices: Sequence[str] | None = None, metrics: Iterable[str] = ("latency_ms",),
            min_effect: float = 0.05, alpha: float = 0.001, skipped: list[BadValue] | None = None) -> list[Finding]:
    """Every change point in the stored history of every series (bad stored values go to `skipped`)."""
    findings: list[Finding] = []
    for metric in metrics:
        _, lower = METRICS[metric]
        for series in load_series(store, devices=devices, metric=metric, skipped=skipped):
            series = series.without_contended()  # a night measured under contention is no level of the series
            if not series.points:
                continue
            for cp in detect.detect_change_points(series.runs(), lower_is_better=lower, min_effect=min_effect,
                                                  alpha=alpha):
                findings.append(_finding(series, cp, lower))
    return findings


def latest(store: Store, *, devices: Sequence[str] | None = None, metrics: Iterable[str] = ("latency_ms",),
           min_effect: float = 0.05, alpha: float = 0.001, skipped: list[BadValue] | None = None) -> list[Finding]:
    """Is the newest run of each device a regression (or improvement) against its stable history? (Bad
    stored values go to `skipped`.)"""
    findings: list[Finding] = []
    for metric in metrics:
        _, lower = METRICS[metric]
        all_series = load_series(store, devices=devices, metric=metric, skipped=skipped)
        newest = _newest_run_per_device(all_series)
        for series in all_series:
            if not series.points or series.points[-1].run_id != newest.get(series.device):
                continue  # this case did not run in the device's newest run
            series = series.without_contended(keep_newest=True)
            pts = series.points
            verdict = detect.latest_regression(series.runs(), lower_is_better=lower, min_effect=min_effect,
                                               alpha=alpha)
            if verdict.status in ("regression", "improvement") and verdict.before is not None:
                differs = what_differs(pts[-2], pts[-1], series.case)
                findings.append(Finding(
                    device=series.device, case=series.case, case_hash=series.case_hash, metric=metric,
                    run_id=pts[-1].run_id, started_at=_iso(pts[-1].started_at), before=verdict.before.median,
                    after=verdict.after.median, before_interval=(verdict.before.low, verdict.before.high),
                    after_interval=(verdict.after.low, verdict.after.high), change_pct=verdict.change_pct,
                    direction=verdict.status, statistic=verdict.statistic, statistic_name=verdict.statistic_name,
                    p_value=verdict.p_value, runs_before=[pts[i].run_id for i in verdict.history_runs],
                    runs_after=[pts[-1].run_id], differs=differs, cause=_cause(verdict.cause, differs),
                    emulated=series.emulated))
            elif verdict.status == "insufficient_history" and len(pts) >= 2 and not pts[-1].contended:
                prev, new = pts[-2], pts[-1]
                if prev.env_key != new.env_key:
                    continue  # not comparable; compare shows why
                sizes = _process_sizes(store, series, (prev.run_id, new.run_id)) if metric == "latency_ms" else {}
                found = short_history_change(prev.samples, new.samples, lower_is_better=lower,
                                             before_sizes=sizes.get(prev.run_id), after_sizes=sizes.get(new.run_id))
                if found:
                    direction, change_pct, u, p = found
                    by_process = bool(split_processes(prev.samples, sizes.get(prev.run_id))
                                      and split_processes(new.samples, sizes.get(new.run_id)))
                    differs = what_differs(prev, new, series.case)
                    findings.append(Finding(
                        device=series.device, case=series.case, case_hash=series.case_hash, metric=metric,
                        run_id=new.run_id, started_at=_iso(new.started_at), before=float(np.median(prev.samples)),
                        after=float(np.median(new.samples)),
                        before_interval=_interval(prev.samples), after_interval=_interval(new.samples),
                        change_pct=change_pct, direction=direction, statistic=u,
                        statistic_name="mann-whitney U (newest vs previous run; short history; " + (
                            "beyond the spread between worker processes)" if by_process else
                            "one worker process per run: the spread between processes is unknown)"), p_value=p,
                        runs_before=[prev.run_id], runs_after=[new.run_id], differs=differs,
                        cause=_cause(None, differs), emulated=series.emulated))
    return findings


def _process_sizes(store: Store, series: Series, run_ids: Sequence[str]) -> dict[str, list[int] | None]:
    """Samples per worker process (`details.processes`) of a series' measurements in these runs."""
    out: dict[str, list[int] | None] = {}
    with store.Session() as s:
        rows = s.execute(select(Measurement.run_id, Measurement.details)
                         .join(Device, Device.id == Measurement.device_id)
                         .join(Case, Case.id == Measurement.case_id)
                         .where(Device.name == series.device, Case.hash == series.case_hash,
                                Measurement.run_id.in_(list(run_ids))))
        for run_id, details in rows:
            procs = details.get("processes") if isinstance(details, dict) else None
            sizes = [p.get("n") for p in procs if isinstance(p, dict)] if isinstance(procs, list) else None
            out[run_id] = sizes if sizes and all(isinstance(n, int) and not isinstance(n, bool) for n in sizes) \
                else None
    return out


def _interval(samples: Sequence[float]) -> tuple[float, float]:
    level = detect.median_interval(samples)
    return level.low, level.high


def _newest_run_per_device(all_series: list[Series]) -> dict[str, str]:
    newest: dict[str, tuple[datetime, str]] = {}
    for series in all_series:
        last = series.points[-1]
        if series.device not in newest or last.started_at > newest[series.device][0]:
            newest[series.device] = (last.started_at, last.run_id)
    return {d: run for d, (_, run) in newest.items()}
