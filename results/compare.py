"""Compare two runs case by case: both medians, the speedup with a bootstrap interval, a verdict, the
geometric mean, and whether the two environments were comparable at all.

The core (`compare_cases`, `verdict_for`, `environment_diff`, `geometric_mean`) is pure: plain data in,
frozen dataclasses out, no database. `compare_runs` is the thin shell that loads two runs from a store
(through `results.queries`) and calls it; `harness compare` and the dashboard both use it.

Conventions:
- speedup = median(A) / median(B) for latency, so above 1 means B (the contender) is faster.
- A case is `faster` or `slower` only when the bootstrap interval of the speedup excludes 1 *and* the
  speedup is at least `min_effect` away from 1 (asv's "significant and beyond the factor"); otherwise it
  is `noise`. A pruned measurement (summaries kept, raw samples dropped) has no interval: `no samples`.
- `skipped` (the kernel cannot run there) counts as absent, not as a failure; `failed` and `timeout` are
  failures: ok -> failure is `newly failing`, failure -> ok is `fixed`.
- Two runs are comparable on a device when the stable fields of its fingerprint (hardware, OS, kernel,
  library versions; `devices.probe.STABLE_FIELDS`) agree, and so does its emulation: a device that ran under
  an emulator (`emulated: true`) is comparable only with the same emulation of the same CPU on the same
  host CPU, never with a real device. Otherwise `compare_runs` refuses with
  `IncomparableRuns`, which names the fields, unless `force=True`; forced results carry the differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from devices.probe import STABLE_FIELDS as _PROBE_STABLE_FIELDS
from devices.probe import emulation_key
from workloads.errors import HarnessError
from workloads.spec import CASE_COLUMNS, case_label
from workloads.stats import bootstrap_ratio_ci

from .validate import BadValue, sample_problem, value_problem

FASTER = "faster"
SLOWER = "slower"
NOISE = "noise"
NO_SAMPLES = "no samples"
MISSING_IN_A = "missing in A"
MISSING_IN_B = "missing in B"
NEWLY_FAILING = "newly failing"
FIXED = "fixed"
STILL_FAILING = "still failing"
SKIPPED = "skipped"
VERDICTS = (SLOWER, FASTER, NOISE, NO_SAMPLES, NEWLY_FAILING, FIXED, STILL_FAILING, MISSING_IN_A, MISSING_IN_B,
            SKIPPED)
FAILURES = ("failed", "timeout")

# The fingerprint fields that decide comparability are defined once, by the probe that records them.
STABLE_FIELDS: tuple[str, ...] = tuple(_PROBE_STABLE_FIELDS)
# Volatile facts worth showing next to a comparison (they explain a difference) but not refusing over.
INFO_FIELDS = ("governor", "default_threads", "hostname")
RUN_FIELDS = ("harness_version", "git_revision", "matrix")


@dataclass(frozen=True)
class Side:
    """One side (run A or B) of a case: what was stored, or status None when the case is absent."""

    status: str | None
    median_ms: float | None = None
    n: int | None = None
    error: str | None = None
    measurement_id: int | None = None
    # Share of the device's CPUs other processes used while it was timed; None where not measured.
    cpu_other: float | None = None
    contended: bool = False


@dataclass(frozen=True)
class CaseComparison:
    """One (device, case) compared: speedup = median A / median B (> 1: B is faster)."""

    device: str
    case_hash: str
    case: Mapping[str, Any]
    label: str
    a: Side
    b: Side
    speedup: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str

    @property
    def contended(self) -> bool:
        """Either side was measured while other processes used the device's CPUs: its verdict is suspect."""
        return self.a.contended or self.b.contended


@dataclass(frozen=True)
class FieldDiff:
    """An environment field that differs between the runs. scope: `stable` (decides comparability),
    `info` (volatile device fact) or `run` (harness version, revision, matrix)."""

    device: str | None
    field: str
    a: Any
    b: Any
    scope: str


@dataclass(frozen=True)
class Comparison:
    """The result of comparing run A (baseline) with run B (contender)."""

    run_a: str
    run_b: str
    cases: tuple[CaseComparison, ...]
    geomean: float | None
    env_diffs: tuple[FieldDiff, ...]
    min_effect: float
    confidence: float
    counts: Mapping[str, int] = field(default_factory=dict)
    # Devices that ran under an emulator in either run: their timings are not a real CPU's.
    emulated_devices: tuple[str, ...] = ()
    # Stored values left out because they cannot be measurements (NaN, infinite, <= 0 latencies).
    bad_values: tuple[BadValue, ...] = ()

    @property
    def comparable(self) -> bool:
        """False when a stable fingerprint field differs on some device."""
        return not any(d.scope == "stable" for d in self.env_diffs)

    @property
    def stable_diffs(self) -> tuple[FieldDiff, ...]:
        return tuple(d for d in self.env_diffs if d.scope == "stable")


