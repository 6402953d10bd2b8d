"""Progress of a run on the terminal: one bar per device with its ETA, warnings as they come."""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness.safe_text import terminal
from workloads.spec import case_label


def _e(text: Any) -> str:
    """Text from a device or the database for rich markup: control characters escaped, then markup."""
    return escape(terminal(text))


class ProgressView:
    """Receives the controller's events (device, kind, payload) and renders them.

    `verbosity` -1 (--quiet): no bars and no per-case lines; the notes (CV warnings and the like) are
    counted and said in one line at the end. 1 (-v): a line per finished case besides the bars."""

    def __init__(self, console: Console, err_console: Console | None = None, verbosity: int = 0) -> None:
        self.console = console
        # Warnings and waits go to stderr, so a script reading stdout gets only results.
        self.err = err_console or console
        self.verbosity = verbosity
        self.quiet_notes = 0
        self.waiting_on: dict[str, Any] = {}
        self.progress = Progress(TextColumn("{task.fields[device]:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=console, transient=False,
                                 disable=verbosity < 0)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "ProgressView":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()
        if self.quiet_notes:
            self.err.print(f"{self.quiet_notes} warning(s) about measured cases not shown (--quiet); run without "
                           "it, or `harness results show RUN`, to see them")

    def event(self, device: str, kind: str, payload: Mapping[str, Any]) -> None:
        if kind == "run":
            if self.verbosity >= 0:
                self.console.print(f"run id {_e(payload['run_id'])}")
            for name, total in payload["plans"].items():
                self.tasks[name] = self.progress.add_task("", total=total, device=name, status="starting")
        elif kind == "start" and device in self.tasks:
            case = payload.get("case")
            label = _e(case_label(case)) if case else ""
            if payload.get("of"):  # measure.processes: one pass over the cases per worker process
                label += f" (pass {payload.get('pass')}/{payload.get('of')})"
            self.progress.update(self.tasks[device], status=label)
        elif kind == "result" and device in self.tasks:
            self.progress.advance(self.tasks[device])
            notes = payload.get("notes") or []
            if self.verbosity < 0:
                self.quiet_notes += len(notes)
                return
            for note in notes:
                self.err.print("[yellow]warning:[/] " + _e(note))
            if self.verbosity > 0 and payload.get("status") == "ok":
                self.console.print(_e(f"ok {device} {case_label(payload['case'])}"))
            if payload.get("status") in ("failed", "timeout"):
                self.console.print(f"[red]{_e(payload['status'])}[/] " +
                                   _e(f"{device} {case_label(payload['case'])}: {payload.get('error')}"))
        elif kind == "waiting" and device in self.tasks:
            holder = payload.get("holder") or {}
            key = (holder.get("run_id"), holder.get("pid"))
            if self.waiting_on.get(device) != key:  # once per holder, not every few seconds
                self.waiting_on[device] = key
                self.err.print("[yellow]waiting[/] for " + _e(f"{device} ({_held_by(holder)}); ") +
                               _e(_wait_limit(payload.get("wait_timeout_s"))))
            self.progress.update(self.tasks[device], status=f"waiting {payload.get('waited_s', 0):.0f} s")
        elif kind == "leased" and device in self.tasks:
            self.err.print(_e(f"{device} is free: waited {payload.get('waited_s', 0):.0f} s"))
            self.progress.update(self.tasks[device], status="starting")
        elif kind == "end" and device in self.tasks:
            self.progress.update(self.tasks[device], status=_e(payload["status"]))
        elif kind == "stopping":
            self.err.print(f"[yellow]{_e(payload.get('signal') or 'stop')} received[/]: stopping the agents; "
                           "every result received is kept")
        elif kind == "interrupted":
            self.err.print("[yellow]interrupted[/]: every result received is stored")


def _held_by(holder: Mapping[str, Any]) -> str:
    """'held by run X since T' from a lease holder record."""
    if not holder:
        return "held by another run"
    import time

    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else "?"
    by = f" of {holder['controller']}" if holder.get("controller") else ""
    return f"held by run {holder.get('run_id')}{by} since {when}"


def _wait_limit(seconds: Any) -> str:
    if seconds is None:
        return "waiting without a limit"
    if not seconds:
        return "not waiting (--wait-timeout 0)"
    return f"waiting up to {float(seconds):.0f} s (--wait-timeout)"
