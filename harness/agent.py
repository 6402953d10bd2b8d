"""The agent: runs a device's planned cases through workers and reports each result as one JSON line.

`python -m harness.agent --plan PLAN.json [--journal FILE]` (or the plan on stdin). The same agent runs on
the controller for the `local` device and on a board over SSH. It

- probes the device once and reports the fingerprint (`{"type": "hello", ...}`);
- runs cases in a reused worker process; a worker that dies (exception escaping, segfault, SIGKILL, OOM
  kill) makes that case `failed` with the reason, and a fresh worker takes the next case;
- cuts off a case after `measure.timeout_s` (status `timeout`) and goes on;
- appends every result to the journal (fsync'd) before reporting it, and keeps going when its stdout goes
  away (an SSH session dropped), so a reconnect or `--resume` collects what finished meanwhile; cases
  already in the journal for this run are reported from it instead of being measured again;
- skips, with the reason, a case whose backend is not installed in this python, that cannot fit in the
  memory available (estimated before the worker starts; `workloads.memory`) or that asks for more threads
  than the CPUs it may use;
- takes the device lease (`harness.lease`) before anything else, so no other run measures on this device
  while it does: a busy device is waited for (a `waiting` record every few seconds names the holder) up to
  the plan's `wait_timeout_s`, then the agent reports `busy` and exits;
- with `measure.on_contention: wait`, waits (bounded) before each case until other processes leave the CPUs
  quiet;
- has the worker import the run's plugins (users' kernels, shipped with the bundle) one at a time and
  reports how each did in its `hello`; a case whose kernel comes from a plugin that did not load here (it
  raised, or killed the worker) is `failed` with that plugin's error, and so is one the controller planned
  with an `error` (its plugin did not load there either); every other case runs.

Over SSH the controller starts it `--detach`ed (its own session, stdio off the SSH channel, a pid file), so
every record goes to the journal, and reads the journal with `--follow`, which prints journal lines as they
are written plus a heartbeat; a dropped session then loses nothing and a reconnect resumes at a byte offset.

Runs on devices: standard library, psutil (via the probe) and the worker's imports only.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from devices import probe
from workloads.matrix import MeasureConfig
from harness.lease import (DeviceLease, Holder, LeaseTimeout, is_agent, pid_alive, read_pid,  # noqa: F401
                           write_pid)

WORKER_START_TIMEOUT_S = 120.0
AGENT_STARTED_AT = time.time()
# Modules every case needs in the device's python (the worker imports torch), plus each backend's own.
BACKEND_MODULES = {"torch": ("torch",), "onnxruntime": ("torch", "onnxruntime")}


class Reporter:
    """Writes result lines to the journal (durably) and to stdout while stdout lasts.

    `detached`: nobody reads stdout, the journal is the stream: every record goes there (results fsync'd,
    progress lines not), except replays of results the journal already holds.
    """

    def __init__(self, journal: Path | None, detached: bool = False) -> None:
        self.journal = journal
        self.detached = detached and journal is not None
        self.stdout_ok = not self.detached
        if journal:
            journal.parent.mkdir(parents=True, exist_ok=True)
            _end_torn_line(journal)

    def emit(self, record: dict[str, Any], durable: bool = False) -> None:
        line = json.dumps(record, allow_nan=True)
        if self.journal and (durable or (self.detached and not record.get("replayed"))):
            with open(self.journal, "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
        if self.stdout_ok:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, OSError):
                # The controller went away; keep measuring into the journal.
                self.stdout_ok = False


def _end_torn_line(journal: Path) -> None:
    """Terminate a last line torn by a killed agent, so the next record starts on a line of its own."""
    try:
        with open(journal, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
    except FileNotFoundError:
        pass


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


def _die_with_parent() -> None:
    """In the worker (Linux): SIGKILL when the agent dies, so a killed agent leaves no case running."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: a container's or taskset's limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def precheck(case: dict[str, Any], caps: dict[str, Any], available_mb: float | None,
             measure_cfg: dict[str, Any] | None = None) -> str | None:
    """Why a case cannot run here, found before starting a worker: a missing backend, too little memory,
    an op the probe's canary saw die (SIGILL: a build for another CPU), or more threads than CPUs
    (unless measure.allow_oversubscribe)."""
    from workloads.memory import memory_skip_reason

    modules = caps.get("modules", {})
    for module in BACKEND_MODULES.get(case.get("backend", "torch"), ("torch",)):
        if not modules.get(module):
            return (f"{module} is not installed in the device's python ({sys.executable}); the harness never "
                    f"installs packages on a device: install it there, or leave this backend out for it")
    threads, cpus = case.get("threads"), usable_cpus()
    if threads and int(threads) > cpus and not (measure_cfg or {}).get("allow_oversubscribe"):
        return (f"threads {threads} is more than the {cpus} CPU(s) this device lets the harness use: threads "
                f"would share CPUs and time each other. Use threads <= {cpus} for this device, or set "
                "measure.allow_oversubscribe: true to measure it anyway")
    return probe.canary_skip_reason(case, caps) or memory_skip_reason(case, available_mb)


