"""Evaluate ``results.detect`` against Apache Otava on the same synthetic nightly histories.

Run: ``.venv/bin/python benchmarks/regress_eval.py [--series 600] [--seed 6]``. Needs the dev-only
``apache-otava`` package (``pip install --no-deps apache-otava``: its analysis core needs only numpy and
scipy, and its pins would downgrade them). Takes about a minute on two cores.

Each series is 40-120 nights of one case. Every night has 10-40 raw latency samples with a within-run CV of
0.5-4% and a right tail, a night-to-night offset (AR(1)), and now and then a throttled night (all or part of
the run 15-60% slower) or a bimodal night (20-70% of samples in a 10-30% slower mode). A fifth of the series
have no step; the rest have one planted step (5%, 10% or 25% slower, or 10% faster) at a night at least 10
nights from either end. Otava sees what the harness stores per night, the p50; ours sees the raw samples.
Otava runs with its CLI defaults (window 50, p 0.001, magnitude 0) and once more with magnitude 0.05 (the
reference's suggested default), so neither row is a straw man.

A step counts as found when a change point of the right direction lies within 2 nights of the planted one;
every other change point is a false alarm (reported per 100 series, over all series).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results.detect import detect_change_points, latest_regression  # noqa: E402

KINDS: tuple[tuple[str, float], ...] = (
    ("none", 0.0), ("slow5", 0.05), ("slow10", 0.10), ("slow25", 0.25), ("fast10", -0.10),
)
TOLERANCE = 2


@dataclass(frozen=True)
class Synthetic:
    """One generated history and its planted answer."""

    kind: str
    step_at: int | None  # first night after the step
    runs: list[np.ndarray]  # raw samples per night


def make_series(rng: np.random.Generator, change: float) -> tuple[list[np.ndarray], int | None]:
    """One history of nightly raw samples with an optional step of ``change`` (fraction)."""
    nights = int(rng.integers(40, 121))
    base = float(np.exp(rng.uniform(np.log(0.5), np.log(200.0))))
    cv = float(rng.uniform(0.005, 0.04))
    between = cv * float(rng.uniform(0.2, 0.5)) + 0.002
    rho = float(rng.uniform(0.0, 0.5))
    step_at = int(rng.integers(10, nights - 9)) if change else None
    offset = 0.0
    runs: list[np.ndarray] = []
    for night in range(nights):
        offset = rho * offset + np.sqrt(1 - rho**2) * rng.normal(0.0, between)
        level = base * np.exp(offset) * (1.0 + change if step_at is not None and night >= step_at else 1.0)
        n = int(rng.integers(10, 41))
        samples = level * np.exp(rng.normal(0.0, cv, n))
        tail = rng.random(n) < 0.05
        samples[tail] *= 1.0 + rng.exponential(3 * cv, int(tail.sum()))
        event = rng.random()
        if event < 0.015:  # throttled for the whole run
            samples *= rng.uniform(1.15, 1.6)
        elif event < 0.03:  # throttling sets in part way through
            onset = int(rng.integers(0, n))
            samples[onset:] *= rng.uniform(1.2, 1.6)
        elif event < 0.06:  # bimodal night
            slow = rng.random(n) < rng.uniform(0.2, 0.7)
            samples[slow] *= rng.uniform(1.1, 1.3)
        runs.append(samples)
    return runs, step_at


def make_corpus(n_series: int, seed: int) -> list[Synthetic]:
    """``n_series`` histories, an equal share of each kind, from one seed."""
    rng = np.random.default_rng(seed)
    corpus: list[Synthetic] = []
    for i in range(n_series):
        kind, change = KINDS[i % len(KINDS)]
        runs, step_at = make_series(rng, change)
        corpus.append(Synthetic(kind, step_at, runs))
    return corpus


Detector = Callable[[list[np.ndarray]], list[tuple[int, str]]]  # -> (index, "regression"|"improvement")


def ours(runs: list[np.ndarray]) -> list[tuple[int, str]]:
    """This harness's detector on raw samples, defaults."""
    return [(cp.index, cp.direction) for cp in detect_change_points(runs)]


