"""The controller: plans a sweep per device, runs the agents, stores each result as it arrives.

`run_sweep(...)` is the keyword API the CLI and the nightly job call. One thread per device talks to that
device's agent (a local subprocess, or over SSH); the calling thread is the only one that writes to the
database, one transaction per result, so an interrupted run loses nothing it had received. A device that
fails never stops the others: its part ends `unreachable`, `busy` or `failed` and the run ends `partial`.

Every way a run ends is recorded:
- SIGINT, SIGTERM (systemd, `timeout`) and SIGHUP (a closed terminal) stop the agents on every device,
  mark the run `interrupted` with the signal's name, keep every stored result and exit 130/143/129. The
  handlers only set a flag the loop checks twice a second: raising from a handler mid-write could leave a
  transaction half done.
- A database error mid-run (a full disk) stops the agents and marks the run `failed` with the reason when
  the database still takes that write; the agents' journals keep what they finished for `--resume`.
- A controller that dies without a chance to clean up (SIGKILL, OOM, power loss) leaves a `running` run
  whose process is gone or whose heartbeat is stale: it reads as `abandoned` (`results.store.run_state`),
  and `--resume` refuses while an agent of that run is still alive on any device (`--stop-stale` stops it).

Users' kernel plugins (`harness.plugins`) are loaded here before the matrix is checked, shipped with the
plan (inside the bundle over SSH, copied into the workdir for `local`), and recorded: every plugin's path,
sha256, git revision and dirty flag in each device's fingerprint, and the record of the plugin whose kernel
ran in each of its rows' details. A resumed run takes its plugins from `--plugin` again, never from the
database, and refuses ones whose content changed.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

from sqlalchemy.exc import SQLAlchemyError

from devices.inventory import DeviceConfig, Inventory
from harness import lease
from harness import plugins as user_plugins
from kernels.registry import lookup, origin_of
from results.store import HEARTBEAT_INTERVAL_S, Store
from workloads.errors import ConfigError, DatabaseError, DeviceError, HarnessError, NotRegisteredError, StoreError
from workloads.matrix import DEFAULT_MAX_CASES, Sweep, parse_matrix
from workloads.spec import case_hash, case_label, is_known
from workloads.stats import instability_warning

REPO_ROOT = Path(__file__).resolve().parent.parent
# Extra seconds past a case's timeout before the controller gives up on a silent agent.
AGENT_SILENCE_GRACE_S = 90.0
# How long a run waits for a device another run holds, unless --wait-timeout says otherwise.
DEFAULT_WAIT_TIMEOUT_S = 3600.0
# How often the loop looks at the stop flag (and the inbox).
POLL_S = 0.2
# Signals that end a run the way Ctrl-C does, and the exit status each gives (128 + the signal's number).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def exit_code_for(signum: int) -> int:
    return 128 + int(signum)


class RunFailed(StoreError):
    """The results database failed mid-run (disk full, connection lost): the run was stopped."""

    exit_code = 1


class StopRequest:
    """SIGINT/SIGTERM/SIGHUP turned into a flag the controller's loop checks (installed on the main thread
    only; elsewhere, as in tests that drive `run_sweep` from a thread, signals keep their handlers)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        self.event.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a stop request"


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
        stem = lease.run_file_stem(str(workdir), str(plan["run_id"]), device.name)
        self.journal = Path(stem + ".jsonl")
        if plan.get("plugins"):  # the local device runs its own copy of exactly what was hashed
            plan = dict(plan, plugins=user_plugins.materialize(plan["plugins"], workdir))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), env.get("PYTHONPATH")]))
        # cwd is the code root too: `python -m` puts the working directory first on sys.path.
        self.proc = subprocess.Popen(
            [device.python or "python3", "-m", "harness.agent", "--plan", "-", "--journal", str(self.journal),
             "--pid-file", stem + ".pid"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True, cwd=str(code_root))
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(plan).encode())
        self.proc.stdin.close()

    def lines(self, silence_timeout_s: float) -> Iterator[dict[str, Any]]:
        # Raw reads of whatever the pipe holds, split here: a buffered reader after select() sits on lines
        # it already read (a case's `start` line then showed only when the case had finished).
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            ready, _, _ = select.select([fd], [], [], silence_timeout_s)
            if not ready:
                raise DeviceError(f"the agent said nothing for {silence_timeout_s:.0f} s; it was stopped")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                code = self.proc.wait()
                if code != 0:
                    raise DeviceError(f"the agent exited with status {code} before finishing")
                return
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for line in complete:
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
        self.workdir = Path(os.path.expanduser(device.workdir))

    def start(self, plan: dict[str, Any]) -> AgentSession:
        return LocalAgent(self.device, plan)

    def lease_status(self, run_id: str | None = None) -> dict[str, Any]:
        """Who holds this device, and (with `run_id`) the live agents of that run here."""
        return lease.status(self.workdir, run_id, self.device.name if run_id else None)

    def stop_agents(self, run_id: str) -> list[int]:
        return lease.stop_agents(lease.agents_of_run(self.workdir, run_id, self.device.name))