class IncomparableRuns(HarnessError):
    """The runs were measured in different environments; carries the fields that differ."""

    def __init__(self, run_a: str, run_b: str, diffs: Sequence[FieldDiff]) -> None:
        self.run_a, self.run_b, self.diffs = run_a, run_b, tuple(diffs)
        fields = "; ".join(f"{d.device}: {d.field} {d.a!r} -> {d.b!r}" for d in self.diffs)
        super().__init__(f"runs {run_a} and {run_b} are not comparable: {fields}. Compare runs from the same "
                         "environment, or pass --force to compare anyway (the differences are then reported).")


# -- pure core --------------------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _state(side: Side) -> str:
    if side.status is None or side.status == "skipped":
        return "absent"
    if side.status in FAILURES:
        return "fail"
    return "ok"


def verdict_for(a: Side, b: Side, speedup: float | None, ci: tuple[float, float] | None,
                min_effect: float) -> str:
    """The verdict of one case from its two sides and (for two ok sides) its speedup and interval."""
    sa, sb = _state(a), _state(b)
    if sa == "absent" and sb == "absent":
        return SKIPPED
    if sa == "absent":
        return MISSING_IN_A
    if sb == "absent":
        return MISSING_IN_B
    if sa == "ok" and sb == "fail":
        return NEWLY_FAILING
    if sa == "fail" and sb == "ok":
        return FIXED
    if sa == "fail":
        return STILL_FAILING
    if speedup is None:
        return NO_SAMPLES
    if ci is None:
        return NO_SAMPLES
    low, high = ci
    if speedup >= 1.0 + min_effect and low > 1.0:
        return FASTER
    if speedup <= 1.0 / (1.0 + min_effect) and high < 1.0:
        return SLOWER
    return NOISE


def geometric_mean(speedups: Iterable[float | None]) -> float | None:
    """exp(mean(log speedup)) over the finite positive values; None when there are none."""
    logs = [math.log(s) for s in speedups if s is not None and math.isfinite(s) and s > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def compare_cases(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]],
                  samples: Mapping[int, Sequence[float]], *, min_effect: float = 0.05, confidence: float = 0.95,
                  n_boot: int = 1000, seed: int = 0, bad: list[BadValue] | None = None) -> list[CaseComparison]:
    """Pair the rows of two runs by (device, case_hash) and compare each pair.

    A row is a mapping with `device`, `case_hash`, the case keys, `status`, `error`, `measurement_id` and
    `latency_ms_p50` (used only when raw samples were pruned). `samples` maps measurement ids to raw
    samples (ms). Medians come from the raw samples where they exist. Raw samples or a median that cannot
    be a latency (NaN, infinite, <= 0) are left out (the case gets `no samples`) and listed in `bad`.
    """
    if not 0.0 <= min_effect < 1.0:
        raise ValueError(f"min_effect is a fraction (0.05 means 5%); got {min_effect}")
    samples = _usable_samples(rows_a, rows_b, samples, bad)
    index_a = {(r["device"], r["case_hash"]): r for r in rows_a}
    index_b = {(r["device"], r["case_hash"]): r for r in rows_b}
    keys = sorted(set(index_a) | set(index_b), key=lambda k: (k[0], _sort_key(index_a.get(k) or index_b[k]), k[1]))
    out = []
    for key in keys:
        ra, rb = index_a.get(key), index_b.get(key)
        sa, sb = _side(ra, samples), _side(rb, samples)
        speedup: float | None = None
        ci: tuple[float, float] | None = None
        if _state(sa) == "ok" and _state(sb) == "ok":
            xa = samples.get(sa.measurement_id) if sa.measurement_id is not None else None
            xb = samples.get(sb.measurement_id) if sb.measurement_id is not None else None
            if xa and xb:
                speedup, low, high = bootstrap_ratio_ci(xa, xb, n_boot=n_boot, confidence=confidence, seed=seed)
                ci = (low, high)
            elif sa.median_ms and sb.median_ms:
                speedup = sa.median_ms / sb.median_ms
        row = ra or rb
        assert row is not None
        case = {k: row.get(k) for k in CASE_COLUMNS if row.get(k) is not None and not _isnan(row.get(k))}
        out.append(CaseComparison(
            device=key[0], case_hash=key[1], case=case,
            # The stored label names a plugin variant's knobs too (they are no columns).
            label=row["case"] if isinstance(row.get("case"), str) and row.get("case") else
            case_label(case) if "variant" in case else key[1],
            a=sa, b=sb, speedup=speedup, ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None,
            verdict=verdict_for(sa, sb, speedup, ci, min_effect)))
    return out