def _available_mb(worker: "Worker | None") -> float | None:
    """Memory a new case can use: what is free plus what a running worker already holds for itself."""
    try:
        import psutil

        free = psutil.virtual_memory().available / 2 ** 20
        if worker is not None and worker.alive:
            free += psutil.Process(worker.proc.pid).memory_info().rss / 2 ** 20
        return free
    except Exception:  # psutil missing or /proc unreadable: do not guess
        return None


class Worker:
    """One worker process and the line protocol to it."""

    def __init__(self, python: str) -> None:
        self.closed = False  # its stdout hit EOF: dead, even if not yet reapable
        self.proc = subprocess.Popen(
            [python, "-m", "harness.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None, text=True, bufsize=1, preexec_fn=_die_with_parent)
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
                    self.closed = True
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


def take_lease(plan: dict[str, Any], reporter: Reporter) -> DeviceLease | None:
    """The device lease for this run (waiting, with `waiting` records, while another run holds it); None
    after reporting `busy` when the wait timed out."""
    run_id = plan["run_id"]
    lease = DeviceLease(plan.get("workdir") or "~/.cache/attn-harness")
    holder = Holder(run_id=run_id, device=str(plan.get("device")), pid=os.getpid(), since=time.time(),
                    host=socket.gethostname(), controller=plan.get("controller"))

    def waiting(current: Holder | None, waited_s: float) -> None:
        reporter.emit({"type": "waiting", "run_id": run_id, "device": plan.get("device"),
                       "holder": asdict(current) if current else None, "waited_s": round(waited_s, 1),
                       "wait_timeout_s": plan.get("wait_timeout_s"), "at": time.time()})

    try:
        waited = lease.acquire(holder, wait_timeout_s=plan.get("wait_timeout_s"), on_wait=waiting)
    except LeaseTimeout as exc:
        reporter.emit({"type": "busy", "run_id": run_id, "device": plan.get("device"), "error": str(exc),
                       "holder": asdict(exc.holder) if exc.holder else None, "at": time.time()}, durable=True)
        return None
    if waited >= 0.5:
        reporter.emit({"type": "leased", "run_id": run_id, "waited_s": round(waited, 1), "at": time.time()})
    return lease


def run_plan(plan: dict[str, Any], reporter: Reporter, python: str = sys.executable) -> None:
    """Run every case in the plan, reporting as it goes. Never raises for a case-level problem."""
    run_id = plan["run_id"]
    workdir = plan.get("workdir")
    # Held until this process exits (the kernel drops it then, however we end).
    if take_lease(plan, reporter) is None:
        return
    worker: Worker | None
    try:
        worker = Worker(python)
    except RuntimeError:
        # No worker here (torch missing, say): the agent probes itself and every case gets the reason.
        worker = None
    # The worker probes: it has imported torch already, so the agent itself stays light and a sweep pays
    # one torch import, not two.
    probed = worker.ask({"probe": True, "workdir": workdir}, WORKER_START_TIMEOUT_S) if worker else None
    fp = probed["fingerprint"] if probed and "fingerprint" in probed else probe.fingerprint(workdir)
    caps = probe.capabilities(fp)
    plugin_specs, plugin_statuses, worker = load_plugins(plan.get("plugins") or [], worker, python)
    plugin_errors = {s["id"]: s.get("error") or "did not load" for s in plugin_statuses if not s.get("ok")}
    hello = {"type": "hello", "run_id": run_id, "device": plan.get("device"), "fingerprint": fp,
             "agent_pid": os.getpid(), "agent_started_at": AGENT_STARTED_AT, "at": time.time()}
    if plan.get("plugins"):
        hello["plugins"] = plugin_statuses
    reporter.emit(hello)
    if plan.get("power") and worker is not None:
        idle_s = float(plan.get("measure", {}).get("idle_s", 5.0))
        idle = worker.ask({"idle": plan["power"], "seconds": idle_s}, idle_s + WORKER_START_TIMEOUT_S)
        reporter.emit({"type": "idle", "run_id": run_id, **(idle or {"idle_power_w": None,
                                                                   "error": "no answer from the worker"})})
    done = journaled(reporter.journal, run_id)
    measure_cfg = plan.get("measure", {})
    timeout = float(measure_cfg.get("timeout_s", 120.0))
    try:
        processes = max(1, int(measure_cfg.get("processes") or 1))
        per_process = MeasureConfig.from_dict(measure_cfg).for_one_process().to_dict()
    except (TypeError, ValueError):  # the controller validated the matrix; a plan by hand may not be
        processes, per_process = 1, measure_cfg
    # measure.processes > 1: every case is measured once per pass, each pass in a fresh worker process, so the
    # processes of one case are spread over the whole run and a few seconds of disturbance (a noisy neighbour
    # on the host) fall on one of them, not on all. Each pass's answer is journaled (`partial`) and a resumed
    # run measures no pass twice; the result comes with the last pass.
    partial = journaled_partials(reporter.journal, run_id) if processes > 1 else {}
    pending: list[tuple[int, dict[str, Any], float | None]] = []  # (index, item, contention wait) in plan order

    def finish(index: int, item: dict[str, Any], answer: dict[str, Any], quiet: Any) -> None:
        case = item["case"]
        record = {"type": "result", "run_id": run_id, "device": plan.get("device"), "case_hash": item["hash"],
                  "index": index, **answer}
        if quiet is not None:
            record["contention_wait"] = quiet
        if case.get("threads") and int(case["threads"]) > usable_cpus():
            record["oversubscribed"] = {"threads": case["threads"], "cpus": usable_cpus()}
            record["notes"] = [*(record.get("notes") or []),
                               f"threads {case['threads']} oversubscribes the {usable_cpus()} CPU(s) "
                               "(measure.allow_oversubscribe): its threads share CPUs"]
        reporter.emit(record, durable=True)

    def wait_quiet() -> Any:
        if measure_cfg.get("on_contention") != "wait":
            return None
        from devices.contention import wait_for_quiet

        return wait_for_quiet(float(measure_cfg.get("max_cpu_other", 0.10)),
                              float(measure_cfg.get("contention_wait_s", 60.0)))

    def request_for(item: dict[str, Any]) -> dict[str, Any]:
        return {"case": item["case"], "measure": per_process, "seed": plan.get("seed", 0), "caps": caps,
                "power": plan.get("power"), "test_slowdown": plan.get("test_slowdown"), "workdir": workdir,
                "plugins": plugin_specs, "plugin": item.get("plugin")}

    try:
        for index, item in enumerate(plan["cases"]):
            case_hash, case = item["hash"], item["case"]
            if case_hash in done:
                record = dict(done[case_hash], replayed=True)
                reporter.emit(record)
                continue
            if partial.get(case_hash):  # its first pass is journaled: measured, not to be measured again
                pending.append((index, item, None))
                continue
            quiet = wait_quiet()
            reporter.emit({"type": "start", "run_id": run_id, "case_hash": case_hash, "index": index,
                           **({"pass": 1, "of": processes} if processes > 1 else {})})
            started = time.time()
            planned_error = item.get("error") or plugin_errors.get(item.get("plugin") or "")
            if planned_error:
                reporter.emit({"type": "result", "run_id": run_id, "device": plan.get("device"),
                               "case_hash": case_hash, "index": index, "status": "failed",
                               "error": str(planned_error), "started_at": started, "finished_at": time.time()},
                              durable=True)
                continue
            reason = precheck(case, caps, _available_mb(worker), measure_cfg)
            if reason:
                reporter.emit({"type": "result", "run_id": run_id, "device": plan.get("device"),
                               "case_hash": case_hash, "index": index, "status": "skipped", "error": reason,
                               "started_at": started, "finished_at": time.time()}, durable=True)
                continue
            if worker is None or not worker.alive:
                try:
                    worker = Worker(python)
                except RuntimeError as exc:
                    worker = None
                    reporter.emit({"type": "result", "run_id": run_id, "device": plan.get("device"),
                                   "case_hash": case_hash, "index": index, "status": "failed", "error": str(exc),
                                   "started_at": started, "finished_at": time.time()}, durable=True)
                    continue
            answer = _ask(worker, request_for(item), timeout, started)
            if answer.pop("_worker_gone", False):
                worker = None
            if answer.get("status") == "ok" and processes > 1:
                partial[case_hash] = [answer]
                pending.append((index, item, quiet))
                reporter.emit({"type": "partial", "run_id": run_id, "case_hash": case_hash, "index": index,
                               "pass": 1, "answer": answer}, durable=True)
                continue
            finish(index, item, answer, quiet)
        for pass_no in range(2, processes + 1):
            # A fresh worker process for each pass, reused across its cases (one torch import per pass).
            if worker is not None:
                worker.close()
                worker = None
            for index, item, quiet in pending:
                case_hash = item["hash"]
                answers = partial[case_hash]
                if len(answers) < pass_no:
                    reporter.emit({"type": "start", "run_id": run_id, "case_hash": case_hash, "index": index,
                                   "pass": pass_no, "of": processes})
                    started = time.time()
                    wait_quiet()
                    if worker is None or not worker.alive:
                        try:
                            worker = Worker(python)
                        except RuntimeError as exc:
                            worker = None
                            further = {"status": "failed", "error": str(exc)}
                    if worker is not None:
                        further = _ask(worker, {**request_for(item), "power": None, "timing_only": True}, timeout,
                                       started)
                        if further.pop("_worker_gone", False):
                            worker = None
                    answers.append(further)
                    if pass_no < processes:
                        reporter.emit({"type": "partial", "run_id": run_id, "case_hash": case_hash, "index": index,
                                       "pass": pass_no, "answer": further}, durable=True)
                        continue
                if pass_no == processes:
                    finish(index, item, merge_processes(answers[0], answers[1:processes]), quiet)
        # Before the worker's teardown (a second or more with torch loaded): nothing is left to wait for.
        reporter.emit({"type": "done", "run_id": run_id, "at": time.time()}, durable=reporter.detached)
    finally:
        if worker is not None:
            worker.close()


def journaled_partials(journal: Path | None, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """The answers of the passes already journaled for this run (measure.processes > 1), by case hash, in
    pass order; a case's passes after a gap (a torn line) are left to be measured again."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    if not journal or not journal.exists():
        return {}
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("type") == "partial" and record.get("run_id") == run_id and \
                isinstance(record.get("answer"), dict) and isinstance(record.get("pass"), int):
            found.setdefault(record["case_hash"], {})[record["pass"]] = record["answer"]
    out: dict[str, list[dict[str, Any]]] = {}
    for case_hash, by_pass in found.items():
        answers = []
        while len(answers) + 1 in by_pass:
            answers.append(by_pass[len(answers) + 1])
        if answers:
            out[case_hash] = answers
    return out


def _ask(worker: Worker, request: dict[str, Any], timeout: float, started: float) -> dict[str, Any]:
    """The worker's answer to one case; a timeout kills the worker. `_worker_gone`: it cannot be asked again."""
    answer = worker.ask(request, timeout)
    if answer is not None:
        return answer
    # EOF comes a moment before a killed worker can be reaped: `alive` alone would call it a timeout.
    if worker.alive and not worker.closed:
        worker.kill()
        answer = {"status": "timeout", "error": f"case exceeded measure.timeout_s = {timeout:g} s and was cut off"}
    else:
        answer = {"status": "failed", "error": worker.exit_reason()}
    return {**answer, "started_at": started, "finished_at": time.time(), "_worker_gone": True}


def merge_processes(first: dict[str, Any], more: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from a case measured in several worker processes (pure): the samples in the order taken,
    and `processes` saying which came from which, so that a comparison can weigh the spread between
    processes. Accuracy, energy and the window they were measured over (`calls`, `window_start`,
    `window_end`) come from the first process; the worst contention, throttling and peak memory of any. A
    further process that failed is named in the notes; its samples are not invented."""
    merged = dict(first)
    samples = list(first.get("samples_ms") or [])
    per = [_process_summary(first)]
    notes = list(first.get("notes") or [])
    for k, other in enumerate(more, start=2):
        if other.get("status") != "ok" or not other.get("samples_ms"):
            notes.append(f"process {k} of {len(more) + 1}: {other.get('status')}: {other.get('error')}; the result "
                         "holds the other processes' samples")
            continue
        samples += list(other["samples_ms"])
        per.append(_process_summary(other))
        notes += [f"process {k}: {n}" for n in other.get("notes") or []]
        for key in ("peak_mem_mb", "cpu_other"):
            values = [v for v in (merged.get(key), other.get(key)) if isinstance(v, (int, float))]
            merged[key] = max(values) if values else None
        merged["contended"] = bool(merged.get("contended")) or bool(other.get("contended"))
        if (other.get("thermal") or {}).get("throttled") and not (merged.get("thermal") or {}).get("throttled"):
            merged["thermal"] = {**(merged.get("thermal") or {}), "throttled": True,
                                 "throttled_in_process": k}
        merged["finished_at"] = other.get("finished_at", merged.get("finished_at"))
    merged["samples_ms"] = samples
    merged["processes"] = per
    merged["notes"] = notes
    return merged


def _process_summary(answer: dict[str, Any]) -> dict[str, Any]:
    # calls and the window per process: the row's own `calls`, `window_start` and `window_end` are the first
    # process's, as its energy is, so that energy per call derived from them stays true.
    return {"n": len(answer.get("samples_ms") or []), "worker_pid": answer.get("worker_pid"),
            "inner_loops": answer.get("inner_loops"), "calls": answer.get("calls"),
            "window_start": answer.get("window_start"), "window_end": answer.get("window_end"),
            "cpu_other": answer.get("cpu_other"), "stopped_by": answer.get("stopped_by")}


def load_plugins(specs: list[dict[str, Any]], worker: Worker | None, python: str
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Worker | None]:
    """Have the worker import the plan's plugins one at a time: (the specs that loaded, to send with every
    case; a status per plugin; the worker, a fresh one if a plugin's import killed the last). A plugin
    whose import kills the worker (os._exit, a crash in native code) is named, left out, and a fresh
    worker takes the others."""
    good: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    for spec in specs:
        if worker is None:
            statuses.append({"id": spec.get("id"), "origin": spec.get("origin"), "ok": False,
                             "error": "no worker could start on this device to load it"})
            continue
        answer = worker.ask({"plugins": good + [spec]}, WORKER_START_TIMEOUT_S)
        if answer is None or answer.get("error"):
            if answer is None:
                why = worker.exit_reason() if not worker.alive or worker.closed else "it took too long"
                worker.kill()
                try:
                    worker = Worker(python)
                except RuntimeError:
                    worker = None
                error = f"plugin {spec.get('origin')}: importing it ended the worker ({why})"
            else:
                error = str(answer["error"])
            statuses.append({"id": spec.get("id"), "origin": spec.get("origin"), "ok": False, "error": error})
            continue
        status = answer["plugins"][-1]
        statuses.append(status)
        if status.get("ok"):
            good.append(spec)
    return good, statuses, worker


def iter_plan_source(path: str | None) -> Iterator[str]:
    if path and path != "-":
        yield Path(path).read_text()
    else:
        yield sys.stdin.read()


def stop_agent(pid_file: Path) -> str:
    """SIGKILL the agent in `pid_file` and its worker (its process group); says what it did."""
    pid = read_pid(pid_file)
    if not is_agent(pid):
        return f"no agent running (pid file {pid_file}: {pid})"
    assert pid is not None
    try:
        os.killpg(pid, signal.SIGKILL)  # the detached agent leads its own session and group
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    return f"killed agent {pid}"


def detach(pid_file: Path, log: Path, stay: bool = False) -> int | None:
    """Become a daemon (double fork, new session, stdio off the SSH channel, stderr to `log`).

    Returns None in the daemon. The launching process waits until the pid file is written, then prints the
    daemon's pid and exits 0 (so the SSH command that started us returns at once and a dropped session
    cannot reach the agent), or with `stay` returns the pid (to follow the journal in the same command).
    """
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(write_end)
        with os.fdopen(read_end) as fh:
            pid = fh.read().strip()
        os.waitpid(first, 0)
        if stay and pid:
            return int(pid)
        print(pid, flush=True)
        os._exit(0 if pid else 1)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.setpgid(0, 0)  # lead a process group with the worker in it, so a stop kills both
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    log.parent.mkdir(parents=True, exist_ok=True)
    os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 2)
    sys.stdout = open(os.devnull, "w")
    write_pid(pid_file)
    os.write(write_end, str(os.getpid()).encode())
    os.close(write_end)
    return None


def follow(journal: Path, offset: int, pid_file: Path | None, out: BinaryIO, beat_s: float = 2.0,
           poll_s: float = 0.05) -> None:
    """Print the journal from byte `offset` as it grows ("J <line>"), a heartbeat when idle
    ("B {pos, pid, alive}"), and "E {pos, pid, seen_alive}" once the agent has exited (or was not running)
    and every complete line is out.

    Only complete lines are sent, so `pos` is always a line boundary a reconnect can resume at. Polling
    a file's size costs the device nothing measurable, unlike a fresh SSH command every poll would.
    """
    pid = read_pid(pid_file)
    pos = offset
    fh: BinaryIO | None = None
    last_out = 0.0
    seen_alive = False
    while True:
        alive = is_agent(pid)  # checked before reading: what a dead agent wrote is all there
        seen_alive = seen_alive or alive
        if fh is None:
            try:
                fh = open(journal, "rb")
            except FileNotFoundError:
                fh = None
        sent = False
        more = False
        if fh is not None:
            fh.seek(pos)
            chunk = fh.read(1 << 20)
            more = len(chunk) == 1 << 20
            complete = chunk[: chunk.rfind(b"\n") + 1]
            for line in complete.split(b"\n")[:-1]:
                out.write(b"J " + line + b"\n")
            pos += len(complete)
            sent = bool(complete)
        now = time.monotonic()
        if not sent and now - last_out >= beat_s:
            out.write(b"B " + json.dumps({"pos": pos, "pid": pid, "alive": alive}).encode() + b"\n")
            sent = True
        if sent:
            out.flush()  # a dropped session ends us here (EPIPE)
            last_out = now
        if more:
            continue
        if not alive:
            out.write(b"E " + json.dumps({"pos": pos, "pid": pid, "seen_alive": seen_alive}).encode() + b"\n")
            out.flush()
            return
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.agent")
    parser.add_argument("--plan", default="-", help="plan JSON file ('-' for stdin)")
    parser.add_argument("--journal", default=None, help="append-only result journal")
    parser.add_argument("--detach", action="store_true",
                        help="run as a daemon (needs --journal, --pid-file, --log); print its pid")
    parser.add_argument("--pid-file", default=None, help="the detached agent's pid")
    parser.add_argument("--log", default=None, help="the detached agent's stderr")
    parser.add_argument("--follow", action="store_true",
                        help="print the journal from --offset as it grows until the agent in --pid-file exits")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--stop", action="store_true", help="kill the agent in --pid-file and its worker")
    parser.add_argument("--beat", type=float, default=2.0, help="heartbeat seconds when --follow is idle")
    args = parser.parse_args(argv)
    journal = Path(args.journal).expanduser() if args.journal else None
    pid_file = Path(args.pid_file).expanduser() if args.pid_file else None
    if args.stop:
        if pid_file is None:
            parser.error("--stop needs --pid-file")
        print(stop_agent(pid_file), flush=True)
        return 0
    if args.follow and not args.detach:
        if journal is None:
            parser.error("--follow needs --journal")
        try:
            follow(journal, args.offset, pid_file, sys.stdout.buffer, beat_s=args.beat)
        except BrokenPipeError:
            pass  # the controller went away; it will follow again from its offset
        return 0
    plan = json.loads(next(iter_plan_source(args.plan)))
    # A dropped SSH session must not kill a detached agent through SIGPIPE/SIGHUP.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.detach:
        if journal is None or pid_file is None or not args.log:
            parser.error("--detach needs --journal, --pid-file and --log")
        journal.parent.mkdir(parents=True, exist_ok=True)
        launched = detach(pid_file, Path(args.log).expanduser(), stay=args.follow)
        if launched is not None:
            # `--detach --follow`: this launcher reports the daemon ("S {pid}") and follows its journal, so
            # starting and following take one SSH command and one python start-up, not two.
            try:
                sys.stdout.buffer.write(b"S " + json.dumps({"pid": launched}).encode() + b"\n")
                follow(journal, args.offset, pid_file, sys.stdout.buffer, beat_s=args.beat)
            except BrokenPipeError:
                pass
            return 0
    elif pid_file is not None:
        write_pid(pid_file)  # a local agent: `--resume` checks it is gone before starting another
    reporter = Reporter(journal, detached=args.detach)
    run_plan(plan, reporter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
