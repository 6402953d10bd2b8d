"""Devices over SSH: trusted connections, the bundle push, and a detached agent whose journal is followed.

Controller-only (fabric/paramiko). `SSHTransport(device, inventory)` is the controller's `Transport` for a
device with a `host`:

- **Trust.** Host keys are checked against the inventory's `known_hosts` (default `~/.ssh/known_hosts`);
  an unknown or changed key is refused, with its SHA256 fingerprint and the `harness devices trust NAME`
  command to run. Nothing auto-accepts. `~/.ssh/config` (HostName, User, Port, IdentityFile, ProxyJump)
  and ssh-agent work through fabric.
- **Bounded.** fabric's `connect_timeout` covers only the TCP connect (fabric#2197), so every command here
  has its own deadline, enforced by a watchdog that closes the connection if paramiko blocks past it, and a
  keepalive is set after connecting. Each remote call is recorded (device, what, command, times, exit code)
  in `SSHTransport.calls` and on the `harness.ssh` logger.
- **Bundle.** The device-side code goes to `workdir/bundles/<digest>/` once per content hash and runs with
  the device's own python; nothing is ever installed on a device.
- **Detached runs.** The plan is uploaded as a file (never pasted into a shell; every path is quoted), the
  agent starts as a daemon writing its journal in `workdir/journal/`, and the controller follows that
  journal by byte offset. A dropped connection loses nothing: the session reconnects and goes on at the
  offset, or `harness run --resume RUN_ID` later collects what finished meanwhile and runs only the rest.
  An agent that dies mid-case gets that case recorded `failed` and a fresh agent for the rest; one that
  makes no progress for the case timeout plus grace is killed, the case recorded `timeout`, and the sweep
  goes on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import posixpath
import select
import shlex
import socket
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import paramiko

from devices.inventory import DeviceConfig, Inventory
from harness import lease
from harness.bundle import COMPLETE_MARKER, REPO_ROOT, Bundle, build_bundle
from harness.lease import run_file_stem, safe_component  # noqa: F401 (safe_component: also for callers)
from workloads.errors import DeviceError

log = logging.getLogger("harness.ssh")

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_PYTHON = "python3"
KEEPALIVE_S = 15
# Deadlines of the short commands (state checks, plan upload, agent start, stop).
COMMAND_TIMEOUT_S = 30.0
# `python -m devices.probe` imports torch: tens of seconds on a Pi reading from an SD card.
PROBE_TIMEOUT_S = 180.0
# Uploads get COMMAND_TIMEOUT_S plus their size at this (slow Wi-Fi) rate.
UPLOAD_MIN_BYTES_PER_S = 50_000
# The journal follower's heartbeat when idle, and how long without any byte means the connection is gone
# (TCP alone can take many minutes to notice a board that lost power).
FOLLOW_BEAT_S = 2.0
BEAT_TIMEOUT_S = 20.0
# After losing the connection mid-run, keep trying to reconnect for this long before giving the device up.
RECONNECT_WINDOW_S = 60.0
# Agent starts per session (the first one plus restarts after an agent died or was cut off).
MAX_AGENT_STARTS = 4
# Silence allowed before a new agent's first line: it probes and starts a worker (imports torch) first, which
# takes tens of seconds on a board reading from an SD card; the agent itself gives a worker 120 s to start.
AGENT_STARTUP_S = 180.0


# -- errors ------------------------------------------------------------------------------------------------
class SSHDeviceError(DeviceError):
    """A device over SSH could not be used; `device_status` is what the run records for it."""

    def __init__(self, message: str, *, device_status: str = "failed") -> None:
        super().__init__(message)
        self.device_status = device_status


class HostKeyError(SSHDeviceError):
    """The device's host key is unknown or changed: refused, nothing run."""

    def __init__(self, message: str, *, fingerprint: str) -> None:
        super().__init__(message, device_status="unreachable")
        self.fingerprint = fingerprint


class CommandTimeout(SSHDeviceError):
    """A remote command did not finish within its deadline (the connection was closed to stop it)."""


class ConnectionLost(SSHDeviceError):
    """The SSH connection dropped under a command."""


class _NeedBundle(Exception):
    """The device lacks this bundle's digest: upload it, then ask again."""


class _AgentSilent(Exception):
    """The agent wrote nothing to its journal for the silence timeout."""


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"unknown host key for {hostname}")
        self.hostname = hostname
        self.key = key


