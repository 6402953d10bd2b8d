"""The agent: runs a device's planned cases through workers and reports each result as one JSON line.

`python -m harness.agent --plan PLAN.json [--journal FILE]` (or the plan on stdin). The same agent runs on
the controller for the `local` device and on a board over SSH. It

- probes the device once and reports the fingerprint (`{"type": "hello", ...}`);
- runs cases in a reused worker process; a worker that dies (exception escaping, segfault, SIGKILL, OOM
  kill) makes that case `failed` with the reason, and a fresh worker takes the next case;
- cuts off a case after `measure.timeout_s` (status `timeout`) and goes on;
- appends every result to the journal (fsync'd) before reporting it, and keeps going when its stdout goes
  away (an SSH session dropped), so a reconnect or `--resume` collects what finished meanwhile; cases
  already in the journal for this run are reported from it instead of being measured again.

Runs on devices: standard library, psutil (via the probe) and the worker's imports only.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from devices import probe

WORKER_START_TIMEOUT_S = 120.0


class Reporter:
    """Writes result lines to the journal (durably) and to stdout while stdout lasts."""

    def __init__(self, journal: Path | None) -> None:
        self.journal = journal
        self.stdout_ok = True
        if journal:
            journal.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, record: dict[str, Any], durable: bool = False) -> None:
        line = json.dumps(record, allow_nan=True)
        if durable and self.journal:
            with open(self.journal, "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        if self.stdout_ok:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, OSError):
                # The controller went away; keep measuring into the journal.
                self.stdout_ok = False


def journaled(journal: Path | None, run_id: str) -> dict[str, dict[str, Any]]:
    """Results already journaled for this run, by case hash (a torn last line is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if not journal or not journal.exists():
        return done
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("type") == "result" and record.get("run_id") == run_id:
            done[record["case_hash"]] = record
    return done


class Worker:
    """One worker process and the line protocol to it."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen(
            [python, "-m", "harness.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None, text=True, bufsize=1)
        ready = self._read_line(WORKER_START_TIMEOUT_S)
        if ready is None:
            raise RuntimeError(f"worker did not start: {self.exit_reason()}")

    def _read_line(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    return None  # EOF: the worker died
                return json.loads(line)

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """The answer, or None when the worker died or the timeout passed (check `alive`)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        return self._read_line(timeout)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_reason(self) -> str:
        code = self.proc.wait(timeout=10)
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (the OOM killer or an external kill)" if -code == signal.SIGKILL else ""
            return f"worker killed by signal {-code} ({name}){hint}"
        return f"worker exited with status {code}"

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.alive and self.proc.stdin:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def run_plan(plan: dict[str, Any], reporter: Reporter, python: str = sys.executable) -> None:
    """Run every case in the plan, reporting as it goes. Never raises for a case-level problem."""
    run_id = plan["run_id"]
    workdir = plan.get("workdir")
    fp = probe.fingerprint(workdir)
    caps = probe.capabilities(fp)
    reporter.emit({"type": "hello", "run_id": run_id, "device": plan.get("device"), "fingerprint": fp,
                   "agent_pid": os.getpid()})
    done = journaled(reporter.journal, run_id)
    measure_cfg = plan.get("measure", {})
    timeout = float(measure_cfg.get("timeout_s", 120.0))
    worker: Worker | None = None
    try:
        for index, item in enumerate(plan["cases"]):
            case_hash, case = item["hash"], item["case"]
            if case_hash in done:
                record = dict(done[case_hash], replayed=True)
                reporter.emit(record)
                continue
            reporter.emit({"type": "start", "run_id": run_id, "case_hash": case_hash, "index": index})
            started = time.time()
            if worker is None or not worker.alive:
                worker = Worker(python)
            request = {"case": case, "measure": measure_cfg, "seed": plan.get("seed", 0), "caps": caps,
                       "power": plan.get("power")}
            answer = worker.ask(request, timeout)
            if answer is None:
                if worker.alive:
                    worker.kill()
                    answer = {"status": "timeout",
                              "error": f"case exceeded measure.timeout_s = {timeout:g} s and was cut off"}
                else:
                    answer = {"status": "failed", "error": worker.exit_reason()}
                worker = None
                answer["started_at"] = started
                answer["finished_at"] = time.time()
            record = {"type": "result", "run_id": run_id, "device": plan.get("device"), "case_hash": case_hash,
                      "index": index, **answer}
            reporter.emit(record, durable=True)
    finally:
        if worker is not None:
            worker.close()
    reporter.emit({"type": "done", "run_id": run_id})


def iter_plan_source(path: str | None) -> Iterator[str]:
    if path and path != "-":
        yield Path(path).read_text()
    else:
        yield sys.stdin.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.agent")
    parser.add_argument("--plan", default="-", help="plan JSON file ('-' for stdin)")
    parser.add_argument("--journal", default=None, help="append-only result journal")
    args = parser.parse_args(argv)
    plan = json.loads(next(iter_plan_source(args.plan)))
    # A dropped SSH session must not kill a detached agent through SIGPIPE/SIGHUP.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reporter = Reporter(Path(args.journal).expanduser() if args.journal else None)
    run_plan(plan, reporter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
