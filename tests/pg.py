"""A throwaway PostgreSQL server for tests and benchmarks: the distribution's binaries, a cluster in a temp
directory, a free port on 127.0.0.1, a socket directory of its own, stopped when the process ends.

One cluster per test session (started on first use, shared by every module that imports the fixtures);
each test gets a fresh database in it. PostgreSQL refuses to run as root, so as root the cluster belongs to
the `postgres` user (the package creates it) and its commands run through `runuser`.

Where the binaries are missing, the PostgreSQL tests skip with the reason, except under CI (`CI=true`),
where they fail: a CI job that silently skipped them would report a green storage suite it never ran.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest

# Speed over durability: a test cluster holds nothing worth an fsync.
FAST_SETTINGS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                 "-c shared_buffers=128MB")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (or the cluster would not start)."""


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/N/bin with initdb and pg_ctl (or PG_BIN_DIR / PATH)."""
    candidates = [os.environ.get("PG_BIN_DIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2])
                         if p.split("/")[-2].isdigit() else 0, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin "
                              "or on PATH; `make system-deps` installs the `postgresql` package")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A running throwaway cluster; `url(db)` gives a SQLAlchemy URL, `create_database()` a fresh database."""

    def __init__(self) -> None:
        self.bin = find_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="harness-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.sock.mkdir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
        self.port = 0
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync")
        last = ""
        for _ in range(5):  # the free port can be taken between the probe and the server's bind
            self.port = free_port()
            opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 {FAST_SETTINGS}"
            proc = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"),
                             "-w", "-t", "60", "start", check=False)
            if proc.returncode == 0:
                break
            last = proc.stdout + proc.stderr + self.log_tail()
        else:
            self.stop()
            raise PostgresUnavailable(f"pg_ctl start failed: {last}")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and proc.returncode != 0:
            raise PostgresUnavailable(f"{tool} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def log_tail(self) -> str:
        try:
            return (self.root / "server.log").read_text()[-2000:]
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data.exists() and self.port:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


_lock = threading.Lock()
_cluster: Cluster | None = None
_failure: str | None = None


def shared_cluster() -> Cluster:
    """The process's one cluster, started on first use and stopped at exit."""
    global _cluster, _failure
    with _lock:
        if _failure:
            raise PostgresUnavailable(_failure)
        if _cluster is None:
            try:
                _cluster = Cluster()
            except PostgresUnavailable as exc:
                _failure = str(exc)
                raise
            atexit.register(_cluster.stop)
        return _cluster


def cluster_or_skip() -> Cluster:
    """The shared cluster; without PostgreSQL: skip locally, fail under CI."""
    try:
        return shared_cluster()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL tests cannot run under CI: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL not available: {exc}")


# -- fixtures (import them into a test module: `from pg import pg_url, any_db_url`) ---------------------
@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database in the session's throwaway cluster."""
    cluster = cluster_or_skip()
    url = cluster.create_database()
    yield url
    cluster.drop_database(url)  # WITH (FORCE): connections a test left open do not keep it alive


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The test once against a SQLite file and once against a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    cluster = cluster_or_skip()
    url = cluster.create_database()
    yield url
    cluster.drop_database(url)