class _RefuseUnknownHost(paramiko.RejectPolicy):
    """RejectPolicy that keeps the refused key, so the message can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


# -- host keys ---------------------------------------------------------------------------------------------
def fingerprint(key: paramiko.PKey) -> str:
    """`SHA256:...` as `ssh-keygen -l` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def known_hosts_path(inventory: Inventory) -> Path:
    """The inventory's `known_hosts` (relative to the inventory file), else ~/.ssh/known_hosts."""
    raw = inventory.known_hosts or DEFAULT_KNOWN_HOSTS
    path = Path(os.path.expanduser(raw))
    if not path.is_absolute() and inventory.path:
        path = Path(inventory.path).resolve().parent / path
    return path


def host_id(host: str, port: int) -> str:
    """The name a known_hosts line uses: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def _load_known(path: Path) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    if path.exists():
        keys.load(str(path))
    return keys


def _harden(conn: Any, known_hosts: Path) -> None:
    """Refuse unknown host keys on a fabric Connection and its jump hosts (fabric auto-adds by default)."""
    from fabric import Connection

    while isinstance(conn, Connection):
        conn.client.set_missing_host_key_policy(_RefuseUnknownHost())
        if known_hosts.exists():
            conn.client.load_system_host_keys(str(known_hosts))
        conn = conn.gateway


# -- remote paths --------------------------------------------------------------------------------------------
def rpath(path: str) -> str:
    """A device path quoted for sh; a leading `~/` becomes "$HOME"/ (quoting would stop its expansion)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


@dataclass(frozen=True)
class RemotePaths:
    """Where a device keeps one run's files (raw paths; quote them with `rpath`)."""

    bundle: str
    journal: str
    plan: str
    pid: str
    log: str

    @classmethod
    def of(cls, workdir: str, digest: str, run_id: str, device: str) -> "RemotePaths":
        stem = run_file_stem(workdir, run_id, device)
        return cls(bundle=posixpath.join(workdir, "bundles", digest), journal=stem + ".jsonl",
                   plan=stem + ".plan.json", pid=stem + ".pid", log=stem + ".log")


LEASE_SOURCE = Path(lease.__file__).read_bytes()

_bundle_lock = threading.Lock()
_bundle_cache: dict[str, tuple[Bundle, bytes]] = {}


def current_bundle(root: Path = REPO_ROOT, plugins: list[dict[str, Any]] | None = None) -> tuple[Bundle, bytes]:
    """The bundle of the code under `root` (this checkout by default) with the run's `plugins` (the plan's
    specs) and its tarball, built once per process and plugin set (all device threads share it)."""
    key = str(root) + "|" + ",".join(sorted(p["sha256"] for p in plugins or ()))
    with _bundle_lock:
        if key not in _bundle_cache:
            extra: tuple[tuple[str, bytes], ...] = ()
            if plugins:
                from harness.plugins import bundle_files

                extra = tuple(bundle_files(plugins))
            bundle = build_bundle(root, extra)
            _bundle_cache[key] = (bundle, bundle.tarball())
        return _bundle_cache[key]


# -- the connection ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteCall:
    """One remote call, for attribution: which device, what for, the command, when, how long, exit code."""

    device: str
    what: str
    command: str
    started_at: float
    duration_s: float
    exit_code: int | None
    error: str | None = None


@dataclass(frozen=True)
class Completed:
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float


