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
    """Receives the controller's events (device, kind, payload) and renders them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.fields[device]:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "ProgressView":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def event(self, device: str, kind: str, payload: Mapping[str, Any]) -> None:
        if kind == "run":
            self.console.print(f"run id {payload['run_id']}")
            for name, total in payload["plans"].items():
                self.tasks[name] = self.progress.add_task("", total=total, device=name, status="starting")
        elif kind == "start" and device in self.tasks:
            case = payload.get("case")
            self.progress.update(self.tasks[device], status=_e(case_label(case)) if case else "")
        elif kind == "result" and device in self.tasks:
            self.progress.advance(self.tasks[device])
            for note in payload.get("notes") or []:
                self.console.print("[yellow]warning:[/] " + _e(note))
            if payload.get("status") in ("failed", "timeout"):
                self.console.print(f"[red]{_e(payload['status'])}[/] " +
                                   _e(f"{device} {case_label(payload['case'])}: {payload.get('error')}"))
        elif kind == "end" and device in self.tasks:
            self.progress.update(self.tasks[device], status=_e(payload["status"]))
        elif kind == "interrupted":
            self.console.print(f"[yellow]interrupted[/]: every result received is stored. "
                               f"Resume with: harness run --resume {payload['run_id']}")
