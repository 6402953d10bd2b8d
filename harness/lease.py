"""The device lease and the files that say which agents run on a device.

One run measures on a device at a time. The lease lives on the device, not in any controller's database, so
it also holds between two controllers on two machines sharing one board: it is an exclusive `flock` on
`WORKDIR/lease.lock`, taken by the agent before it starts a worker (importing torch disturbs a measurement
too) and held until the agent process exits, whatever ends it: the kernel drops the lock of a killed
process, so a lease can never outlive its holder. Who holds it (run id, device, pid, since when, which
controller) is written next to it in `WORKDIR/lease.json` for `harness devices list` and for the line a
waiting run prints.

Each agent also writes its pid to its run's pid file (`WORKDIR/journal/<run>-<device>.pid`), so
`harness run --resume` can tell whether an agent of that run is still alive on the device (a controller
that was SIGKILLed leaves its agent measuring) and `--stop-stale` can stop it.

Standard library only. The controller also ships this file's source to a device over SSH and runs it with
the device's python (`python - WORKDIR status`): no bundle is needed to ask a device who holds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

LEASE_LOCK = "lease.lock"
LEASE_INFO = "lease.json"
# How often a waiting agent reports that it still waits (keeps its controller's silence timer quiet).
WAIT_REPORT_S = 5.0
WAIT_POLL_S = 0.2


def safe_component(text: str) -> str:
    """A file-name part for any string (device names may hold anything): readable prefix + short hash."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:40] or "x"
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def run_file_stem(workdir: str, run_id: str, device: str) -> str:
    """`WORKDIR/journal/<run>-<device>`: the journal (.jsonl), plan, pid file and log of one run's agent.
    Plain string joins with '/': devices are POSIX, and the controller builds the same paths for them."""
    return f"{workdir.rstrip('/') or '/'}/journal/{safe_component(run_id)}-{safe_component(device)}"


def pid_alive(pid: int | None) -> bool:
    """True while `pid` runs (a zombie counts as gone: where PID 1 does not reap, kill -0 would lie)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_agent(pid: int | None, marker: str | None = None) -> bool:
    """True while `pid` runs and is an agent (a recycled pid of an unrelated process is not); with `marker`,
    an agent whose command line holds it (a run's journal file name: the agent of that run, not another's)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return True  # no /proc: trust kill -0
    return b"harness.agent" in cmdline and (marker is None or marker.encode() in cmdline)


def read_pid(pid_file: Path | str | None) -> int | None:
    try:
        return int(Path(pid_file).read_text().strip()) if pid_file else None
    except (OSError, ValueError):
        return None


def write_pid(pid_file: Path) -> None:
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, pid_file)


@dataclass
class Holder:
    """Who holds (or last held) a device's lease."""

    run_id: str
    device: str
    pid: int
    since: float  # epoch seconds
    host: str  # the device's hostname, as the holder saw it
    controller: str | None = None  # "user@host pid N" of the controller that started the run, when known

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        by = f", started by {self.controller}" if self.controller else ""
        return f"run {self.run_id} since {since}, agent pid {self.pid}{by}"


def read_holder(workdir: Path) -> Holder | None:
    """The holder recorded in `lease.json` (alive or not), or None."""
    try:
        data = json.loads((workdir / LEASE_INFO).read_text())
        return Holder(**{k: data.get(k) for k in Holder.__dataclass_fields__})  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError):
        return None


def current_holder(workdir: Path) -> Holder | None:
    """The live holder of the lease, or None when the device is free (the record of a dead agent is not a
    holder: its lock went with it)."""
    holder = read_holder(workdir)
    if holder is None or not isinstance(holder.pid, int) or not is_agent(holder.pid):
        return None
    return holder


class LeaseTimeout(Exception):
    """The lease stayed held past the wait timeout; carries the holder."""

    def __init__(self, holder: Holder | None, waited_s: float) -> None:
        self.holder = holder
        self.waited_s = waited_s
        held = holder.describe() if holder else "another run"
        super().__init__(f"the device stayed busy ({held}) for {waited_s:.0f} s, past --wait-timeout")