class SSHTransport:
    """The controller's Transport for one device over SSH; connects lazily, every call bounded."""

    # A session started for a run finds that run's agent still alive on the device (its controller died, or
    # lost the connection) and follows its journal instead of starting another.
    attaches_to_running_agent = True

    def __init__(self, device: DeviceConfig, inventory: Inventory, code_root: Path = REPO_ROOT) -> None:
        self.device = device
        self.inventory = inventory
        self.code_root = code_root  # whose device-side code to ship (`regress --confirm` ships old revisions)
        self.known_hosts = known_hosts_path(inventory)
        self.calls: deque[RemoteCall] = deque(maxlen=1000)
        self.connect_s: float | None = None
        self._conn: Any = None  # fabric.Connection while connected
        from fabric import Connection

        # Resolving ~/.ssh/config (HostName, Port, User, IdentityFile) needs no network.
        timeout = max(1, math.ceil(device.connect_timeout_s))
        connect_kwargs: dict[str, Any] = {"banner_timeout": timeout, "auth_timeout": timeout,
                                          "channel_timeout": timeout}
        if device.identity_file:
            connect_kwargs["key_filename"] = [os.path.expanduser(device.identity_file)]
        self._make = lambda: Connection(device.host, user=device.user, port=device.port,
                                        connect_timeout=timeout, connect_kwargs=dict(connect_kwargs))
        probe = self._make()
        self.host, self.port, self.user = probe.host, int(probe.port), probe.user
        self.host_id = host_id(self.host, self.port)

    # -- connecting ------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        conn = self._conn
        return bool(conn is not None and conn.transport is not None and conn.transport.is_active())

    def connect(self) -> None:
        """Open and authenticate the connection, verifying the host key; no-op when connected."""
        if self.connected:
            return
        self.close()
        t0, started = time.monotonic(), time.time()
        conn = self._make()
        _harden(conn, self.known_hosts)
        where = f"{self.user}@{self.host}:{self.port}"
        try:
            conn.open()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            conn.close()
            error = self._connect_error(exc, where)
            self._record("connect", f"ssh {where}", started, t0, None, str(error))
            raise error from None
        # Dead links are otherwise found only when TCP gives up, which can take many minutes.
        conn.transport.set_keepalive(KEEPALIVE_S)
        self._conn = conn
        self.connect_s = time.monotonic() - t0
        self._record("connect", f"ssh {where}", started, t0, 0, None)

    def _connect_error(self, exc: BaseException, where: str) -> SSHDeviceError:
        """What a failed connect means for the user, and what to do about it."""
        name = self.device.name
        if isinstance(exc, _UnknownHostKey):
            fp = fingerprint(exc.key)
            return HostKeyError(
                f"{name}: the host key of {self.host_id} is not in {self.known_hosts} ({exc.key.get_name()} "
                f"{fp}); refused, nothing was run. If that is the device's key (on the device: ssh-keygen -lf "
                f"/etc/ssh/ssh_host_*_key.pub), pin it with: harness devices trust {shlex.quote(name)}",
                fingerprint=fp)
        if isinstance(exc, paramiko.BadHostKeyException):
            fp = fingerprint(exc.key)
            return HostKeyError(
                f"{name}: the host key of {self.host_id} CHANGED: {self.known_hosts} pins "
                f"{fingerprint(exc.expected_key)} but the device presented {exc.key.get_name()} {fp}; refused, "
                "nothing was run. A reinstalled device explains this, and so would someone in the middle. If "
                f"you expect the change, run: harness devices trust {shlex.quote(name)}", fingerprint=fp)
        if isinstance(exc, paramiko.AuthenticationException):
            return SSHDeviceError(
                f"{name}: authentication as {where} failed ({exc}); tried identity_file, ssh-agent and "
                "~/.ssh keys. Put your public key in the device's authorized_keys or set identity_file.",
                device_status="unreachable")
        return SSHDeviceError(f"{name}: cannot connect to {where}: {exc or type(exc).__name__}. Is the device on "
                              "and sshd running? Try plain ssh to it.", device_status="unreachable")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a dead connection must not mask why it died
                pass

    def _record(self, what: str, command: str, started: float, t0: float, code: int | None,
                error: str | None) -> None:
        call = RemoteCall(self.device.name, what, command, started, time.monotonic() - t0, code, error)
        self.calls.append(call)
        log.log(logging.WARNING if error else logging.DEBUG, "%s: %s [%s] %.3f s exit %s%s", call.device,
                what, command, call.duration_s, code, f" error: {error}" if error else "")

    @contextmanager
    def _watchdog(self, seconds: float) -> Iterator[threading.Event]:
        """Closes the connection if the body runs past `seconds`: paramiko has calls with no timeout."""
        fired = threading.Event()
        conn = self._conn

        def fire() -> None:
            fired.set()
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()
        try:
            yield fired
        finally:
            timer.cancel()

    # -- commands --------------------------------------------------------------------------------------
    def run(self, script: str, *, what: str, timeout: float = COMMAND_TIMEOUT_S,
            stdin: bytes | None = None) -> Completed:
        """Run a sh script (built with quoted values only) to completion within `timeout` seconds."""
        self.connect()
        started, t0 = time.time(), time.monotonic()
        deadline = t0 + timeout
        out, err = bytearray(), bytearray()
        code: int | None = None
        error: str | None = None
        try:
            with self._watchdog(timeout + 2) as fired:
                try:
                    chan = self._conn.transport.open_session(timeout=timeout)
                    chan.settimeout(timeout)
                    chan.exec_command("sh -c " + shlex.quote(script))
                    if stdin is not None:
                        chan.sendall(stdin)
                    chan.shutdown_write()
                    code = _drain(chan, deadline, out, err)
                    chan.close()
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    if fired.is_set() or time.monotonic() >= deadline:
                        raise CommandTimeout(f"{self.device.name}: {what} did not finish within {timeout:.0f} s; "
                                             "the connection was closed") from None
                    raise ConnectionLost(f"{self.device.name}: the connection dropped during {what}: "
                                         f"{exc or type(exc).__name__}") from None
                if code is None:
                    if fired.is_set() or time.monotonic() >= deadline:
                        raise CommandTimeout(f"{self.device.name}: {what} did not finish within {timeout:.0f} s; "
                                             "the connection was closed")
                    raise ConnectionLost(f"{self.device.name}: the connection dropped during {what}")
        except SSHDeviceError as exc:
            error = str(exc)
            self.close()
            raise
        finally:
            self._record(what, script, started, t0, code, error)
        return Completed(code, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t0)

    def open_stream(self, script: str, *, what: str, stdin: bytes | None = None) -> paramiko.Channel:
        """Start a long-running sh script, feed it `stdin`; the caller reads it with its own deadlines
        (the journal follower: a heartbeat every few seconds, or the connection counts as lost)."""
        self.connect()
        started, t0 = time.time(), time.monotonic()
        try:
            with self._watchdog(COMMAND_TIMEOUT_S + 2):
                chan = self._conn.transport.open_session(timeout=COMMAND_TIMEOUT_S)
                chan.settimeout(COMMAND_TIMEOUT_S)
                chan.exec_command("sh -c " + shlex.quote(script))
                if stdin is not None:
                    chan.sendall(stdin)
                chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException, AttributeError) as exc:
            self._record(what, script, started, t0, None, str(exc))
            self.close()
            raise ConnectionLost(f"{self.device.name}: could not start {what}: {exc or type(exc).__name__}") from None
        self._record(what, script, started, t0, None, None)
        return chan

    # -- the bundle ------------------------------------------------------------------------------------
    @property
    def python(self) -> str:
        return rpath(self.device.python or DEFAULT_PYTHON)

    @property
    def workdir(self) -> str:
        """The device's workdir; a relative one is taken from the login directory, as ssh does."""
        workdir = self.device.workdir
        return workdir if workdir.startswith(("/", "~")) else "~/" + workdir

    def python_in(self, bundle_dir: str) -> str:
        """`cd` to the bundle and exec the device's python with it first on the path."""
        b = rpath(bundle_dir)
        return f"cd {b} && PYTHONPATH={b} && export PYTHONPATH && exec {self.python}"

    def upload_bundle(self, bundle: Bundle, tarball: bytes) -> str:
        """Unpack the bundle into workdir/bundles/<digest> atomically; returns that directory."""
        target = posixpath.join(self.workdir, "bundles", bundle.digest)
        parent = rpath(posixpath.dirname(target))
        script = (f"mkdir -p {parent} && t=$(mktemp -d {parent}/.incoming.XXXXXX) && "
                  f'tar -xzf - -C "$t" && touch "$t"/{COMPLETE_MARKER} && '
                  f'{{ [ -e {rpath(target)} ] || mv "$t" {rpath(target)}; }}; rm -rf "$t"; '
                  f"test -f {rpath(posixpath.join(target, COMPLETE_MARKER))}")
        res = self.run(script, what=f"upload bundle {bundle.digest} ({len(tarball)} bytes)", stdin=tarball,
                       timeout=COMMAND_TIMEOUT_S + len(tarball) / UPLOAD_MIN_BYTES_PER_S)
        if res.exit_code != 0:
            raise SSHDeviceError(f"{self.device.name}: could not unpack the bundle into {target} (exit "
                                 f"{res.exit_code}): {res.stderr.strip()[-500:]}. Check that workdir is writable "
                                 "and that tar is installed.")
        return target

    def ensure_bundle(self) -> str:
        """The bundle directory on the device, uploading it only when its digest is not there yet."""
        bundle, tarball = current_bundle(self.code_root)
        target = posixpath.join(self.workdir, "bundles", bundle.digest)
        res = self.run(f"test -f {rpath(posixpath.join(target, COMPLETE_MARKER))}", what="check the bundle")
        return target if res.exit_code == 0 else self.upload_bundle(bundle, tarball)

    # -- Transport ---------------------------------------------------------------------------------------
    def start(self, plan: dict[str, Any]) -> "SSHAgentSession":
        return SSHAgentSession(self, plan)

    def _lease_call(self, action: str, run_id: str | None = None) -> dict[str, Any]:
        """Run harness/lease.py's `main` on the device with its python: the source goes in on stdin, so no
        bundle is needed; every argument is quoted."""
        args = [action] + ([run_id, self.device.name] if run_id is not None else [])
        script = f"{self.python} - {rpath(self.workdir)} " + " ".join(shlex.quote(a) for a in args)
        res = self.run(script, what=f"lease {action}", stdin=LEASE_SOURCE)
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SSHDeviceError(f"{self.device.name}: could not read who holds the device (exit {res.exit_code}): "
                                 f"{res.stderr.strip()[-300:]}") from None

    def lease_status(self, run_id: str | None = None) -> dict[str, Any]:
        """Who holds this device, and (with `run_id`) the live agents of that run there."""
        return self._lease_call("status", run_id)

    def stop_agents(self, run_id: str) -> list[int]:
        """Stop the agents of `run_id` still alive on the device (with their workers)."""
        return list(self._lease_call("stop", run_id).get("stopped") or [])


