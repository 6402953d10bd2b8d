"""Change-point detection over benchmark histories: a pure core over plain sequences.

A *series* is one (device, case, metric) history: a list of runs in time order, each run a plain sequence
of raw samples (latency in ms, say) plus optional metadata. Nothing here touches a database, a file or a
clock; the CLI, the nightly job and the dashboard call these functions and format what they return.

How a change is decided (see ``detect_change_points``):

1. Each run is summarised from its raw samples by its median; analysis runs on log medians, so a change
   is relative (a 5% step is the same size at 1 ms and at 100 ms).
2. The history is split where the comparability key changes (device fingerprint, library versions).
   Inside each block a penalised L1 (Potts) partition, as in asv's ``step_detect``, proposes candidate
   steps at least ``min_runs`` runs apart, so one throttled or bimodal night cannot form a segment.
3. Candidates are then pruned, weakest first, as in Apache Otava's merge step, but with Yuen's trimmed
   Welch t-test on the run medians of the two neighbouring segments: 20% trimming makes the occasional
   spike night on either side irrelevant, where Otava's plain t-test lets it through or splits on it.
   A step survives when p <= ``alpha`` and its size is not demonstrably below ``min_effect`` (the one-sided
   95% upper bound of the change reaches it). Survivors are then nudged, by at most ``min_runs`` runs, to
   where a capped L1 cost is least (a spike night next to a step must not pull it), and pruned again.
4. Where the key changes, the last segment before and the first after are compared the same way; a change
   there is reported with ``cause="environment changed"``.

``latest_regression`` answers the nightly question for the newest run. A single night counts only when
its median is outside the prediction interval of its stable history, at least ``min_effect`` off, and its
raw samples keep the history's shape (a bimodal or half-throttled night reads as "unstable", not as a
regression). It also reports a step that the newest run has just confirmed over the last few nights.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence, Union

import numpy as np
from scipy import stats as _st

Direction = Literal["regression", "improvement"]
LatestStatus = Literal["regression", "improvement", "ok", "unstable", "insufficient_history", "no_data"]

ENVIRONMENT_CHANGED = "environment changed"

# One-sided 95% normal quantile: a step is kept unless we are 95% sure it is smaller than min_effect.
_EFFECT_Z = 1.6448536269514722
# Trimming for Yuen's test: 20% is the textbook choice (Wilcox); it ignores up to a fifth of the nights
# on each side, which covers occasional throttling without giving up much power on clean data.
_TRIM = 0.2
# Floor on the night-to-night scale (log units, i.e. 0.01%): keeps t finite on perfectly flat histories.
_SCALE_FLOOR = 1e-4
# A night whose samples change shape at this level is "unstable", not a regression: missing a real
# regression this way costs a day (it is still reported, and the step is confirmed later); crying wolf
# over a bimodal night costs trust.
_SHAPE_ALPHA = 0.01
_SHAPE_K = 4.0
# Costs closer than this (log units) are a tie, broken by a fixed rule rather than by rounding.
_TIE = 1e-9
# Cap on one run's deviation when placing a step, in noise scales (see _refine).
_CAP = 3.0
# Penalty multiplier for candidate steps in the L1 partition, in units of run-to-run noise times log(n).
# Low on purpose: the partition only proposes; the merge step with its test decides.
_PENALTY = 1.0


@dataclass(frozen=True)
class Run:
    """One run of one case on one device: raw samples plus optional metadata.

    ``key`` is the comparability key (stable fingerprint fields, library versions): runs with equal keys
    are comparable; it is compared with ``==`` and may be any value (a tuple, a dict, a string).
    ``throttled`` marks a run during which the device reported throttling, ``contended`` one measured while
    other processes used the device's CPUs: ``latest_regression`` keeps both out of the baseline it judges
    the newest night against, and will not call such a newest night a regression on its own (history
    detection treats them like any other run; callers drop contended runs first).
    """

    samples: Sequence[float]
    run_id: str | None = None
    started_at: Any = None
    key: Any = None
    throttled: bool = False  # the device reported throttling (telemetry) during this run
    contended: bool = False  # other processes used the device's CPUs during this run


RunLike = Union[Run, Sequence[float]]


@dataclass(frozen=True)
class Level:
    """A level of the metric: a median with a distribution-free confidence interval.

    For a segment of runs it is the median of the run medians (``n`` runs); for a single run it is the
    median of its raw samples (``n`` samples).
    """

    median: float
    low: float
    high: float
    n: int
    confidence: float


@dataclass(frozen=True)
class ChangePoint:
    """A step in the history: the level before, the level after, and the test that decided it."""

    index: int  # first run after the change (index into the series as given)
    run_id: str | None
    started_at: Any
    before: Level
    after: Level
    change_pct: float  # 100 * (after.median / before.median - 1)
    direction: Direction
    statistic: float  # oriented so that positive means the metric went up
    statistic_name: str
    p_value: float
    before_runs: tuple[int, ...]
    after_runs: tuple[int, ...]
    cause: str | None = None  # ENVIRONMENT_CHANGED where the comparability key changes at ``index``
    key_before: Any = None
    key_after: Any = None


@dataclass(frozen=True)
class LatestVerdict:
    """Whether the newest run of a series regressed against its stable history.

    ``status`` is ``regression`` or ``improvement`` (the newest night alone is clearly off, or it just
    confirmed a step over the last nights, then ``change_point`` is set), ``ok``, ``unstable`` (off, but
    its samples do not keep the history's shape: re-measure before trusting it), ``insufficient_history``
    or ``no_data`` (the newest run has no samples).
    """

    status: LatestStatus
    index: int
    run_id: str | None
    started_at: Any
    before: Level | None
    after: Level | None
    change_pct: float | None
    statistic: float | None
    statistic_name: str | None
    p_value: float | None
    history_runs: tuple[int, ...]
    reason: str
    cause: str | None = None
    change_point: ChangePoint | None = None

    @property
    def is_regression(self) -> bool:
        """True when the nightly job should fail for this series."""
        return self.status == "regression"


@dataclass(frozen=True)
class _Test:
    """Outcome of comparing two groups of log run medians."""

    diff: float  # log(after) - log(before), from the medians
    se: float
    statistic: float
    p_value: float
    name: str


def _as_run(item: RunLike) -> Run:
    return item if isinstance(item, Run) else Run(samples=item)


def _log_samples(run: Run, index: int) -> np.ndarray:
    values = np.asarray(run.samples, dtype=float)
    if values.size and (not np.all(np.isfinite(values)) or np.any(values <= 0)):
        raise ValueError(
            f"run {index} ({run.run_id or 'no id'}) has a non-positive or non-finite sample; change-point "
            "detection works on positive metrics (latency, energy): drop or fix that run"
        )
    return np.log(values)


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Level:
    """Median of ``values`` with a distribution-free (binomial order-statistic) confidence interval.

    With fewer than six values no order statistics reach 95%, and the interval is the full range.
    """
    x = np.sort(np.asarray(values, dtype=float))
    n = int(x.size)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    # Largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2; the interval is [x_(k), x_(n-k+1)].
    k = int(_st.binom.ppf((1.0 - confidence) / 2.0, n, 0.5))
    if k >= 1 and _st.binom.cdf(k - 1, n, 0.5) > (1.0 - confidence) / 2.0:
        k -= 1
    k = max(k, 1)
    return Level(median=float(np.median(x)), low=float(x[k - 1]), high=float(x[n - k]), n=n, confidence=confidence)


def _robust_scale(values: np.ndarray) -> float:
    """Normal-consistent MAD."""
    if values.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _noise_scale(y: np.ndarray) -> float:
    """Run-to-run noise from first differences, so steps and lone spikes barely move it."""
    if y.size < 3:
        return _SCALE_FLOOR
    return max(float(1.4826 * np.median(np.abs(np.diff(y))) / math.sqrt(2.0)), _SCALE_FLOOR)


def _l1_partition(y: np.ndarray, penalty: float, min_size: int) -> list[int]:
    """Exact penalised L1 partition (Potts model): the start indices of every segment but the first.

    Minimises ``sum over segments of sum |y - median(segment)| + penalty * (number of steps)`` with every
    segment at least ``min_size`` long, by dynamic programming in O(n^2) segment costs.
    """
    n = int(y.size)
    if n < 2 * min_size:
        return []
    values = [float(v) for v in y]
    cost = np.full((n + 1, n + 1), np.inf)
    for a in range(n):
        # Two heaps hold the lower half (negated) and the upper half, with running sums: the sum of
        # absolute deviations from the median is then sum(upper) - sum(lower), O(log n) per run added.
        low: list[float] = []
        high: list[float] = []
        sum_low = sum_high = 0.0
        for b in range(a + 1, n + 1):
            v = values[b - 1]
            if low and v < -low[0]:
                heapq.heappush(low, -v)
                sum_low += v
            else:
                heapq.heappush(high, v)
                sum_high += v
            if len(low) > len(high):
                moved = -heapq.heappop(low)
                sum_low -= moved
                heapq.heappush(high, moved)
                sum_high += moved
            elif len(high) > len(low) + 1:
                moved = heapq.heappop(high)
                sum_high -= moved
                heapq.heappush(low, -moved)
                sum_low += moved
            # With an odd count the median sits in `high` and cancels out of the deviation sum.
            middle = high[0] if len(high) > len(low) else 0.0
            cost[a, b] = sum_high - middle - sum_low
    best = np.full(n + 1, np.inf)
    best[0] = -penalty
    prev = np.zeros(n + 1, dtype=int)
    for b in range(min_size, n + 1):
        starts = np.arange(0, b - min_size + 1)
        total = best[starts] + cost[starts, b] + penalty
        # L1 costs tie exactly more often than one would think (a flat stretch of optimal boundaries);
        # rounding must not pick among them, or the answer would depend on the unit of the samples.
        i = int(np.flatnonzero(total <= total.min() + _TIE)[0])
        best[b], prev[b] = total[i], starts[i]
    cuts: list[int] = []
    b = n
    while b > 0:
        b = int(prev[b])
        if b > 0:
            cuts.append(b)
    return sorted(cuts)


def _trimmed(x: np.ndarray, trim: float) -> tuple[float, float, int]:
    """Trimmed mean, winsorised variance and effective size (Yuen 1974)."""
    x = np.sort(x)
    n = int(x.size)
    g = int(math.floor(trim * n))
    h = n - 2 * g
    mean = float(np.mean(x[g:n - g]))
    w = x.copy()
    if g:
        w[:g] = x[g]
        w[n - g:] = x[n - g - 1]
    var = float(np.var(w, ddof=1)) if n > 1 else 0.0
    return mean, var, h


def _yuen(before: np.ndarray, after: np.ndarray) -> _Test:
    """Yuen's trimmed Welch t-test on log run medians; the effect is the difference of medians."""
    m1, v1, h1 = _trimmed(before, _TRIM)
    m2, v2, h2 = _trimmed(after, _TRIM)
    n1, n2 = before.size, after.size
    d1 = max((n1 - 1) * v1 / (h1 * (h1 - 1)), _SCALE_FLOOR**2 / h1)
    d2 = max((n2 - 1) * v2 / (h2 * (h2 - 1)), _SCALE_FLOOR**2 / h2)
    se = math.sqrt(d1 + d2)
    df = (d1 + d2) ** 2 / (d1**2 / (h1 - 1) + d2**2 / (h2 - 1))
    t = (m2 - m1) / se
    p = float(2.0 * _st.t.sf(abs(t), df))
    diff = float(np.median(after) - np.median(before))
    return _Test(diff=diff, se=se, statistic=float(t), p_value=p, name="yuen_welch_t")


def _prediction(before: np.ndarray, after: np.ndarray, floor: float = _SCALE_FLOOR) -> _Test:
    """Is the mean of a few new runs outside the prediction interval of a history? (robust centre, MAD)."""
    n = before.size
    centre = float(np.median(before))
    scale = max(_robust_scale(before), floor, _SCALE_FLOOR)
    se = scale * math.sqrt(1.0 / after.size + 1.0 / n)
    t = (float(np.mean(after)) - centre) / se
    p = float(2.0 * _st.t.sf(abs(t), max(n - 1, 1)))
    return _Test(diff=float(np.median(after)) - centre, se=se, statistic=float(t), p_value=p, name="prediction_t")


def _shape_p_value(new_logs: np.ndarray, history: list[np.ndarray]) -> float:
    """p-value that a night's samples, centred on their median, do not share the history's shape.

    The smaller of two tests: Kolmogorov-Smirnov against the pooled centred history samples, and a binomial
    test on the share of samples more than 4 typical spreads from the median (a slow mode, throttling part
    way through) against the usual share in a history night (20%-trimmed mean over nights). A night
    narrower than its history is no sign of an unstable device (a slower kernel doing more work per call
    averages its own jitter: a 4x planted slowdown halved the relative spread, and KS called it unstable
    at p = 1.5e-14), so the shape test is left out for it.
    """
    if new_logs.size < 5 or not history:
        return 1.0
    centred = [v - np.median(v) for v in history]
    new = new_logs - np.median(new_logs)
    spread = max(float(np.median([_robust_scale(v) for v in centred])), _SCALE_FLOOR)
    narrower = _robust_scale(new) < spread
    ks = 1.0 if narrower else float(_st.ks_2samp(new, np.concatenate(centred)).pvalue)
    usual = [float(np.mean(np.abs(v) > _SHAPE_K * spread)) for v in centred]
    share = max(float(_st.trim_mean(usual, _TRIM)), 0.01)
    outside = int(np.sum(np.abs(new) > _SHAPE_K * spread))
    band = float(_st.binom.sf(outside - 1, new.size, share))
    return min(ks, band)


def _compare(before: np.ndarray, after: np.ndarray) -> _Test | None:
    if before.size >= 2 and after.size >= 2:
        return _yuen(before, after)
    if before.size >= 3 and after.size >= 1:
        return _prediction(before, after)
    if after.size >= 3 and before.size >= 1:
        flipped = _prediction(after, before)
        return _Test(-flipped.diff, flipped.se, -flipped.statistic, flipped.p_value, flipped.name)
    return None


def _passes(test: _Test, alpha: float, min_effect: float) -> bool:
    return test.p_value <= alpha and _effect_ok(test, min_effect)


def _effect_ok(test: _Test, min_effect: float) -> bool:
    # Upper confidence bound of |change|, in the direction of the change.
    bound = abs(test.diff) + _EFFECT_Z * test.se
    change = math.expm1(bound) if test.diff >= 0 else -math.expm1(-bound)
    return change >= min_effect


def _merge(y: np.ndarray, cuts: list[int], alpha: float, min_effect: float) -> list[int]:
    """Drop the weakest candidate step until every one left passes (Otava's merge, robust test)."""
    cuts = list(cuts)
    while cuts:
        bounds = [0, *cuts, int(y.size)]
        tests = [_yuen(y[bounds[i]:bounds[i + 1]], y[bounds[i + 1]:bounds[i + 2]]) for i in range(len(cuts))]
        failing = [i for i, t in enumerate(tests) if not _passes(t, alpha, min_effect)]
        if not failing:
            return cuts
        insignificant = [i for i in failing if tests[i].p_value > alpha]
        if insignificant:
            weakest = max(insignificant, key=lambda i: tests[i].p_value)
        else:
            weakest = min(failing, key=lambda i: abs(tests[i].diff))
        del cuts[weakest]
    return cuts


def _refine(y: np.ndarray, cuts: list[int], min_size: int, scale: float) -> list[int]:
    """Move each step by up to ``min_size`` runs to where a capped L1 cost between its neighbours is least.

    Capping each run's deviation at ``_CAP`` noise scales makes a spike night cost the same on either
    side, so a throttled night just before a step no longer drags the step onto itself.
    """
    cuts = list(cuts)
    cap = _CAP * scale

    def cost(part: np.ndarray) -> float:
        return float(np.minimum(np.abs(part - np.median(part)), cap).sum())

    for i in range(len(cuts)):
        lo = 0 if i == 0 else cuts[i - 1]
        hi = int(y.size) if i == len(cuts) - 1 else cuts[i + 1]
        options = range(max(lo + min_size, cuts[i] - min_size), min(hi - min_size, cuts[i] + min_size) + 1)
        costs = {c: cost(y[lo:c]) + cost(y[c:hi]) for c in options}
        least = min(costs.values())
        cuts[i] = min((c for c in options if costs[c] <= least + _TIE), key=lambda c: (abs(c - cuts[i]), c))
    return cuts


def _blocks(keys: list[Any]) -> list[tuple[int, int]]:
    """Maximal [start, stop) stretches of equal comparability key."""
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            out.append((start, i))
            start = i
    return out


def _check_params(min_effect: float, alpha: float, min_runs: int) -> None:
    if not 0.0 <= min_effect < 1.0:
        raise ValueError(f"min_effect is a fraction (0.05 means 5%); got {min_effect}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha is a significance level in (0, 1); got {alpha}")
    if min_runs < 2:
        raise ValueError(f"min_runs must be at least 2 so that one night cannot form a segment; got {min_runs}")


def _direction(diff: float, lower_is_better: bool) -> Direction:
    worse = diff > 0 if lower_is_better else diff < 0
    return "regression" if worse else "improvement"


def detect_change_points(
    series: Sequence[RunLike],
    *,
    lower_is_better: bool = True,
    min_effect: float = 0.05,
    alpha: float = 0.001,
    min_runs: int = 4,
    confidence: float = 0.95,
) -> list[ChangePoint]:
    """Every step in the history, oldest first.

    ``series`` holds runs in time order (``Run`` or plain sequences of raw samples); runs without samples
    (failed, skipped) are ignored but keep their index. A step needs ``min_runs`` runs on each side inside
    a comparability block, a p-value at most ``alpha`` and a size not demonstrably below ``min_effect``
    (fraction, 0.05 = 5%). Intervals on the levels are at ``confidence``.
    """
    _check_params(min_effect, alpha, min_runs)
    runs = [_as_run(r) for r in series]
    index: list[int] = []
    y_list: list[float] = []
    for i, run in enumerate(runs):
        logs = _log_samples(run, i)
        if logs.size:
            index.append(i)
            y_list.append(float(np.median(logs)))
    y = np.asarray(y_list)
    keys = [runs[i].key for i in index]

    # (position in y, test, segment before, segment after, cause)
    found: list[tuple[int, _Test, tuple[int, int], tuple[int, int], str | None]] = []
    segments_per_block: list[list[tuple[int, int]]] = []
    for start, stop in _blocks(keys):
        block = y[start:stop]
        scale = _noise_scale(block)
        penalty = _PENALTY * scale * math.log(max(block.size, 2))
        cuts = _merge(block, _l1_partition(block, penalty, min_runs), alpha, min_effect)
        cuts = _merge(block, _refine(block, cuts, min_runs, scale), alpha, min_effect)
        bounds = [start, *(start + c for c in cuts), stop]
        segments = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
        segments_per_block.append(segments)
        for left, right in zip(segments, segments[1:]):
            found.append((right[0], _yuen(y[left[0]:left[1]], y[right[0]:right[1]]), left, right, None))
    for prev_segments, next_segments in zip(segments_per_block, segments_per_block[1:]):
        left, right = prev_segments[-1], next_segments[0]
        test = _compare(y[left[0]:left[1]], y[right[0]:right[1]])
        if test is not None and _passes(test, alpha, min_effect):
            found.append((right[0], test, left, right, ENVIRONMENT_CHANGED))
    found.sort(key=lambda f: f[0])

    out: list[ChangePoint] = []
    for pos, test, left, right, cause in found:
        before = median_interval(np.exp(y[left[0]:left[1]]), confidence)
        after = median_interval(np.exp(y[right[0]:right[1]]), confidence)
        first = runs[index[pos]]
        out.append(
            ChangePoint(
                index=index[pos],
                run_id=first.run_id,
                started_at=first.started_at,
                before=before,
                after=after,
                change_pct=100.0 * (after.median / before.median - 1.0),
                direction=_direction(test.diff, lower_is_better),
                statistic=test.statistic,
                statistic_name=test.name,
                p_value=test.p_value,
                before_runs=tuple(index[left[0]:left[1]]),
                after_runs=tuple(index[right[0]:right[1]]),
                cause=cause,
                key_before=keys[left[0]] if cause else None,
                key_after=keys[right[0]] if cause else None,
            )
        )
    return out


def latest_regression(
    series: Sequence[RunLike],
    *,
    lower_is_better: bool = True,
    min_effect: float = 0.05,
    alpha: float = 0.001,
    min_runs: int = 4,
    min_history: int = 5,
    confidence: float = 0.95,
) -> LatestVerdict:
    """Is the newest run a regression against its stable history (the runs since the last step)?

    Two ways to say yes. (1) The newest night alone: its median lies outside the ``alpha`` prediction
    interval of the stable history (robust centre and spread of the run medians), at least ``min_effect``
    off, and its raw samples keep the history's shape (Kolmogorov-Smirnov on samples around each run's
    median); a night that is off but changed shape is ``unstable``. (2) The newest run confirms a step
    that ``detect_change_points`` did not see without it (the last ``min_runs`` nights moved together).
    Needs ``min_history`` comparable runs in the stable history; a history in another comparability
    block is still used, with ``cause="environment changed"``.
    """
    _check_params(min_effect, alpha, min_runs)
    runs = [_as_run(r) for r in series]
    if not runs:
        raise ValueError("latest_regression needs at least one run")
    last = len(runs) - 1
    newest = runs[last]
    new_logs = _log_samples(newest, last)

    def verdict(status: LatestStatus, reason: str, **fields: Any) -> LatestVerdict:
        base: dict[str, Any] = dict(
            before=None, after=None, change_pct=None, statistic=None, statistic_name=None, p_value=None,
            history_runs=(),
        )
        base.update(fields)
        return LatestVerdict(status=status, index=last, run_id=newest.run_id, started_at=newest.started_at,
                             reason=reason, **base)

    if new_logs.size == 0:
        return verdict("no_data", "the newest run has no samples")

    params = dict(lower_is_better=lower_is_better, min_effect=min_effect, alpha=alpha, min_runs=min_runs,
                  confidence=confidence)
    older = detect_change_points(runs[:last], **params)
    # (2) a step over the last nights that this run just confirmed
    for cp in detect_change_points(runs, **params):
        # A known step may move by a night when a run is added; only a step with none nearby is new.
        if last in cp.after_runs and all(abs(cp.index - old.index) > min_runs for old in older):
            return verdict(
                cp.direction, f"step over the last {len(cp.after_runs)} runs confirmed by this run",
                before=cp.before, after=cp.after, change_pct=cp.change_pct, statistic=cp.statistic,
                statistic_name=cp.statistic_name, p_value=cp.p_value, history_runs=cp.before_runs,
                cause=cp.cause, change_point=cp,
            )

    # (1) the newest night against the runs since the last step
    since = older[-1].index if older else 0
    # Nights measured throttled or under contention are not a baseline to judge against.
    history = [i for i in range(since, last) if len(runs[i].samples) and not runs[i].throttled
               and not runs[i].contended]
    cause = None
    if history and runs[history[-1]].key != newest.key:
        cause = ENVIRONMENT_CHANGED
    same_key = [i for i in history if runs[i].key == newest.key]
    if len(same_key) >= min_history:
        history = [i for i in history if i >= same_key[0]]
        cause = None
    if len(history) < min_history:
        after = f" (the step at run {older[-1].index})" if older else ""
        return verdict("insufficient_history",
                       f"{len(history)} comparable runs since the last step{after}; need {min_history}",
                       history_runs=tuple(history))

    hist_logs = [_log_samples(runs[i], i) for i in history]
    hist_y = np.array([np.median(v) for v in hist_logs])
    new_y = float(np.median(new_logs))
    # The spread of nightly medians cannot be below what the samples of a typical night allow.
    within = [1.2533 * _robust_scale(v) / math.sqrt(v.size) for v in hist_logs if v.size >= 3]
    floor = float(np.median(within)) if within else _SCALE_FLOOR
    test = _prediction(hist_y, np.array([new_y]), floor)
    before = median_interval(np.exp(hist_y), confidence)
    after = median_interval(np.exp(new_logs), confidence)
    change = math.expm1(new_y - float(np.median(hist_y)))
    fields = dict(before=before, after=after, change_pct=100.0 * change, statistic=test.statistic,
                  statistic_name=test.name, p_value=test.p_value, history_runs=tuple(history), cause=cause)
    if test.p_value > alpha or abs(change) < min_effect:
        return verdict("ok", "within the history's night-to-night spread or below the minimum effect", **fields)

    if newest.throttled:
        return verdict("unstable", "the device reported throttling during this run; re-measure before trusting it",
                       **fields)
    if newest.contended:
        return verdict("unstable", "other processes used the device's CPUs during this run (contended); "
                       "re-measure on a quiet device before trusting it", **fields)
    shape_p = _shape_p_value(new_logs, [v for v in hist_logs if v.size >= 5])
    if shape_p < _SHAPE_ALPHA:
        return verdict("unstable", f"its samples changed shape against history (p={shape_p:.2g}): bimodal or "
                       "throttled part way? re-measure before trusting it", **fields)
    return verdict(_direction(new_y - float(np.median(hist_y)), lower_is_better),
                   "the newest night is outside its history's prediction interval", **fields)
