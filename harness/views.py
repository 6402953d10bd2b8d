"""What each command prints: its records (the JSON shape the README documents) and its columns.

Pure functions over plain data (rows from `results.exchange.export_rows`, `Store.list_runs`, a
`results.compare.Comparison`, probe results); `harness.output` writes them as text, JSON or markdown.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping, Sequence

from harness.numfmt import cosine, num, pct, present, sig
from harness.output import Col, text
from harness.report import device_label
from workloads.spec import case_label

# Export columns a results table shows; `results show --format json` gives these per row (no raw
# samples, details or fingerprints: `results export` has those).
RESULT_KEYS = ("device", "emulated", "status", "error", "case_hash", "case", "latency_ms_p50", "latency_ms_p90",
               "latency_ms_p99", "latency_ms_mean", "latency_ms_std", "n_samples", "peak_mem_mb", "cos_sim",
               "rel_err", "max_abs_err", "energy_mj_per_inf", "power_w_avg", "power_source", "is_estimate",
               "throttled", "cpu_other", "contended", "measured_at")
STATUS_STYLE = {"ok": "green", "failed": "red", "timeout": "red", "skipped": "yellow"}
VERDICT_STYLE = {"slower": "red", "newly failing": "red", "still failing": "red", "faster": "green",
                 "fixed": "green", "noise": "dim"}


def _cpu_other(r: Mapping[str, Any]) -> str:
    """Other processes' share of the CPUs during the window; '!' marks a contended case."""
    if not present(r.get("cpu_other")):
        return "-"
    return f"{r['cpu_other']:.0%}" + ("!" if r.get("contended") else "")


def case_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The case keys of an export row (absent keys left out)."""
    from workloads.spec import CASE_COLUMNS

    return {k: row[k] for k in CASE_COLUMNS if present(row.get(k))}


# -- results show / run summary ---------------------------------------------------------------------------
def result_records(rows: Sequence[Mapping[str, Any]], emulated: Sequence[str]) -> list[dict[str, Any]]:
    """Per (device, case): the summary columns, the case keys under `keys`, a `case` label."""
    out = []
    for r in rows:
        rec = {k: r.get(k) for k in RESULT_KEYS if k in r}
        rec["emulated"] = r["device"] in emulated
        rec["case"] = case_label(r)
        rec["keys"] = case_of(r)
        rec["device_label"] = device_label(r["device"], rec["emulated"])
        rec["cpu_shown"] = _cpu_other(r)
        out.append(rec)
    return out


RESULT_COLS = (
    Col("device_label", "device"),
    Col("case", "case"),
    Col("status", "status", style=lambda s: STATUS_STYLE.get(s)),
    Col("latency_ms_p50", "p50 ms", num, numeric=True),
    Col("latency_ms_p90", "p90 ms", num, numeric=True, drop=4),
    Col("n_samples", "n", num, numeric=True, drop=5),
    Col("peak_mem_mb", "peak MB", lambda x: num(x, 0), numeric=True, drop=6, short="MB"),
    Col("cos_sim", "cos_sim", cosine, numeric=True, drop=1, short="cos"),
    Col("rel_err", "rel_err", lambda x: num(x, 4), numeric=True, drop=3, short="err"),
    Col("energy_mj_per_inf", "mJ/inf", num, numeric=True, drop=7, short="mJ"),
    Col("cpu_shown", "cpu other", text, numeric=True, drop=2, short="cpu"),
)


def run_record(run: Any, state: str, device_states: Mapping[str, tuple[str, str | None]],
               emulated: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`results show --format json`: the run, each device's part in it, and its results."""
    return {"run": {"run_id": run.id, "status": state, "error": run.error, "started_at": run.started_at,
                    "finished_at": run.finished_at, "matrix": run.matrix_name, "tag": run.tag,
                    "harness_version": run.harness_version, "git_revision": run.git_revision},
            "devices": [{"device": name, "status": st, "error": err, "emulated": name in emulated}
                        for name, (st, err) in device_states.items()],
            "results": [{k: v for k, v in r.items() if k not in ("device_label", "cpu_shown")}
                        for r in result_records(rows, emulated)]}