def _drain(chan: paramiko.Channel, deadline: float, out: bytearray, err: bytearray) -> int | None:
    """Read a channel to its exit status by `deadline`; None if it closed without one (connection lost)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        select.select([chan], [], [], min(remaining, 1.0))
        while chan.recv_ready():
            out += chan.recv(1 << 16)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            return chan.exit_status
        if chan.closed and not chan.exit_status_ready():
            return None


# -- the agent session ---------------------------------------------------------------------------------------
class SSHAgentSession:
    """A detached agent on a device and the journal the controller follows (the AgentSession protocol).

    Created by `SSHTransport.start`, which connects, so an unreachable or untrusted device fails before
    anything runs. `lines()` then opens ONE command on the device that says whether the bundle is missing
    (then it is uploaded and the command retried), re-attaches to what an earlier session of this run
    left (a journal, a running agent), or uploads the plan and starts the agent, and follows the journal;
    it yields the agent's records: hello, start, result, and one final done. Round trips cost more than
    they seem: each command runs the user's login shell, and a `.bashrc` with `pyenv init` or
    `conda init` spends a few hundred milliseconds there.
    """

    def __init__(self, transport: SSHTransport, plan: dict[str, Any]) -> None:
        self.t = transport
        self.plan = plan
        self.device = transport.device
        self.run_id = str(plan["run_id"])
        self.plan_hashes = [item["hash"] for item in plan["cases"]]
        self.finished: set[str] = set()
        self.offset = 0
        self.in_progress: str | None = None
        self.in_progress_since: float | None = None
        self.agent_pid: int | None = None
        self.starts = 0
        # Whether the agent now in the pid file was started or seen running by this session: only then is
        # a case it left unfinished its death's victim (`failed`); found dead on --resume, it runs again.
        self.watched = False
        self.done_at: float | None = None
        self.starting = False  # an agent was started and has not written its first line yet
        self.stderr_tail = b""
        self.bundle, self.tarball = current_bundle(transport.code_root, plan.get("plugins"))
        self.paths = RemotePaths.of(transport.workdir, self.bundle.digest, self.run_id, self.device.name)
        self._stopped = False
        transport.connect()

    # -- AgentSession ----------------------------------------------------------------------------------
    def lines(self, silence_timeout_s: float) -> Iterator[dict[str, Any]]:
        try:
            # "auto": the device attaches to an earlier agent or journal of this run if there is one, else
            # starts the plan; a list: start those cases; None: only follow.
            start: str | list[dict[str, Any]] | None = "auto"
            uploads = 0
            while not self._stopped:
                try:
                    yield from self._follow(silence_timeout_s, start=start)
                except _NeedBundle:
                    if uploads:
                        raise SSHDeviceError(f"{self.device.name}: the bundle is still missing after an upload "
                                             f"to {self.paths.bundle}") from None
                    try:
                        self.t.upload_bundle(self.bundle, self.tarball)
                        uploads += 1
                    except (ConnectionLost, CommandTimeout) as exc:
                        self._reconnect(str(exc))
                    continue
                except (ConnectionLost, CommandTimeout) as exc:
                    if self._stopped:
                        return
                    self._reconnect(str(exc))
                    start = "auto"  # re-attach if the agent started before the drop, else start it
                    continue
                except _AgentSilent as exc:
                    record = self._cut_off(float(exc.args[0]))
                    if record:
                        yield record
                    start = None  # follow again: drains the journal, sees the agent gone
                    continue
                # The agent is not running (or wrote `done`): was it killed mid-case?
                if self.in_progress and self.watched:
                    yield self._died_mid_case()
                self.in_progress = None
                self.watched = False
                start = self._remaining()
                if not start:
                    yield {"type": "done", "run_id": self.run_id, "at": self.done_at}
                    return
                if self.starts >= MAX_AGENT_STARTS:
                    raise SSHDeviceError(f"{self.device.name}: the agent was started {self.starts} times and did "
                                         f"not finish; {len(start)} case(s) left. Its log ends: "
                                         f"{self._log_tail()}")
        finally:
            self.t.close()

    def _remaining(self) -> list[dict[str, Any]]:
        return [item for item in self.plan["cases"] if item["hash"] not in self.finished]

    def stop(self) -> None:
        """Kill this run's agent on the device (the controller was interrupted) and hang up; best effort,
        bounded. On its own connection: the follower's may be blocked or already gone."""
        self._stopped = True  # before hanging up: the follower must not take the hang-up for a drop
        stopper = SSHTransport(self.device, self.t.inventory, code_root=self.t.code_root)
        try:
            stopper._lease_call("stop", self.run_id)
        except SSHDeviceError as exc:
            log.warning("%s: could not stop the agent of run %s: %s", self.device.name, self.run_id, exc)
        finally:
            stopper.close()
            self.t.close()

    # -- steps -----------------------------------------------------------------------------------------
    def _script(self, start: str | list[dict[str, Any]] | None) -> tuple[str, str, bytes | None]:
        """The device command (every value quoted, the plan by stdin into a file), what it is, its stdin."""
        p = self.paths
        follow = (f"{self.t.python_in(p.bundle)} -m harness.agent --journal {rpath(p.journal)} --pid-file "
                  f"{rpath(p.pid)} --offset {int(self.offset)} --beat {FOLLOW_BEAT_S:g} --follow")
        if start is None:
            return follow, f"follow the journal from byte {self.offset}", None
        cases = self._remaining() if start == "auto" else start
        tmp = p.plan + ".tmp"
        launch = (f"mkdir -p {rpath(posixpath.dirname(p.plan))} && cat > {rpath(tmp)} && mv -f {rpath(tmp)} "
                  f"{rpath(p.plan)} && {follow} --plan {rpath(p.plan)} --detach --log {rpath(p.log)}")
        stdin = json.dumps(dict(self.plan, cases=cases, workdir=self.t.workdir)).encode()
        if start != "auto":
            return launch, f"start the agent ({len(cases)} case(s)) and follow its journal", stdin
        marker = rpath(posixpath.join(p.bundle, COMPLETE_MARKER))
        return (f"if ! test -f {marker}; then echo N; exit 0; fi; "
                f"if test -e {rpath(p.journal)} || test -e {rpath(p.pid)}; then cat > /dev/null; {follow}; "
                f"else {launch}; fi",
                f"start the agent ({len(cases)} case(s)), or attach to this run's earlier one, and follow", stdin)

    def _follow(self, silence_timeout_s: float, start: str | list[dict[str, Any]] | None = None
                ) -> Iterator[dict[str, Any]]:
        """Yield the journal's records from `self.offset` until the agent has exited and all is read;
        with `start`, start the agent first (`--detach --follow`, one command). Raises _NeedBundle."""
        script, what, stdin = self._script(start)
        chan = self.t.open_stream(script, what=what, stdin=stdin)
        # A starting agent probes and imports torch before its first line: allow for that.
        self.starting = self.starting or start is not None
        buf = b""
        last_line = last_any = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                silence = max(silence_timeout_s, AGENT_STARTUP_S) if self.starting else silence_timeout_s
                if now - last_line > silence:
                    raise _AgentSilent(now - last_line)
                if now - last_any > BEAT_TIMEOUT_S:
                    raise ConnectionLost(f"{self.device.name}: nothing from the device for {BEAT_TIMEOUT_S:.0f} s")
                wait = min(silence - (now - last_line), BEAT_TIMEOUT_S - (now - last_any), 1.0)
                select.select([chan], [], [], max(wait, 0.01))
                data = b""
                while chan.recv_ready():
                    data += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    self.stderr_tail = (self.stderr_tail + chan.recv_stderr(1 << 16))[-2000:]
                if not data:
                    if chan.closed or chan.eof_received:
                        if not self.t.connected or not chan.exit_status_ready():
                            raise ConnectionLost(f"{self.device.name}: the connection closed")
                        code, python = chan.exit_status, self.device.python or DEFAULT_PYTHON
                        hint = (f" The device has no {python}: set `python:` for it in the inventory (a python "
                                "with torch; the harness never installs packages on a device)." if code == 127 else "")
                        raise SSHDeviceError(f"{self.device.name}: the agent command exited with status {code}: "
                                             f"{self.stderr_tail.decode(errors='replace').strip()[-800:]}{hint}")
                    continue
                last_any = time.monotonic()
                buf += data
                *complete, buf = buf.split(b"\n")
                for line in complete:
                    tag, _, body = line.partition(b" ")
                    if tag == b"J":
                        self.offset += len(body) + 1
                        last_line = time.monotonic()
                        record = self._on_record(body)
                        if record is not None:
                            yield record
                        elif self.done_at is not None and self.finished.issuperset(self.plan_hashes):
                            return  # the agent wrote `done` with nothing left: no need to watch it exit
                    elif tag == b"S":  # this command started an agent
                        self.agent_pid = json.loads(body).get("pid")
                        self.starts += 1
                        self.watched = True
                    elif tag == b"N":
                        raise _NeedBundle()
                    elif tag == b"B":
                        beat = json.loads(body)
                        self.agent_pid = beat.get("pid") or self.agent_pid
                        self.watched = self.watched or bool(beat.get("alive"))
                    elif tag == b"E":
                        self.watched = self.watched or bool(json.loads(body).get("seen_alive"))
                        return
        finally:
            try:
                chan.close()
            except Exception:
                pass

    def _on_record(self, body: bytes) -> dict[str, Any] | None:
        """What to pass on from one journal line (results of cases outside this plan are already stored)."""
        try:
            record = json.loads(body)
        except json.JSONDecodeError:
            return None  # a line torn by a killed agent
        if record.get("run_id") not in (None, self.run_id):
            return None
        kind = record.get("type")
        if kind == "hello":
            self.agent_pid = record.get("agent_pid") or self.agent_pid
            self.starting = False
        elif kind == "start":
            known = record.get("case_hash") in self.plan_hashes
            self.in_progress = record.get("case_hash") if known else None
            self.in_progress_since = time.time()
        elif kind == "partial":  # one pass of a case measured in several processes, journaled by the agent
            if record.get("case_hash") == self.in_progress:
                self.in_progress = None
        elif kind == "result":
            h = record.get("case_hash")
            if h == self.in_progress:
                self.in_progress = None
            if h not in self.plan_hashes or h in self.finished:
                return None
            self.finished.add(h)
        elif kind == "done":
            self.done_at = record.get("at")
            return None  # one done, at the very end, from lines()
        return record

    def _case_record(self, status: str, error: str) -> dict[str, Any]:
        h = self.in_progress
        assert h is not None
        self.finished.add(h)
        self.in_progress = None
        return {"type": "result", "run_id": self.run_id, "device": self.device.name, "case_hash": h,
                "index": self.plan_hashes.index(h), "status": status, "error": error,
                "started_at": self.in_progress_since, "finished_at": time.time()}

    def _died_mid_case(self) -> dict[str, Any]:
        return self._case_record("failed", f"the agent on {self.device.name} (pid {self.agent_pid}) died while "
                                           f"running this case (killed, or out of memory); a new agent runs the "
                                           f"rest. Its log ends: {self._log_tail()}")

    def _cut_off(self, silent_s: float) -> dict[str, Any] | None:
        """Kill an agent that stopped making progress; the case it was on becomes `timeout`."""
        try:
            self.t.run(f"{self.t.python_in(self.paths.bundle)} -m harness.agent --stop "
                       f"--pid-file {rpath(self.paths.pid)}", what="stop a silent agent")
        except (ConnectionLost, CommandTimeout) as exc:
            self._reconnect(str(exc))
        if not self.in_progress:
            return None
        return self._case_record("timeout", f"the agent on {self.device.name} wrote nothing for {silent_s:.0f} s "
                                            "(measure.timeout_s plus the controller's grace); it was stopped and "
                                            "the sweep went on")

    def _log_tail(self) -> str:
        try:
            res = self.t.run(f"tail -c 600 {rpath(self.paths.log)}", what="read the agent log", timeout=10)
            return res.stdout.strip() or "(empty)"
        except SSHDeviceError:
            return "(unreadable)"

    def _reconnect(self, reason: str) -> None:
        """Reconnect within RECONNECT_WINDOW_S, or give the device up (the run ends partial)."""
        self.t.close()
        deadline = time.monotonic() + RECONNECT_WINDOW_S
        delay, last = 0.5, reason
        while True:
            try:
                self.t.connect()
                log.info("%s: reconnected after: %s", self.device.name, reason)
                return
            except HostKeyError:
                raise
            except SSHDeviceError as exc:
                last = str(exc)
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise SSHDeviceError(
            f"{reason}; could not reconnect within {RECONNECT_WINDOW_S:.0f} s ({last}). "
            f"{len(self.finished)} of {len(self.plan_hashes)} case(s) are in; the agent keeps running on the device "
            f"if it can, and `harness run --resume {self.run_id}` collects what it finished and runs the rest.",
            device_status="unreachable")