def transport_for(device: DeviceConfig, inventory: Inventory) -> Transport:
    if device.is_local:
        return LocalTransport(device)
    from harness.ssh import SSHTransport  # fabric is a controller-only dependency

    return SSHTransport(device, inventory)


@dataclass
class DeviceOutcome:
    name: str
    status: str = "pending"  # complete, unreachable, busy, failed, interrupted
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
    # Planned cases of variants a plugin that failed to load should have registered (stored as failed).
    plugin_failed: dict[str, str] = field(default_factory=dict)
    # Plugins that did not load on the controller, or could not be found (one line each, file and line).
    plugin_problems: list[str] = field(default_factory=list)
    # Every stored measurement of the run by status (a resumed run includes the earlier ones).
    counts: dict[str, int] = field(default_factory=dict)
    # The signal that interrupted the run, and why it ended as it did when not by finishing.
    signum: int | None = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return exit_code_for(self.signum or signal.SIGINT)
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
    written. Cases of a variant nobody registered because a plugin failed to load (`plugin_failures`)
    are left out here."""
    from kernels.registry import unknown_values

    known = [c for c in sweep.cases if is_known(c)]
    for key, value, values in unknown_values(known):
        raise ConfigError(f"no kernel computes {key} {value!r}; kernels know: {', '.join(values)}", file=file,
                          key=key)
    missing: dict[str, str] = {}
    for case in known:
        try:
            lookup(case)
        except NotRegisteredError as exc:
            if strict:
                raise ConfigError(f"{exc} (case {case_label(case)}); without --strict it would be stored as "
                                  "skipped", file=file, key="precision") from None
            missing[case_hash(case)] = str(exc)
    return missing


def plugin_failures(sweep: Sweep, file: str, plugins: user_plugins.PluginSet | None, *,
                    strict: bool = False) -> dict[str, str]:
    """Cases of a variant (or backend) nobody registered, by hash, with the error of the plugins that failed
    to load (they are stored as `failed`); with `strict`, a ConfigError instead."""
    failed: dict[str, str] = {}
    for case in sweep.cases:
        if is_known(case):
            continue
        reason = plugins.unknown_case_error(case) if plugins is not None else \
            f"variant {case.get('variant')!r} is registered by no loaded plugin"
        if strict:
            raise ConfigError(f"{reason} (case {case_label(case)})", file=file, key="plugins")
        failed[case_hash(case)] = reason
    return failed


def _plugin_hook(cli: list[str], matrix_file: str, holder: dict[str, Any]) -> Callable[..., bool]:
    """The matrix's PluginHook for a new run: reads and loads the command line's and the matrix's plugins
    (and installed entry points) into this process; keeps the set in `holder`."""
    def hook(declared: list[tuple[str, int | None]]) -> bool:
        found = user_plugins.load(user_plugins.resolve_plugins(cli, declared, matrix_file=matrix_file))
        holder["plugins"] = found
        return not found.failed
    return hook


def _resume_hook(cli: list[str], run_id: str, recorded: list[dict[str, Any]],
                 holder: dict[str, Any]) -> Callable[..., bool]:
    """The PluginHook of a resumed run: the plugins come from `--plugin` (and entry points) only, never from
    the paths its stored matrix or fingerprints name, and must be the ones the run recorded."""
    def hook(declared: list[tuple[str, int | None]]) -> bool:
        found = user_plugins.resolve_plugins(cli)
        given = {p.spec.sha256 for p in found.plugins}
        names = {p.spec.name: p for p in found.plugins}
        for rec in recorded:
            if rec.get("sha256") in given:
                continue
            now = names.get(str(rec.get("name")))
            if now is not None:
                raise ConfigError(f"plugin {now.spec.origin} changed since run {run_id} started (sha256 "
                                  f"{str(rec.get('sha256'))[:16]}... then, {now.spec.sha256[:16]}... now): a run "
                                  "measures one version of a plugin; start a new run for this one", key="--plugin")
            raise ConfigError(f"run {run_id} ran plugin {rec.get('name')} (recorded at {rec.get('path')}, sha256 "
                              f"{str(rec.get('sha256'))[:16]}...); the harness never imports code named only by the "
                              "database: give it again with --plugin PATH", key="--plugin")
        if declared and not recorded and not cli:
            raise ConfigError(f"the matrix of run {run_id} names plugins ({', '.join(p for p, _ in declared)}); the "
                              "harness never imports code named only by the database: give them again with "
                              "--plugin PATH", key="--plugin")
        user_plugins.load(found)
        holder["plugins"] = found
        return not found.failed
    return hook


def run_sweep(inventory: Inventory, store: Store | None, *, devices: list[str], matrix_path: str | None = None,
              sweep: Sweep | None = None, tag: str | None = None, resume: str | None = None,
              dry_run: bool = False, events: Events = _no_events,
              transport_factory: Callable[[DeviceConfig, Inventory], Transport] = transport_for,
              wait_timeout_s: float | None = DEFAULT_WAIT_TIMEOUT_S, stop_stale: bool = False,
              strict: bool = False, max_cases: int | None = DEFAULT_MAX_CASES,
              plugins: list[str] | tuple[str, ...] = ()) -> RunOutcome:
    """Expand the matrix, plan per device, run, and store each result as it arrives.

    Everything about the input is checked before anything is written: the matrix (at most `max_cases`
    cases), the devices, the kernels (`strict`: a combination without a kernel is refused rather than
    stored as skipped), the test-only slowdown variable. `wait_timeout_s`: how long a device held by another
    run is waited for (None: no limit, 0: not at all). `stop_stale` (with `resume`): stop agents of that run
    still alive on its devices instead of refusing. `plugins`: paths of users' kernel plugins, loaded with
    those the matrix names (and installed entry points); on `resume`, the only way to name them."""
    planted = planted_slowdown_from_env()  # a bad value is refused here, before anything runs
    holder: dict[str, Any] = {}
    if resume:
        if store is None:
            raise HarnessError("--resume needs the results database")
        run = store.get_run(resume)
        if run.status == "complete":
            raise HarnessError(f"run {run.id} is complete; nothing to resume")
        sweep = parse_matrix(run.matrix_text, f"<matrix of run {run.id}>", max_cases=None,
                             plugins=_resume_hook(list(plugins), run.id, store.run_plugins(run.id), holder))
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

            sweep = load_matrix(matrix_path, max_cases=max_cases,
                                plugins=_plugin_hook(list(plugins), matrix_path, holder))
        elif plugins:
            _plugin_hook(list(plugins), "<matrix>", holder)([])
        if not devices:
            raise ConfigError("give --devices NAME[,NAME...] (the device 'local' always exists)", key="--devices")
        names = devices
        run_id = ""
    plugin_set: user_plugins.PluginSet | None = holder.get("plugins")
    not_implemented = check_registered(sweep, matrix_path or "<matrix>", strict=strict)
    plugin_failed = plugin_failures(sweep, matrix_path or "<matrix>", plugin_set, strict=strict)
    configs = inventory.resolve(names)
    if len(set(names)) != len(names):
        raise ConfigError(f"a device is named twice in --devices: {','.join(names)}", key="--devices")

    plans: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        done = store.stored_hashes(run_id, name) if resume and store else set()
        plans[name] = [_plan_item(c, plugin_failed) for c in sweep.cases if case_hash(c) not in done]
    problems = plugin_set.messages() if plugin_set else []
    if dry_run:
        return RunOutcome(run_id="", status="dry-run", devices={n: DeviceOutcome(n, planned=len(p))
                                                               for n, p in plans.items()},
                          dry_run=True, plan=plans, not_implemented=not_implemented, plugin_failed=plugin_failed,
                          plugin_problems=problems)
    assert store is not None
    if resume:
        store.check_resumable(run_id)  # a live controller first: its agents are not stale
        # Asked before the run is taken over: an agent of it that measures on (its controller was killed)
        # would otherwise race the new one for the device.
        stale = find_stale_agents(inventory, [c for c in configs if plans[c.name]], run_id, transport_factory,
                                  stop=stop_stale)
        if stale:
            raise HarnessError(f"run {run_id} still has agents running: {stale}. Their controller is gone but they "
                               "measure on; wait for them to finish, or stop them with: harness run --resume "
                               f"{run_id} --stop-stale")
    stop_request = StopRequest()
    stop_request.install()
    try:
        outcome = _run(inventory, store, sweep, configs, names, plans, run_id, resume, tag, events,
                       transport_factory, wait_timeout_s, stop_request, planted, plugin_set)
    finally:
        stop_request.restore()
    outcome.plugin_failed, outcome.plugin_problems = plugin_failed, problems
    return outcome


def _plan_item(case: dict[str, Any], plugin_failed: Mapping[str, str]) -> dict[str, Any]:
    """One case of a device's plan: its hash and keys, the plugin whose kernel runs it, or the error that
    keeps it from running (its plugin failed to load)."""
    h = case_hash(case)
    item: dict[str, Any] = {"hash": h, "case": case}
    if h in plugin_failed:
        item["error"] = plugin_failed[h]
    else:
        plugin = origin_of(case)
        if plugin:
            item["plugin"] = plugin
    return item


def find_stale_agents(inventory: Inventory, configs: list[DeviceConfig], run_id: str,
                      transport_factory: Callable[[DeviceConfig, Inventory], Transport], *, stop: bool) -> str:
    """Agents of `run_id` still alive on these devices that a new session cannot take over, described ('' when
    none); with `stop`, every agent of the run is stopped first. Over SSH a new session re-attaches to the
    agent it finds (it follows that agent's journal instead of starting another), so such an agent is not
    in the way; a local one is. A device that cannot be asked is not counted: its lease still keeps two
    agents from measuring at once, and its part of the run ends unreachable if it stays so."""
    found: dict[str, str] = {}

    def ask(config: DeviceConfig) -> None:
        transport = transport_factory(config, inventory)
        if not hasattr(transport, "lease_status"):
            return
        if getattr(transport, "attaches_to_running_agent", False) and not stop:
            close = getattr(transport, "close", None)
            if close is not None:
                close()
            return
        try:
            if stop:
                transport.stop_agents(run_id)  # type: ignore[attr-defined]
            pids = transport.lease_status(run_id).get("agents") or []  # type: ignore[attr-defined]
        except HarnessError:
            return
        finally:
            close = getattr(transport, "close", None)
            if close is not None:
                close()
        if pids:
            found[config.name] = f"{config.name} (agent pid {', '.join(map(str, pids))})"

    threads = [threading.Thread(target=ask, args=(c,), daemon=True) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "; ".join(found[c.name] for c in configs if c.name in found)


def _controller_id() -> str:
    """"user@host pid N": who started a run, shown to whoever waits for the device it holds."""
    try:
        import getpass

        user = getpass.getuser()
    except Exception:  # no passwd entry in a container
        user = "?"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _run(inventory: Inventory, store: Store, sweep: Sweep, configs: list[DeviceConfig], names: list[str],
         plans: dict[str, list[dict[str, Any]]], run_id: str, resume: str | None, tag: str | None,
         events: Events, transport_factory: Callable[[DeviceConfig, Inventory], Transport],
         wait_timeout_s: float | None, stop_request: StopRequest, planted: dict[str, int] | None,
         plugin_set: user_plugins.PluginSet | None = None) -> RunOutcome:
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
    sessions_lock = threading.Lock()
    stop = threading.Event()
    silence = sweep.measure.timeout_s + AGENT_SILENCE_GRACE_S
    controller = _controller_id()
    shipped = [p.shipped().to_dict() for p in plugin_set.loaded] if plugin_set else []
    tracked = RunPlugins(plugin_set, {item["hash"]: item["plugin"] for items in plans.values() for item in items
                                      if item.get("plugin")})

    def drive(config: DeviceConfig) -> None:
        name = config.name
        plan = {"run_id": run_id, "device": name, "cases": plans[name], "measure": sweep.measure.to_dict(),
                "workdir": config.workdir, "power": dict(config.power) if config.power else None, "seed": 0,
                "test_slowdown": planted, "wait_timeout_s": wait_timeout_s, "controller": controller,
                "plugins": shipped}
        try:
            if not plans[name]:
                inbox.put((name, "end", {"status": "complete"}))
                return
            session = transport_factory(config, inventory).start(plan)
            with sessions_lock:
                sessions[name] = session
                stopped_meanwhile = stop.is_set()
            if stopped_meanwhile:  # the run was stopped while this agent started: it must not run on
                _stop_quietly(session)
                return
            finished = False
            for record in session.lines(silence):
                if stop.is_set():
                    break
                kind = record.get("type", "?")
                if kind == "busy":  # the device stayed held by another run past the wait timeout
                    inbox.put((name, "end", {"status": "busy", "error": record.get("error")}))
                    return
                inbox.put((name, kind, record))
                if kind == "done":
                    finished = True
            if stop.is_set():
                return
            if finished:
                inbox.put((name, "end", {"status": "complete"}))
            else:
                inbox.put((name, "end", {"status": "failed", "error": "the agent stopped before finishing"}))
        except HarnessError as exc:
            if stop.is_set():
                return
            # A transport may say what the device's state is (lost mid-run: unreachable, not failed).
            status = getattr(exc, "device_status", None) or ("unreachable" if name not in sessions else "failed")
            inbox.put((name, "end", {"status": status, "error": str(exc)}))
        except Exception as exc:  # a transport bug must not take the other devices down
            inbox.put((name, "end", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}))

    threads = [threading.Thread(target=drive, args=(c,), name=f"device-{c.name}", daemon=True) for c in configs]

    def stop_all() -> None:
        """Stop every agent, in parallel (each may be a bounded SSH command), then let the threads end."""
        with sessions_lock:
            stop.set()
            started = list(sessions.values())
        stoppers = [threading.Thread(target=_stop_quietly, args=(sess,), daemon=True) for sess in started]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(timeout=30)
        for t in threads:
            t.join(timeout=5)

    def drain() -> None:
        """Store what arrived before the stop (results; the devices' ends are decided by the caller)."""
        while True:
            try:
                name, kind, record = inbox.get_nowait()
            except queue.Empty:
                return
            if kind != "end":
                _handle(store, run_id, name, kind, record, cases_by_hash, outcome, events, sweep, tracked)

    for t in threads:
        t.start()
    running = set(names)
    next_beat = time.monotonic() + HEARTBEAT_INTERVAL_S
    try:
        while running and not stop_request.event.is_set():
            if time.monotonic() >= next_beat:  # a fresh heartbeat makes other controllers refuse --resume
                store.heartbeat(run_id)
                next_beat = time.monotonic() + HEARTBEAT_INTERVAL_S
            try:
                name, kind, record = inbox.get(timeout=POLL_S)
            except queue.Empty:
                continue
            _handle(store, run_id, name, kind, record, cases_by_hash, outcome, events, sweep, tracked)
            if kind == "end":
                running.discard(name)
        if stop_request.event.is_set():
            events("", "stopping", {"run_id": run_id, "signal": stop_request.name})
            stop_all()
            drain()  # keep everything already received
            reason = f"stopped by {stop_request.name}"
            for name in running:
                outcome.devices[name].status = "interrupted"
                store.set_run_device(run_id, name, status="interrupted", error=reason)
            outcome.status = "interrupted"
            outcome.signum = stop_request.signum or signal.SIGINT
            outcome.error = reason
            outcome.counts = store.status_counts(run_id)
            store.finish_run(run_id, "interrupted", error=reason)
            events("", "interrupted", {"run_id": run_id, "signal": stop_request.name})
            return outcome
        for t in threads:
            t.join(timeout=5)
        complete = all(d.status == "complete" for d in outcome.devices.values())
        outcome.status = "complete" if complete else "partial"
        outcome.counts = store.status_counts(run_id)
        store.finish_run(run_id, outcome.status)
    except (DatabaseError, SQLAlchemyError, OSError) as exc:
        stop_all()
        raise _database_failed(store, run_id, exc) from None
    events("", "finished", {"run_id": run_id, "status": outcome.status})
    return outcome


def _stop_quietly(session: AgentSession) -> None:
    try:
        session.stop()
    except Exception:  # stopping is best effort: a device that went away cannot be stopped
        pass


def _database_failed(store: Store, run_id: str, exc: BaseException) -> RunFailed:
    """The run marked failed with the database's reason (where the database still takes that write), and
    the error that says what happened and how to go on."""
    orig = getattr(exc, "orig", None) or exc
    reason = f"the results database failed mid-run: {type(orig).__name__}: {orig}"
    try:
        store.finish_run(run_id, "failed", error=reason)
        marked = "the run is marked failed"
    except Exception:
        marked = "the run could not even be marked failed (it shows as abandoned)"
    return RunFailed(f"{reason}; the agents were stopped and {marked}. Every result stored before stays, and "
                     "the devices' journals keep what finished after. Fix the database (free disk space?), then: "
                     f"harness run --resume {run_id}")


@dataclass
class RunPlugins:
    """A run's plugins and which case's kernel each provides: what `_handle` records with the results."""

    plugins: user_plugins.PluginSet | None = None
    by_case: dict[str, str] = field(default_factory=dict)  # case hash -> plugin id

    def fingerprint(self, fp: Mapping[str, Any] | None, hello: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The device's fingerprint with every plugin's record and how it loaded there."""
        if not self.plugins or not self.plugins.plugins or fp is None:
            return fp
        there = {s.get("id"): s for s in hello.get("plugins") or [] if isinstance(s, dict)}
        return {**fp, "plugins": self.plugins.records(there)}

    def detail(self, case_hash: str) -> dict[str, Any] | None:
        """The record of the plugin whose kernel ran this case (None: a bundled kernel)."""
        plugin = self.plugins.by_id(self.by_case.get(case_hash)) if self.plugins else None
        return plugin.record() if plugin else None


def _handle(store: Store, run_id: str, name: str, kind: str, record: dict[str, Any],
            cases_by_hash: Mapping[str, Mapping[str, Any]], outcome: RunOutcome, events: Events,
            sweep: Sweep, tracked: RunPlugins | None = None) -> None:
    device = outcome.devices[name]
    tracked = tracked or RunPlugins()
    if kind == "hello":
        store.set_run_device(run_id, name, status="running",
                             fingerprint=tracked.fingerprint(record.get("fingerprint"), record))
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
            warning = instability_warning(
                record["samples_ms"], case_label(case), name, device.governor, cpu_other=record.get("cpu_other"),
                max_cpu_other=sweep.measure.max_cpu_other, throttled=(record.get("thermal") or {}).get("throttled"),
                warmup_extended=bool(record.get("warmup_extended")), min_samples=sweep.measure.min_samples)
            if warning:
                record = {**record, "notes": [*(record.get("notes") or []), warning]}
        plugin = tracked.detail(record["case_hash"])
        if plugin:
            record = {**record, "plugin": plugin}
        stored = store.add_result(run_id, name, case, record)
        if stored.stored:
            device.counts[record["status"]] = device.counts.get(record["status"], 0) + 1
        events(name, "result", {**record, "case": case, "stored": stored.stored})
    elif kind == "start":
        events(name, "start", {**record, "case": cases_by_hash.get(record.get("case_hash", ""))})
    elif kind in ("waiting", "leased"):
        events(name, kind, record)
    elif kind == "end":
        device.status = record["status"]
        device.error = record.get("error")
        store.set_run_device(run_id, name, status=record["status"], error=record.get("error"))
        events(name, "end", record)
