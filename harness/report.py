"""Formatting of regression findings and comparisons for people (text, markdown) and scripts (JSON).

Findings and comparisons are plain data (results.regress, results.compare); only this module formats them.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from harness.output import md_cell
from harness.safe_text import terminal
from workloads.spec import case_label

UNITS = {"latency_ms": "ms", "energy_mj_per_inf": "mJ", "cos_sim": ""}


def _num(x: float) -> str:
    return f"{x:.4g}"


EMULATED = " (emulated)"


def device_label(device: str, emulated: bool) -> str:
    """A device name as tables show it: emulated devices say so wherever their timings appear."""
    return device + EMULATED if emulated else device


def emulation_warning(devices: Sequence[str]) -> str | None:
    """The line shown above results of devices that ran under an emulator, or None."""
    if not devices:
        return None
    return (f"EMULATED: {', '.join(devices)} ran under an emulator; timings measured there are the emulator's on the "
            "host CPU, not a real device's, and are never compared with real runs")


def findings_json(findings: Sequence[Any]) -> str:
    return json.dumps([_finite(f.to_dict()) for f in findings], indent=1, default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _when(started_at: Any) -> str:
    """'2026-12-01 02:30 UTC' from a stored ISO time (or the text as it is)."""
    t = str(started_at)
    return (t[:16].replace("T", " ") + " UTC") if len(t) >= 16 and t[10] in "T " else t


def _value(x: float, interval: tuple[float, float], unit: str) -> str:
    u = f" {unit}" if unit else ""
    return f"{_num(x)}{u} [{_num(interval[0])}, {_num(interval[1])}]"


def differs_text(f: Any) -> str:
    """What differs between the last run before a change and the first after it, or that nothing does."""
    if not f.differs:
        return "unchanged (harness revision, library versions and fingerprint agree)"
    return "; ".join(f"{k} {a} -> {b}" for k, (a, b) in f.differs.items())


def finding_lines(f: Any, *, verbose: bool = False) -> list[str]:
    """One finding as a few short lines: what changed and by how much, then the evidence, then the
    environment and the likely cause. `verbose` adds the runs on both sides."""
    unit = UNITS.get(f.metric, "")
    out = [f"{f.direction.upper()} {device_label(f.device, f.emulated)} {case_label(f.case)} {f.metric} "
           f"{f.change_pct:+.1f}%",
           f"  {_value(f.before, f.before_interval, unit)} -> {_value(f.after, f.after_interval, unit)}",
           f"  first in run {f.run_id} at {_when(f.started_at)}; {f.statistic_name} = {_num(f.statistic)}, "
           f"p = {f.p_value:.2g}; {len(f.runs_before)} run(s) before, {len(f.runs_after)} after",
           f"  environment: {differs_text(f)}"]
    if f.cause:
        out.append(f"  likely cause: {f.cause}")
    if verbose:
        out.append(f"  runs before: {', '.join(f.runs_before) or '-'}")
        out.append(f"  runs after: {', '.join(f.runs_after) or '-'}")
    return out


def findings_text(findings: Sequence[Any], *, mode: str, verbose: bool = False) -> str:
    """Findings for a terminal: a count, then each finding as a short block (lines under 100 characters
    but for long case labels and causes)."""
    if not findings:
        return "no regressions or improvements found" if mode == "latest" else "no change points in the history"
    regressions = sum(1 for f in findings if f.direction == "regression")
    out = [f"{regressions} regression(s), {len(findings) - regressions} improvement(s)"
           + (" against each series' stable history" if mode == "latest" else " in the stored history")]
    warning = emulation_warning(sorted({f.device for f in findings if f.emulated}))
    if warning:
        out.append(warning)
    for f in findings:
        out += [""] + finding_lines(f, verbose=verbose)
    return "\n".join(out)


def findings_markdown(findings: Sequence[Any], *, title: str, mode: str) -> str:
    out = [f"# {title}", ""]
    regressions = [f for f in findings if f.direction == "regression"]
    improvements = [f for f in findings if f.direction == "improvement"]
    out.append(f"{len(regressions)} regression(s), {len(improvements)} improvement(s)"
               + (" against each series' stable history." if mode == "latest" else " in the stored history."))
    out.append("")
    warning = emulation_warning(sorted({f.device for f in findings if f.emulated}))
    if warning:
        out += [f"> {warning}", ""]
    for heading, group in (("Regressions", regressions), ("Improvements", improvements)):
        if not group:
            continue
        out += [f"## {heading}", "",
                "| device | case | metric | before | after | change | first run | statistic | differs |",
                "|---|---|---|---|---|---|---|---|---|"]
        for f in group:
            differs = md_cell("; ".join(f"{k}: {a} → {b}" for k, (a, b) in f.differs.items()) or "unchanged")
            out.append(f"| {md_cell(device_label(f.device, f.emulated))} | {md_cell(case_label(f.case))} | {f.metric} | "
                       f"{_num(f.before)} "
                       f"[{_num(f.before_interval[0])}, {_num(f.before_interval[1])}] | {_num(f.after)} "
                       f"[{_num(f.after_interval[0])}, {_num(f.after_interval[1])}] | {f.change_pct:+.1f}% | "
                       f"`{f.run_id}` | {f.statistic_name} {_num(f.statistic)}, p={f.p_value:.2g} | {differs} |")
        out.append("")
    return "\n".join(out)


def comparison_rows(comparison: Any) -> list[list[str]]:
    rows = []
    emulated = set(getattr(comparison, "emulated_devices", ()))
    for c in comparison.cases:
        ci = f"[{c.ci_low:.3f}, {c.ci_high:.3f}]" if c.ci_low is not None else "-"
        verdict = c.verdict + (" (contended!)" if c.contended else "")
        rows.append([device_label(c.device, c.device in emulated), c.label, _ms(c.a.median_ms), _ms(c.b.median_ms),
                     f"{c.speedup:.3f}" if c.speedup is not None else "-", ci, verdict])
    return rows


def _ms(x: float | None) -> str:
    return f"{x:.4g}" if x is not None else "-"


def nightly_markdown(*, run_id: str | None, run_status: str | None, devices: Mapping[str, Any],
                     problem_rows: Sequence[Mapping[str, Any]], findings: Sequence[Any] | None,
                     skipped: Sequence[Any], could_not_check: Sequence[str], exit_code: int,
                     exit_meaning: str) -> str:
    """The nightly report: what ran, what did not produce a result (failed, timed out, skipped cases and
    devices that could not finish), the regressions and improvements, the stored values the check had to
    leave out, and what could not be checked. Written whatever happened, so a cron job always has one."""
    title = f"attn-harness nightly, run {run_id} ({run_status})" if run_id else "attn-harness nightly (no run)"
    out = [f"# {md_cell(title)}", "", f"Exit code {exit_code}: {exit_meaning}.", ""]
    if could_not_check:
        out += ["## Could not check", ""] + [f"- {md_cell(p)}" for p in could_not_check] + [""]
    bad_devices = {name: d for name, d in devices.items() if getattr(d, "status", "complete") != "complete"}
    if bad_devices:
        out += ["## Devices that did not finish", "", "| device | status | error |", "|---|---|---|"]
        for name, d in bad_devices.items():
            out.append(f"| {md_cell(name)} | {md_cell(d.status)} | {md_cell(d.error or '')} |")
        out.append("")
    if problem_rows:
        out += ["## Cases without a result", "", "| device | case | status | error |", "|---|---|---|---|"]
        for r in problem_rows:
            out.append(f"| {md_cell(r['device'])} | {md_cell(case_label(r))} | {md_cell(r['status'])} | "
                       f"{md_cell((r.get('error') or '')[:500])} |")
        out.append("")
    if findings is not None:
        body = findings_markdown(findings, title="Regression check", mode="latest").split("\n")
        out += ["#" + body[0]] + [("#" + line if line.startswith("## ") else line) for line in body[1:]]
    if skipped:
        out += ["## Stored values left out", "",
                f"{len(skipped)} stored value(s) are not finite or impossible and were left out of the check:", ""]
        out += [f"- {md_cell(b)}" for b in skipped[:50]]
        if len(skipped) > 50:
            out.append(f"- and {len(skipped) - 50} more")
        out.append("")
    return "\n".join(out)