# -- probe and trust -----------------------------------------------------------------------------------------
def probe_remote(device: DeviceConfig, inventory: Inventory) -> dict[str, Any]:
    """`harness devices check` for a device over SSH: the probe's summary plus the connection's latency."""
    from harness.checks import summarize_fingerprint

    t = SSHTransport(device, inventory)
    try:
        t.connect()
        rtt = min(t.run("true", what="round trip", timeout=10).duration_s for _ in range(3))
        bundle_dir = t.ensure_bundle()
        res = t.run(f"{t.python_in(bundle_dir)} -m devices.probe {shlex.quote(t.workdir)}",
                    what="probe", timeout=PROBE_TIMEOUT_S)
        if res.exit_code != 0:
            raise SSHDeviceError(f"{device.name}: the probe failed with {device.python or DEFAULT_PYTHON} (exit "
                                 f"{res.exit_code}): {res.stderr.strip()[-800:]}")
        try:
            fp = json.loads(res.stdout)
        except json.JSONDecodeError:
            raise SSHDeviceError(f"{device.name}: the probe printed no JSON: {res.stdout[-300:]!r}") from None
        key = t._conn.transport.get_remote_server_key()
    finally:
        t.close()
    summary = summarize_fingerprint(fp)
    summary["connection"] = (f"{t.user}@{t.host}:{t.port}; connect {1000 * (t.connect_s or 0):.0f} ms, "
                             f"round trip {1000 * rtt:.1f} ms")
    summary["host key"] = f"{key.get_name()} {fingerprint(key)}"
    return summary


