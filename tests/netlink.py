"""Test devices behind real network links: a network namespace per device, joined to the controller's by a
link whose delay and loss the test sets, and that it can cut and restore.

The link is a veth pair shaped by `tc netem` where the kernel has sch_netem. Where it has not (some VM and
container kernels are built without it), the same link is a pair of TUN devices joined by a small forwarder
thread that delays and drops IP packets exactly as netem would (the kernels' TCP sees real delay, loss and
retransmissions either way). `Link.kind` says which one a test got.

Addresses are 10.250.N.1 (the controller's side) and 10.250.N.2 (the device's), inside namespaces these
tests create and delete: no traffic leaves the machine.
"""

from __future__ import annotations

import fcntl
import heapq
import itertools
import os
import random
import select
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
_counter = itertools.count(1)


class NetlinkUnavailable(Exception):
    """Network namespaces cannot be made here (no root, no CAP_NET_ADMIN, no iproute2)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


# Whether the kernel has sch_netem, found by the first link made (a veth with a netem qdisc tried on it).
_NETEM: list[bool] = []


class TunWire:
    """Two TUN devices joined by a thread that forwards IP packets both ways after `delay_s`, dropping each
    with probability `loss` (a seeded generator, so a run is repeatable). loss 1.0 cuts the link."""

    def __init__(self, host_name: str, device_name: str, seed: int = 0) -> None:
        self.fds = [self._open(host_name), self._open(device_name)]
        self.delay_s = 0.0
        self.loss = 0.0
        self.rng = random.Random(seed)
        self.forwarded = self.dropped = 0
        self._queue: list[tuple[float, int, int, bytes]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tun-wire", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(name: str) -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        return fd

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            wait = min(max(self._queue[0][0] - now, 0.0), 0.05) if self._queue else 0.05
            ready, _, _ = select.select(self.fds, [], [], wait)
            now = time.monotonic()
            for fd in ready:
                out = self.fds[1] if fd == self.fds[0] else self.fds[0]
                while True:
                    try:
                        packet = os.read(fd, 65536)
                    except (BlockingIOError, OSError):
                        break
                    if self.rng.random() < self.loss:
                        self.dropped += 1
                        continue
                    heapq.heappush(self._queue, (now + self.delay_s, next(self._seq), out, packet))
            while self._queue and self._queue[0][0] <= time.monotonic():
                _, _, out, packet = heapq.heappop(self._queue)
                try:
                    os.write(out, packet)
                    self.forwarded += 1
                except OSError:
                    pass  # the receiving side is down: the packet is lost, as on a wire

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for fd in self.fds:
            os.close(fd)


@dataclass
class Link:
    """A namespace `netns` whose only way out is a link to the controller's namespace."""

    netns: str
    host_ip: str
    device_ip: str
    kind: str  # "netem" (veth + tc netem) or "tun" (TUN pair + forwarder thread)
    host_if: str
    device_if: str
    wire: TunWire | None = None
    shaped: tuple[float, float] = (0.0, 0.0)
    _timers: list[threading.Timer] = field(default_factory=list)

    @classmethod
    def create(cls) -> "Link":
        n = next(_counter)
        tag = f"{os.getpid() % 100000}x{n}"
        netns, host_if, device_if = f"ah{tag}", f"ah{tag}h", f"ah{tag}d"
        subnet = f"10.250.{(os.getpid() + n) % 250}"
        host_ip, device_ip = f"{subnet}.1", f"{subnet}.2"
        try:
            _ip("netns", "add", netns)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            raise NetlinkUnavailable(f"cannot create a network namespace (needs root and CAP_SYS_ADMIN): "
                                     f"{str(detail).strip()}") from None
        try:
            kind, wire = cls._join(netns, host_if, device_if)
            _ip("addr", "add", host_ip, "peer", device_ip, "dev", host_if)
            _ip("link", "set", host_if, "up")
            _ip("-n", netns, "addr", "add", device_ip, "peer", host_ip, "dev", device_if)
            _ip("-n", netns, "link", "set", device_if, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
        except Exception:
            _ip("link", "del", host_if, check=False)
            _ip("netns", "del", netns, check=False)
            raise
        return cls(netns, host_ip, device_ip, kind, host_if, device_if, wire)

    @staticmethod
    def _join(netns: str, host_if: str, device_if: str) -> tuple[str, TunWire | None]:
        """A veth pair if netem can shape it, else a TUN pair and its forwarder."""
        if not _NETEM or _NETEM[0]:
            _ip("link", "add", host_if, "type", "veth", "peer", "name", device_if)
            probe = subprocess.run(["tc", "qdisc", "add", "dev", host_if, "root", "netem", "delay", "1ms"],
                                   capture_output=True, text=True, timeout=30)
            if not _NETEM:
                _NETEM.append(probe.returncode == 0)
            if _NETEM[0]:
                subprocess.run(["tc", "qdisc", "del", "dev", host_if, "root"], capture_output=True, timeout=30)
                _ip("link", "set", device_if, "netns", netns)
                return "netem", None
            _ip("link", "del", host_if)
        if not os.path.exists("/dev/net/tun"):
            raise NetlinkUnavailable("the kernel has neither the netem qdisc nor /dev/net/tun to emulate a link")
        wire = TunWire(host_if, device_if)
        _ip("link", "set", device_if, "netns", netns)
        return "tun", wire

    def shape(self, delay_ms: float, loss_pct: float) -> None:
        """Each direction: packets delayed by `delay_ms` and dropped with probability `loss_pct` percent."""
        self.shaped = (delay_ms, loss_pct)
        if self.wire is not None:
            self.wire.delay_s, self.wire.loss = delay_ms / 1000.0, loss_pct / 100.0
            return
        for prefix in ([], ["ip", "netns", "exec", self.netns]):
            dev = self.device_if if prefix else self.host_if
            subprocess.run([*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay",
                            f"{delay_ms:g}ms", "loss", f"{loss_pct:g}%"], check=True, capture_output=True, timeout=30)

    def cut(self, seconds: float | None = None) -> None:
        """Drop every packet both ways (netem loss 100%); with `seconds`, restore the link after that long."""
        delay, loss = self.shaped
        self.shape(delay, 100.0)
        self.shaped = (delay, loss)
        if seconds is not None:
            timer = threading.Timer(seconds, self.restore)
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    def restore(self) -> None:
        self.shape(*self.shaped)

    def kill_processes(self) -> None:
        """SIGKILL what the tests started inside the namespace (sshd, its sessions, detached agents)."""
        pids = _ip("netns", "pids", self.netns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def delete(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.kill_processes()
        if self.wire is not None:
            self.wire.close()
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.netns, check=False)