def _usable_samples(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]],
                    samples: Mapping[int, Sequence[float]], bad: list[BadValue] | None) -> dict[int, Sequence[float]]:
    """`samples` without the sets that cannot be latencies; those (and bad stored medians) go to `bad`."""
    out = dict(samples)
    for rows, side in ((rows_a, "A"), (rows_b, "B")):
        for r in rows:
            if r.get("status") != "ok":
                continue
            mid = r.get("measurement_id")
            mid = int(mid) if mid is not None and not _isnan(mid) else None
            values = out.get(mid) if mid is not None else None
            problem, column = (sample_problem(values), "samples_ms") if values else (None, "")
            if not values:
                p50 = r.get("latency_ms_p50")
                problem, column = value_problem("latency_ms_p50", p50), "latency_ms_p50"
                if problem is None and (p50 is None or _isnan(p50)):
                    problem = "is empty in an ok row (stored as NaN?)"
            if problem:
                if mid is not None:
                    out.pop(mid, None)
                if bad is not None:
                    label = case_label(r) if r.get("variant") else str(r.get("case_hash"))
                    bad.append(BadValue(str(r.get("run_id", side)), str(r.get("device")), label, column, problem))
    return out


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _sort_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (str(row.get("variant")), str(row.get("precision")), int(row.get("seq_len") or 0))


def _side(row: Mapping[str, Any] | None, samples: Mapping[int, Sequence[float]]) -> Side:
    if row is None:
        return Side(status=None)
    mid = row.get("measurement_id")
    mid = int(mid) if mid is not None and not _isnan(mid) else None
    values = samples.get(mid) if mid is not None else None
    median = _median(values) if values else row.get("latency_ms_p50")
    median = None if median is None or value_problem("latency_ms_p50", median) else float(median)
    error = row.get("error")
    other = row.get("cpu_other")
    busy = row.get("contended")
    return Side(status=row.get("status"), median_ms=median if row.get("status") == "ok" else None,
                n=len(values) if values else None, error=None if error is None or _isnan(error) else str(error),
                measurement_id=mid, cpu_other=None if other is None or _isnan(other) else float(other),
                contended=bool(busy) if busy is not None and not _isnan(busy) else False)


def environment_diff(fp_a: Mapping[str, Mapping[str, Any] | None], fp_b: Mapping[str, Mapping[str, Any] | None],
                     run_a: Mapping[str, Any] | None = None, run_b: Mapping[str, Any] | None = None) -> list[FieldDiff]:
    """Fields that differ: per device present in both runs, its fingerprint's stable fields (scope
    `stable`) and volatile facts (`info`); then run-level fields (`run`). A device whose fingerprint was
    not recorded on one side gets an `info` entry: comparability cannot be checked there."""
    diffs: list[FieldDiff] = []
    for device in sorted(set(fp_a) & set(fp_b)):
        a, b = fp_a[device], fp_b[device]
        if not a or not b:
            diffs.append(FieldDiff(device, "fingerprint", "recorded" if a else None, "recorded" if b else None,
                                   "info"))
            continue
        for scope, fields in (("stable", STABLE_FIELDS), ("info", INFO_FIELDS)):
            for name in fields:
                if _norm(a.get(name)) != _norm(b.get(name)):
                    diffs.append(FieldDiff(device, name, a.get(name), b.get(name), scope))
        ea, eb = emulation_key(a), emulation_key(b)
        if ea != eb:
            diffs.append(FieldDiff(device, "emulated", describe_emulation(ea), describe_emulation(eb), "stable"))
    if run_a is not None and run_b is not None:
        for name in RUN_FIELDS:
            if run_a.get(name) != run_b.get(name):
                diffs.append(FieldDiff(None, name, run_a.get(name), run_b.get(name), "run"))
    return diffs