@dataclass(frozen=True)
class HostKeyScan:
    """A device's host key as presented now, and what known_hosts says about it."""

    device: str
    host_id: str
    key: paramiko.PKey
    known_hosts: Path
    pinned: paramiko.PKey | None  # the pinned key of the same type, if any
    state: str  # trusted, unknown, changed

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


def scan_host_key(device: DeviceConfig, inventory: Inventory) -> HostKeyScan:
    """Fetch the host key (key exchange only, no login) and compare it with known_hosts."""
    t = SSHTransport(device, inventory)
    known = _load_known(t.known_hosts)
    pinned_all = known.lookup(t.host_id) or {}
    timeout = max(1.0, device.connect_timeout_s)
    try:
        sock = socket.create_connection((t.host, t.port), timeout=timeout)
    except OSError as exc:
        raise SSHDeviceError(f"{device.name}: cannot connect to {t.host}:{t.port}: {exc}",
                             device_status="unreachable") from None
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    try:
        if pinned_all:  # ask for the type we pinned, as a login would
            opts = transport.get_security_options()
            first = [k for k in pinned_all.keys() if k in opts.key_types]
            opts.key_types = first + [k for k in opts.key_types if k not in first]
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SSHDeviceError(f"{device.name}: no SSH key exchange with {t.host}:{t.port}: {exc}",
                             device_status="unreachable") from None
    finally:
        transport.close()
    pinned = pinned_all.get(key.get_name()) if pinned_all else None
    state = "unknown" if pinned is None else ("trusted" if pinned == key else "changed")
    return HostKeyScan(device.name, t.host_id, key, t.known_hosts, pinned, state)


def _line_names(line: str) -> list[str] | None:
    fields = line.split()
    if len(fields) < 3 or line.lstrip().startswith(("#", "@")):
        return None
    return fields[0].split(",")


def _matches(name: str, host: str) -> bool:
    if name.startswith("|1|"):  # a hashed entry (HashKnownHosts): hash our name with its salt
        try:
            return paramiko.HostKeys.hash_host(host, name) == name
        except Exception:
            return False
    return name == host


def pin_host_key(scan: HostKeyScan) -> Path:
    """Write the scanned key to known_hosts, replacing this host's key of the same type; other lines stay."""
    path = scan.known_hosts
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = path.read_text().splitlines() if path.exists() else []
    kept = []
    for line in lines:
        names = _line_names(line)
        if names and line.split()[1] == scan.key.get_name() and any(_matches(n, scan.host_id) for n in names):
            rest = [n for n in names if not _matches(n, scan.host_id)]
            if not rest:
                continue
            fields = line.split(None, 1)
            line = ",".join(rest) + " " + fields[1]
        kept.append(line)
    kept.append(f"{scan.host_id} {scan.key.get_name()} {scan.key.get_base64()}")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(kept) + "\n")
    os.replace(tmp, path)
    return path