def otava(min_magnitude: float) -> Detector:
    """Otava's compute_change_points on the nightly p50, window 50, p 0.001."""
    from otava.analysis import compute_change_points

    def run(runs: list[np.ndarray]) -> list[tuple[int, str]]:
        p50 = [float(np.median(r)) for r in runs]
        cps, _ = compute_change_points(p50, window_len=50, max_pvalue=0.001, min_magnitude=min_magnitude)
        return [(int(cp.index), "regression" if cp.stats.forward_rel_change() > 0 else "improvement")
                for cp in cps]

    return run


def score(corpus: Sequence[Synthetic], detector: Detector) -> dict[str, float]:
    """Share of each planted kind found, and false alarms per 100 series."""
    found = {kind: 0 for kind, _ in KINDS[1:]}
    total = {kind: 0 for kind, _ in KINDS[1:]}
    false_alarms = 0
    clean_alarms = 0
    for s in corpus:
        cps = detector(s.runs)
        hit = False
        for index, direction in cps:
            wanted = "improvement" if s.kind.startswith("fast") else "regression"
            if s.step_at is not None and not hit and abs(index - s.step_at) <= TOLERANCE and direction == wanted:
                hit = True
            else:
                false_alarms += 1
                clean_alarms += s.step_at is None
        if s.step_at is not None:
            total[s.kind] += 1
            found[s.kind] += hit
    n_clean = sum(s.step_at is None for s in corpus)
    row = {kind: found[kind] / total[kind] for kind in found}
    row["fa_per_100"] = 100.0 * false_alarms / len(corpus)
    row["fa_per_100_clean"] = 100.0 * clean_alarms / max(n_clean, 1)
    return row


def score_nightly(corpus: Sequence[Synthetic]) -> dict[str, float]:
    """``latest_regression`` on the first night after each planted step, and on the last night of clean series.

    Otava has no newest-run mode to compare with; this row shows what the nightly job would say.
    """
    flagged = {kind: 0 for kind, _ in KINDS[1:]}
    total = {kind: 0 for kind, _ in KINDS[1:]}
    clean = alarms = unstable = 0
    for s in corpus:
        if s.step_at is None:
            verdict = latest_regression(s.runs)
            clean += 1
            alarms += verdict.status in ("regression", "improvement")
            unstable += verdict.status == "unstable"
        else:
            verdict = latest_regression(s.runs[:s.step_at + 1])
            wanted = "improvement" if s.kind.startswith("fast") else "regression"
            total[s.kind] += 1
            flagged[s.kind] += verdict.status == wanted
    row = {kind: flagged[kind] / total[kind] for kind in flagged}
    row["fa_per_100_clean"] = 100.0 * alarms / max(clean, 1)
    row["unstable_per_100_clean"] = 100.0 * unstable / max(clean, 1)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    """Print one row per detector."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=600)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args(argv)
    corpus = make_corpus(args.series, args.seed)
    detectors: list[tuple[str, Detector]] = [("attn-harness", ours)]
    try:
        detectors += [("otava M=0", otava(0.0)), ("otava M=0.05", otava(0.05))]
    except ImportError:
        print("apache-otava is not installed: pip install --no-deps apache-otava", file=sys.stderr)
        return 2
    print(f"{len(corpus)} series, seed {args.seed}, match within {TOLERANCE} nights")
    print(f"{'detector':<14} {'slow5':>6} {'slow10':>6} {'slow25':>6} {'fast10':>6} {'FA/100':>7} "
          f"{'FA/100 clean':>12} {'seconds':>8}")
    for name, detector in detectors:
        t0 = time.perf_counter()
        row = score(corpus, detector)
        print(f"{name:<14} {row['slow5']:>6.1%} {row['slow10']:>6.1%} {row['slow25']:>6.1%} {row['fast10']:>6.1%} "
              f"{row['fa_per_100']:>7.1f} {row['fa_per_100_clean']:>12.1f} {time.perf_counter() - t0:>8.1f}")
    t0 = time.perf_counter()
    row = score_nightly(corpus)
    print("newest-run mode (latest_regression), first night after the step; alarms on the last night of clean series:")
    print(f"{'nightly':<14} {row['slow5']:>6.1%} {row['slow10']:>6.1%} {row['slow25']:>6.1%} {row['fast10']:>6.1%} "
          f"{'':>7} {row['fa_per_100_clean']:>12.1f} {time.perf_counter() - t0:>8.1f}   "
          f"(unstable per 100 clean: {row['unstable_per_100_clean']:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
