"""The controller: plans a sweep per device, runs the agents, stores each result as it arrives.

`run_sweep(...)` is the keyword API the CLI and the nightly job call. One thread per device talks to that
device's agent (a local subprocess, or over SSH); the calling thread is the only one that writes to the
database, one transaction per result, so an interrupted run loses nothing it had received. A device that
fails never stops the others: its part ends `unreachable` or `failed` and the run ends `partial`.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

from devices.inventory import DeviceConfig, Inventory
from kernels.registry import lookup
from results.store import HEARTBEAT_INTERVAL_S, Store
from workloads.errors import ConfigError, DeviceError, HarnessError, NotRegisteredError
from workloads.matrix import DEFAULT_MAX_CASES, Sweep, parse_matrix
from workloads.spec import case_hash, case_label
from workloads.stats import instability_warning

REPO_ROOT = Path(__file__).resolve().parent.parent
# Extra seconds past a case's timeout before the controller gives up on a silent agent.
AGENT_SILENCE_GRACE_S = 90.0


class AgentSession(Protocol):
    """A running agent: lines it reports, and a way to stop it."""

    def lines(self, silence_timeout_s: float) -> Iterator[dict[str, Any]]: ...

    def stop(self) -> None: ...


class Transport(Protocol):
    def start(self, plan: dict[str, Any]) -> AgentSession: ...


class LocalAgent:
    """The agent as a subprocess of the controller, in its own session so Ctrl-C reaches only us."""

    def __init__(self, device: DeviceConfig, plan: Mapping[str, Any], code_root: Path = REPO_ROOT) -> None:
        workdir = Path(os.path.expanduser(device.workdir))
        workdir.mkdir(parents=True, exist_ok=True)
        self.journal = workdir / "journal" / f"{plan['run_id']}-{device.name}.jsonl"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), env.get("PYTHONPATH")]))
        # cwd is the code root too: `python -m` puts the working directory first on sys.path.
        self.proc = subprocess.Popen(
            [device.python or "python3", "-m", "harness.agent", "--plan", "-", "--journal", str(self.journal)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
            cwd=str(code_root))
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(plan))
        self.proc.stdin.close()

    def lines(self, silence_timeout_s: float) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], silence_timeout_s)
            if not ready:
                raise DeviceError(f"the agent said nothing for {silence_timeout_s:.0f} s; it was stopped")
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                if code != 0:
                    raise DeviceError(f"the agent exited with status {code} before finishing")
                return
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a killed agent: the journal has the durable copy

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


class LocalTransport:
    def __init__(self, device: DeviceConfig) -> None:
        self.device = device

    def start(self, plan: dict[str, Any]) -> AgentSession:
        return LocalAgent(self.device, plan)


def transport_for(device: DeviceConfig, inventory: Inventory) -> Transport:
    if device.is_local:
        return LocalTransport(device)
    from harness.ssh import SSHTransport  # fabric is a controller-only dependency

    return SSHTransport(device, inventory)


@dataclass
class DeviceOutcome:
    name: str
    status: str = "pending"  # complete, unreachable, failed, interrupted
    error: str | None = None
    planned: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    governor: str | None = None


@dataclass
class RunOutcome:
    run_id: str
    status: str
    devices: dict[str, DeviceOutcome]
    dry_run: bool = False
    plan: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Planned cases no kernel implements (stored as skipped with this reason), by case hash.
    not_implemented: dict[str, str] = field(default_factory=dict)
    # Every stored measurement of the run by status (a resumed run includes the earlier ones).
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return 130
        bad = self.counts.get("failed", 0) + self.counts.get("timeout", 0)
        return 1 if bad or self.status != "complete" else 0


Events = Callable[[str, str, Mapping[str, Any]], None]  # (device, kind, payload)


def _no_events(device: str, kind: str, payload: Mapping[str, Any]) -> None:
    pass


TEST_SLOWDOWN_ENV = "HARNESS_TEST_SLOWDOWN"


def planted_slowdown_from_env() -> dict[str, int] | None:
    """Test-only: `HARNESS_TEST_SLOWDOWN="fp32=3,int8=2"` (or `"*=3"`) repeats matching kernels' work, to
    plant a known regression without changing case identities. Recorded with every result it touches."""
    spec = os.environ.get(TEST_SLOWDOWN_ENV)
    if not spec:
        return None
    out: dict[str, int] = {}
    for part in spec.split(","):
        precision, _, factor = part.partition("=")
        factor = factor.strip()
        if not precision.strip() or not factor.isascii() or not factor.isdigit() or len(factor) > 6 \
                or int(factor) < 1:
            raise ConfigError(f"{TEST_SLOWDOWN_ENV}={spec!r}: expected PRECISION=FACTOR[,...] with FACTOR >= 1",
                              key=TEST_SLOWDOWN_ENV)
        out[precision.strip()] = int(factor)
    return out


def check_registered(sweep: Sweep, file: str, *, strict: bool = True) -> dict[str, str]:
    """Cases no kernel implements, by hash, with the reason they will be stored as `skipped`.

    A value no kernel knows at all (a precision no kernel computes, say) is a ConfigError naming the
    known values; with `strict`, so is any combination without a kernel. Raised before anything is
    written."""
    from kernels.registry import unknown_values

    for key, value, known in unknown_values(sweep.cases):
        raise ConfigError(f"no kernel computes {key} {value!r}; kernels know: {', '.join(known)}", file=file,
                          key=key)
    missing: dict[str, str] = {}
    for case in sweep.cases:
        try:
            lookup(case)
        except NotRegisteredError as exc:
            if strict:
                raise ConfigError(f"{exc} (case {case_label(case)}); without --strict it would be stored as "
                                  "skipped", file=file, key="precision") from None
            missing[case_hash(case)] = str(exc)
    return missing


def run_sweep(inventory: Inventory, store: Store | None, *, devices: list[str], matrix_path: str | None = None,
              sweep: Sweep | None = None, tag: str | None = None, resume: str | None = None,
              dry_run: bool = False, events: Events = _no_events,
              transport_factory: Callable[[DeviceConfig, Inventory], Transport] = transport_for,
              strict: bool = False, max_cases: int | None = DEFAULT_MAX_CASES) -> RunOutcome:
    """Expand the matrix, plan per device, run, and store each result as it arrives.

    Everything about the input is checked before anything is written: the matrix (at most `max_cases`
    cases), the devices, the kernels (`strict`: a combination without a kernel is refused rather than
    stored as skipped), the test-only slowdown variable."""
    test_slowdown = planted_slowdown_from_env()
    if resume:
        if store is None:
            raise HarnessError("--resume needs the results database")
        run = store.get_run(resume)
        if run.status == "complete":
            raise HarnessError(f"run {run.id} is complete; nothing to resume")
        sweep = parse_matrix(run.matrix_text, f"<matrix of run {run.id}>", max_cases=None)
        run_devices = store.run_devices(run.id)
        names = [d for d in devices if d in run_devices] if devices else run_devices
        unknown = [d for d in devices if d not in run_devices]
        if unknown:
            raise ConfigError(f"run {run.id} did not include device(s) {', '.join(unknown)}; it ran on "
                              f"{', '.join(run_devices)}", key="--devices")
        run_id = run.id
    else:
        if sweep is None:
            if matrix_path is None:
                raise ConfigError("give --matrix FILE (for example sweeps/quick.yaml)", key="--matrix")
            from workloads.matrix import load_matrix

            sweep = load_matrix(matrix_path, max_cases=max_cases)
        if not devices:
            raise ConfigError("give --devices NAME[,NAME...] (the device 'local' always exists)", key="--devices")
        names = devices
        run_id = ""
    not_implemented = check_registered(sweep, matrix_path or "<matrix>", strict=strict)
    configs = inventory.resolve(names)
    if len(set(names)) != len(names):
        raise ConfigError(f"a device is named twice in --devices: {','.join(names)}", key="--devices")

    plans: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        done = store.stored_hashes(run_id, name) if resume and store else set()
        plans[name] = [{"hash": case_hash(c), "case": c} for c in sweep.cases if case_hash(c) not in done]
    if dry_run:
        return RunOutcome(run_id="", status="dry-run", devices={n: DeviceOutcome(n, planned=len(p))
                                                               for n, p in plans.items()},
                          dry_run=True, plan=plans, not_implemented=not_implemented)
    assert store is not None
    if resume:
        store.reopen_run(run_id)
    else:
        run_id = store.create_run(matrix_name=sweep.name, matrix_text=sweep.source, measure=sweep.measure.to_dict(),
                                  devices=names, tag=tag)
    outcome = RunOutcome(run_id=run_id, status="running",
                         devices={n: DeviceOutcome(n, planned=len(plans[n])) for n in names})
    events("", "run", {"run_id": run_id, "plans": {n: len(p) for n, p in plans.items()}})
    cases_by_hash = {case_hash(c): c for c in sweep.cases}
    inbox: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
    sessions: dict[str, AgentSession] = {}
    stop = threading.Event()
    silence = sweep.measure.timeout_s + AGENT_SILENCE_GRACE_S

    def drive(config: DeviceConfig) -> None:
        name = config.name
        plan = {"run_id": run_id, "device": name, "cases": plans[name], "measure": sweep.measure.to_dict(),
                "workdir": config.workdir, "power": dict(config.power) if config.power else None, "seed": 0,
                "test_slowdown": test_slowdown}
        try:
            if not plans[name]:
                inbox.put((name, "end", {"status": "complete"}))
                return
            session = transport_factory(config, inventory).start(plan)
            sessions[name] = session
            finished = False
            for record in session.lines(silence):
                if stop.is_set():
                    break
                inbox.put((name, record.get("type", "?"), record))
                if record.get("type") == "done":
                    finished = True
            if stop.is_set():
                return
            if finished:
                inbox.put((name, "end", {"status": "complete"}))
            else:
                inbox.put((name, "end", {"status": "failed", "error": "the agent stopped before finishing"}))
        except HarnessError as exc:
            # A transport may say what the device's state is (lost mid-run: unreachable, not failed).
            status = getattr(exc, "device_status", None) or ("unreachable" if name not in sessions else "failed")
            inbox.put((name, "end", {"status": status, "error": str(exc)}))
        except Exception as exc:  # a transport bug must not take the other devices down
            inbox.put((name, "end", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}))

    threads = [threading.Thread(target=drive, args=(c,), name=f"device-{c.name}", daemon=True) for c in configs]
    for t in threads:
        t.start()
    running = set(names)
    next_beat = time.monotonic() + HEARTBEAT_INTERVAL_S
    try:
        while running:
            if time.monotonic() >= next_beat:  # a fresh heartbeat makes other controllers refuse --resume
                store.heartbeat(run_id)
                next_beat = time.monotonic() + HEARTBEAT_INTERVAL_S
            try:
                name, kind, record = inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            _handle(store, run_id, name, kind, record, cases_by_hash, outcome, events)
            if kind == "end":
                running.discard(name)
    except KeyboardInterrupt:
        stop.set()
        for session in list(sessions.values()):
            session.stop()
        # Keep everything already received.
        while True:
            try:
                name, kind, record = inbox.get_nowait()
            except queue.Empty:
                break
            if kind != "end":
                _handle(store, run_id, name, kind, record, cases_by_hash, outcome, events)
        for name in running:
            outcome.devices[name].status = "interrupted"
            store.set_run_device(run_id, name, status="interrupted")
        outcome.status = "interrupted"
        outcome.counts = store.status_counts(run_id)
        store.finish_run(run_id, "interrupted")
        events("", "interrupted", {"run_id": run_id})
        return outcome
    for t in threads:
        t.join(timeout=5)
    complete = all(d.status == "complete" for d in outcome.devices.values())
    outcome.status = "complete" if complete else "partial"
    outcome.counts = store.status_counts(run_id)
    store.finish_run(run_id, outcome.status)
    events("", "finished", {"run_id": run_id, "status": outcome.status})
    return outcome


def _handle(store: Store, run_id: str, name: str, kind: str, record: dict[str, Any],
            cases_by_hash: Mapping[str, Mapping[str, Any]], outcome: RunOutcome, events: Events) -> None:
    device = outcome.devices[name]
    if kind == "hello":
        store.set_run_device(run_id, name, status="running", fingerprint=record.get("fingerprint"))
        device.governor = (record.get("fingerprint") or {}).get("governor")
        events(name, "hello", record)
    elif kind == "idle":
        store.set_run_device(run_id, name, idle_power_w=record.get("idle_power_w"),
                             power_source=record.get("power_source"))
    elif kind == "result":
        case = cases_by_hash.get(record.get("case_hash", ""))
        if case is None or record.get("run_id") != run_id:
            return  # not ours (a stale journal line): never store it under this run
        if record.get("samples_ms") and not record.get("replayed"):
            warning = instability_warning(record["samples_ms"], case_label(case), name, device.governor)
            if warning:
                record = {**record, "notes": [*(record.get("notes") or []), warning]}
        stored = store.add_result(run_id, name, case, record)
        if stored.stored:
            device.counts[record["status"]] = device.counts.get(record["status"], 0) + 1
        events(name, "result", {**record, "case": case, "stored": stored.stored})
    elif kind == "start":
        events(name, "start", {**record, "case": cases_by_hash.get(record.get("case_hash", ""))})
    elif kind == "end":
        device.status = record["status"]
        device.error = record.get("error")
        store.set_run_device(run_id, name, status=record["status"], error=record.get("error"))
        events(name, "end", record)