class DeviceLease:
    """The exclusive lease on a device, held by this process from `acquire` until it exits."""

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(os.path.expanduser(str(workdir)))
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        import fcntl

        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.fd is None:
            # O_CLOEXEC (Python's default): the worker must not inherit the lock and outlive the agent with it.
            self.fd = os.open(self.workdir / LEASE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def acquire(self, holder: Holder, *, wait_timeout_s: float | None,
                on_wait: Callable[[Holder | None, float], None] = lambda h, s: None) -> float:
        """Take the lease, waiting while another agent holds it (`on_wait(holder, waited_s)` every
        WAIT_REPORT_S, first at once); returns the seconds waited. `wait_timeout_s` None: no limit;
        0: do not wait. Raises LeaseTimeout."""
        t0 = time.monotonic()
        next_report = t0
        while not self.try_acquire():
            waited = time.monotonic() - t0
            holder_now = read_holder(self.workdir)
            if wait_timeout_s is not None and waited >= wait_timeout_s:
                raise LeaseTimeout(holder_now, waited)
            if time.monotonic() >= next_report:
                on_wait(holder_now, waited)
                next_report = time.monotonic() + WAIT_REPORT_S
            time.sleep(WAIT_POLL_S)
        info = self.workdir / LEASE_INFO
        tmp = info.with_name(f"{LEASE_INFO}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(holder)))
        os.replace(tmp, info)
        return time.monotonic() - t0


def agents_of_run(workdir: Path, run_id: str, device: str) -> list[int]:
    """Pids of live agents of (run, device) on this machine: the one in the run's pid file, and the lease
    holder if it is that run's (an agent restarted after a crash rewrites the pid file; both are checked)."""
    stem = run_file_stem(str(workdir), run_id, device)
    marker = Path(stem).name
    pids = []
    pid = read_pid(stem + ".pid")
    if pid and is_agent(pid, marker):
        pids.append(pid)
    holder = current_holder(workdir)
    if holder and holder.run_id == run_id and holder.device == device and holder.pid not in pids:
        pids.append(holder.pid)
    return pids


def stop_agents(pids: list[int]) -> list[int]:
    """SIGKILL each agent with its worker (a detached agent leads its own process group); the pids stopped."""
    stopped = []
    for pid in pids:
        if not is_agent(pid):
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        stopped.append(pid)
    # Wait (bounded) until they are gone: the caller goes on to start agents of its own.
    deadline = time.monotonic() + 5.0
    while any(pid_alive(p) for p in stopped) and time.monotonic() < deadline:
        time.sleep(0.05)
    return stopped


def status(workdir: Path, run_id: str | None = None, device: str | None = None) -> dict[str, Any]:
    """What a controller asks a device: the live lease holder, and the live agents of (run, device)."""
    holder = current_holder(workdir)
    out: dict[str, Any] = {"holder": asdict(holder) if holder else None, "host": socket.gethostname()}
    if run_id is not None and device is not None:
        out["agents"] = agents_of_run(workdir, run_id, device)
    return out


def main(argv: list[str]) -> int:
    """`python - WORKDIR status|stop [RUN DEVICE]` (this file's source on stdin): one JSON line.

    Positional on purpose: a run id or device name that starts with '-' is still data, never an option."""
    if len(argv) not in (2, 4) or argv[1] not in ("status", "stop"):
        print(json.dumps({"error": "usage: python - WORKDIR status|stop [RUN DEVICE]"}), flush=True)
        return 2
    workdir = Path(os.path.expanduser(argv[0]))
    run_id, device = (argv[2], argv[3]) if len(argv) == 4 else (None, None)
    out = status(workdir, run_id, device)
    if argv[1] == "stop" and run_id is not None and device is not None:
        out["stopped"] = stop_agents(out.get("agents", []))
        out["agents"] = agents_of_run(workdir, run_id, device)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