# -- results list -----------------------------------------------------------------------------------------
def run_list_records(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`results list --format json`: one object per run, newest first."""
    return [{"run_id": r["run_id"], "started_at": r["started_at"], "status": r["status"], "matrix": r["matrix"],
             "tag": r["tag"], "devices": list(r["devices"]), "emulated": list(r["emulated"]),
             "counts": dict(sorted(r["counts"].items())), "error": r.get("error")} for r in runs]


def _counts(c: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(c.items())) or "-"


RUN_LIST_COLS = (
    Col("run_id", "run id", whole=True),
    Col("started_at", "started (UTC)", lambda t: t.strftime("%Y-%m-%d %H:%M:%S") if present(t) else "-",
        short="started", whole=True),
    Col("status", "status", style=lambda s: {"complete": "green", "failed": "red", "partial": "yellow",
                                             "interrupted": "yellow", "abandoned": "yellow"}.get(s)),
    Col("matrix", "matrix", drop=3),
    Col("tag", "tag", drop=1),
    Col("devices_shown", "devices"),
    Col("counts_shown", "results", drop=2),
)


def run_list_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records with the text the table shows (devices with their emulation, counts)."""
    return [dict(r, devices_shown=",".join(device_label(d, d in r["emulated"]) for d in r["devices"]) or "-",
                 counts_shown=_counts(r["counts"])) for r in records]


# -- compare ----------------------------------------------------------------------------------------------
def compare_record(result: Any) -> dict[str, Any]:
    """`compare --format json`: the comparison as stored in `results.compare.Comparison`, plus `comparable`
    and the counts that `--fail-on` reads."""
    d = asdict(result)
    d["comparable"] = result.comparable
    return d


def compare_rows(result: Any) -> list[dict[str, Any]]:
    emulated = set(result.emulated_devices)
    out = []
    for c in result.cases:
        out.append({"device": device_label(c.device, c.device in emulated), "case": c.label,
                    "a": c.a.median_ms, "b": c.b.median_ms, "speedup": c.speedup,
                    "ci": f"[{c.ci_low:.3f}, {c.ci_high:.3f}]" if c.ci_low is not None else "-",
                    "verdict": c.verdict + (" (contended!)" if c.contended else ""), "verdict_key": c.verdict})
    return out


COMPARE_COLS = (
    Col("device", "device"),
    Col("case", "case"),
    Col("a", "A p50 ms", sig, numeric=True, short="A ms"),
    Col("b", "B p50 ms", sig, numeric=True, short="B ms"),
    Col("speedup", "speedup", num, numeric=True, short="A/B"),
    Col("ci", "95% CI", text, whole=True, drop=1, short="CI"),
    Col("verdict", "verdict", style=lambda v: VERDICT_STYLE.get(str(v).split(" (")[0])),
)


def compare_markdown(result: Any, rows: Sequence[Mapping[str, Any]], table: str) -> str:
    """A markdown comparison for a PR comment or `$GITHUB_STEP_SUMMARY`: a summary line, then the table."""
    slower = [c for c in result.cases if c.verdict in ("slower", "newly failing")]
    geo = f"{result.geomean:.3f}" if result.geomean else "-"
    counts = ", ".join(f"{n} {v}" for v, n in result.counts.items()) or "no cases"
    out = [f"### attn-harness: `{result.run_a}` (A) vs `{result.run_b}` (B)", "",
           f"Speedup = A/B (above 1: B is faster). Geometric mean **{geo}**; {counts}.", ""]
    if slower:
        out += [f"**{len(slower)} case(s) slower or newly failing in B.**", ""]
    for d in result.stable_diffs:
        out += [f"> NOT COMPARABLE: {d.device}: {d.field} {d.a!r} -> {d.b!r}", ""]
    return "\n".join(out + [table])


# -- kernels ----------------------------------------------------------------------------------------------
KERNEL_COLS = (
    Col("variant", "variant"), Col("precision", "precision", short="prec"), Col("backend", "backend"),
    Col("scope", "scope"), Col("needs_shown", "needs", drop=1), Col("from", "from", drop=2),
    Col("computes", "computes"),
)


def kernel_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(r, needs_shown=", ".join(r["needs"]) or "-") for r in records]


# -- devices ----------------------------------------------------------------------------------------------
def device_check_record(name: str, result: Any, power_failed: bool) -> dict[str, Any]:
    """`devices check --format json`, per device: reachable, the probe's fields, or the error."""
    if isinstance(result, Exception):
        return {"device": name, "reachable": False, "error": str(result)}
    return {"device": name, "reachable": True, "power_ok": not power_failed, "probe": dict(result)}


DEVICE_LIST_COLS = (
    Col("name", "name"), Col("host", "host"), Col("user", "user", drop=2), Col("python", "python", drop=3),
    Col("power", "power", drop=1), Col("tags", "tags", drop=4), Col("held_by", "held by"),
)


def percent(x: Any) -> str:
    return pct(x, 0)