def describe_emulation(key: Mapping[str, Any] | None) -> str:
    """'real hardware', or 'emulated: qemu-aarch64-static -cpu cortex-a72 on AMD EPYC'."""
    if key is None:
        return "real hardware"
    cpu = f" -cpu {key['cpu']}" if key.get("cpu") else ""
    return f"emulated: {key.get('emulator') or 'an emulator'}{cpu} on {key.get('host_cpu') or 'an unknown host CPU'}"


def emulated_in(*fingerprints: Mapping[str, Mapping[str, Any] | None]) -> tuple[str, ...]:
    """The devices whose fingerprint says emulated in any of the given {device: fingerprint} maps."""
    return tuple(sorted({d for fps in fingerprints for d, fp in fps.items() if emulation_key(fp) is not None}))


def _norm(value: Any) -> Any:
    # ISA lists are sets in meaning: order must not make two identical CPUs differ.
    if isinstance(value, list):
        return sorted(map(str, value))
    return value


def status_counts(cases: Iterable[CaseComparison]) -> dict[str, int]:
    """How many cases got each verdict, in VERDICTS order, zero counts left out."""
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    return {v: counts[v] for v in VERDICTS if v in counts}


def comparison_rows(cases: Iterable[CaseComparison]) -> list[dict[str, Any]]:
    """One flat dict per case (for tables, CSV and JSON): device, case label and keys, both medians and
    statuses, speedup with its interval, verdict, the error text of a failing side, the case hash."""
    rows = []
    for c in cases:
        rows.append({
            "device": c.device, "case": c.label, "variant": c.case.get("variant"),
            "precision": c.case.get("precision"), "seq_len": c.case.get("seq_len"),
            "A median ms": c.a.median_ms, "B median ms": c.b.median_ms, "speedup": c.speedup,
            "CI low": c.ci_low, "CI high": c.ci_high, "verdict": c.verdict,
            "A status": c.a.status or "absent", "B status": c.b.status or "absent", "A n": c.a.n, "B n": c.b.n,
            "error": c.b.error or c.a.error, "case_hash": c.case_hash,
            "A cpu other": c.a.cpu_other, "B cpu other": c.b.cpu_other, "contended": c.contended,
        })
    return rows


# -- shell ------------------------------------------------------------------------------------------------
def compare_runs(store: Any, run_a: str, run_b: str, *, devices: Sequence[str] | None = None,
                 min_effect: float = 0.05, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0,
                 force: bool = False) -> Comparison:
    """Compare run A (baseline) with run B (contender) from a store (or engine).

    Run references may be ids, unique id prefixes, `latest` or `previous`. Raises `IncomparableRuns`
    when a device's stable fingerprint fields differ, unless `force`; the returned `Comparison` always
    lists every differing field (`env_diffs`) so a forced comparison can warn loudly.
    """
    from . import queries

    run_a = queries.resolve_run(store, run_a)
    run_b = queries.resolve_run(store, run_b)
    info_a, info_b = queries.run_info(store, run_a), queries.run_info(store, run_b)
    rows_a = queries.measurements(store, run_a, list(devices) if devices else None)
    rows_b = queries.measurements(store, run_b, list(devices) if devices else None)
    rd = queries.run_devices(store, [run_a, run_b])
    fps = {run: {d: f for d, f in zip(g["device"], g["fingerprint"])} for run, g in rd.groupby("run_id")}
    fp_a, fp_b = fps.get(run_a, {}), fps.get(run_b, {})
    if devices:
        fp_a = {d: f for d, f in fp_a.items() if d in devices}
        fp_b = {d: f for d, f in fp_b.items() if d in devices}
    diffs = environment_diff(fp_a, fp_b, info_a, info_b)
    stable = [d for d in diffs if d.scope == "stable"]
    if stable and not force:
        raise IncomparableRuns(run_a, run_b, stable)
    ok_ids = [int(i) for df in (rows_a, rows_b) for i in df.loc[df["status"] == "ok", "measurement_id"]]
    raw = queries.samples(store, ok_ids)
    records_a = rows_a.to_dict(orient="records")
    records_b = rows_b.to_dict(orient="records")
    bad: list[BadValue] = []
    cases = compare_cases(records_a, records_b, raw, min_effect=min_effect, confidence=confidence,
                          n_boot=n_boot, seed=seed, bad=bad)
    return Comparison(run_a=run_a, run_b=run_b, cases=tuple(cases),
                      geomean=geometric_mean(c.speedup for c in cases), env_diffs=tuple(diffs),
                      min_effect=min_effect, confidence=confidence, counts=status_counts(cases),
                      emulated_devices=emulated_in(fp_a, fp_b), bad_values=tuple(bad))
