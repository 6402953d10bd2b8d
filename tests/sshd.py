"""Real OpenSSH servers on 127.0.0.1 as test devices, and device pythons with chosen packages missing.

Each server has its own unprivileged port, host key, authorized_keys, pid file and log in a temp directory;
nothing touches the developer's ~/.ssh (tests point HOME at a temp directory too). `kill()` ends the
listener AND its session children, as a board dropping off the network would; a detached agent is not
among them (it left the session when it daemonized) and keeps running.

Also used by benchmarks/fanout.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
REPO = Path(__file__).resolve().parent.parent


def have_sshd() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh-keygen") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str = "attn-harness-test") -> Path:
    """An ed25519 key pair without passphrase at `path` / `path`.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def key_fingerprint(pub: Path) -> str:
    """`SHA256:...` of a public key file, as ssh-keygen computes it."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (reads /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class SSHServer:
    """One sshd on address:port (127.0.0.1 by default) acting as a device; with `netns`, inside that network
    namespace (tests/netlink.py), so every byte to it crosses a link the test controls."""

    root: Path
    port: int
    authorized_key: Path  # the client's public key
    address: str = "127.0.0.1"
    netns: str | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.host_key = self.root / "host_ed25519"
        if not self.host_key.exists():
            keygen(self.host_key, "test-host")
        self.config = self.root / "sshd_config"
        self.pid_file = self.root / "sshd.pid"
        self.log = self.root / "sshd.log"
        shutil.copy(self.authorized_key, self.root / "authorized_keys")
        self.config.write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress {self.address}
            HostKey {self.host_key}
            AuthorizedKeysFile {self.root / 'authorized_keys'}
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            PidFile {self.pid_file}
            StrictModes no
            UsePAM no
            MaxStartups 50
            MaxSessions 50
            LogLevel ERROR
            """))

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        pid = self.pid
        if not pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.address, self.port)) == 0

    def start(self) -> "SSHServer":
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        self.pid_file.unlink(missing_ok=True)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        subprocess.run([*prefix, SSHD, "-f", str(self.config), "-E", str(self.log)], check=True)
        deadline = time.monotonic() + 10
        while not self.running:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on port {self.port} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL the listener and every session below it (a board dropping off the network)."""
        pid = self.pid
        if not pid:
            return
        victims = [pid] + _descendants(pid)
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in victims:  # reap what is ours, so they do not linger as zombies
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        self.pid_file.unlink(missing_ok=True)

    def known_hosts_line(self) -> str:
        kind, b64 = (self.host_key.with_suffix(".pub").read_text().split()[:2])
        return f"[{self.address}]:{self.port} {kind} {b64}"

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.host_key.with_suffix(".pub"))


def make_device_python(dest: Path, missing: tuple[str, ...] = (), base_python: str | None = None) -> Path:
    """A python for a test device: the harness venv's packages minus `missing`, and NOT the editable
    install of this checkout, so the device runs only what the bundle shipped.

    A fresh venv whose one .pth points at a directory of symlinks to the venv's site-packages entries
    (the .pth files there, the editable finder among them, are not processed).
    """
    import sysconfig

    if (dest / "bin" / "python").exists():
        return dest / "bin" / "python"
    site = Path(sysconfig.get_paths()["purelib"])
    subprocess.run([base_python or getattr(sys, "_base_executable", sys.executable), "-m", "venv",
                    "--without-pip", str(dest)], check=True)
    view = dest / "site-view"
    view.mkdir()
    blocked = tuple(m.lower() for m in missing)
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.endswith(".pth") or low.startswith(("__editable__", "attn_harness", "_distutils_hack")):
            continue
        if any(low == m or low.startswith((m + "-", m + ".", m + "_")) for m in blocked):
            continue
        (view / entry.name).symlink_to(entry)
    own_site = next((dest / "lib").glob("python3*/site-packages"))
    (own_site / "device-view.pth").write_text(str(view) + "\n")
    return dest / "bin" / "python"


# -- pytest fixtures (imported by the test_ssh* modules) ------------------------------------------------------
import pytest  # noqa: E402

TINY_MATRIX = """\
name: tiny
defaults: {batch: 1, heads: 2, head_dim: 16, backend: torch}
matrix:
  seq_len: [32, 64, 128]
measure: {warmup_s: 0.01, min_time_s: 0.05, min_samples: 3, max_time_s: 1, timeout_s: 30}
"""


@dataclass
class Lab:
    """Two sshd devices ('pi', 'jetson'), one client key, device pythons; shared by a whole test session."""

    root: Path
    client_key: Path
    servers: dict[str, SSHServer]
    pythons: dict[tuple[str, ...], Path]

    def python(self, *missing: str) -> Path:
        key = tuple(sorted(missing))
        if key not in self.pythons:
            self.pythons[key] = make_device_python(self.root / ("py-" + ("-".join(key) or "full")), key)
        return self.pythons[key]


@dataclass
class Env:
    """One test's world: HOME, known_hosts, inventory, database, all in its tmp_path."""

    lab: Lab
    tmp: Path
    home: Path

    def known_hosts(self, *servers: str) -> Path:
        path = self.tmp / "known_hosts"
        path.write_text("".join(self.lab.servers[s].known_hosts_line() + "\n" for s in servers))
        return path

    def device(self, server: str, **overrides: object) -> dict[str, object]:
        entry: dict[str, object] = {"host": "127.0.0.1", "port": self.lab.servers[server].port, "user": "root",
                                    "identity_file": str(self.lab.client_key), "python": str(self.lab.python()),
                                    "workdir": str(self.tmp / f"work-{server}")}
        entry.update(overrides)
        return entry

    def inventory(self, devices: dict[str, dict[str, object]] | None = None, trusted: tuple[str, ...] = ("pi", "jetson")):
        """An Inventory (also written to inventory.yaml for CLI tests); default: both devices, both trusted."""
        import yaml

        from devices.inventory import parse_inventory

        devices = devices if devices is not None else {"pi": self.device("pi"), "jetson": self.device("jetson")}
        data = {"known_hosts": str(self.known_hosts(*trusted)), "devices": devices}
        path = self.tmp / "inventory.yaml"
        path.write_text(yaml.safe_dump(data))
        return parse_inventory(data, str(path))

    def store(self):
        from results.store import Store

        return Store(f"sqlite:///{self.tmp / 'results.db'}")

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.tmp / 'results.db'}"


@pytest.fixture(scope="session")
def ssh_lab(tmp_path_factory: pytest.TempPathFactory):
    if not have_sshd():
        pytest.skip("openssh-server is not installed (`make test` installs it)")
    root = tmp_path_factory.mktemp("ssh-lab")
    key = keygen(root / "client_ed25519")
    servers = {name: SSHServer(root / name, free_port(), key.with_suffix(".pub")).start()
               for name in ("pi", "jetson")}
    lab = Lab(root, key, servers, {})
    yield lab
    for server in servers.values():
        server.kill()


@pytest.fixture
def ssh_env(ssh_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("HARNESS_INVENTORY", raising=False)
    monkeypatch.delenv("HARNESS_DB", raising=False)
    for server in ssh_lab.servers.values():
        if not server.running:
            server.start()
    return Env(ssh_lab, tmp_path, home)
