"""The device-side bundle: the code an agent needs on a board, keyed by a hash of its content.

The controller ships this to `workdir/bundles/<digest>/` on each device and runs it there with the
device's own python (PYTHONPATH at the bundle). A device that already holds the digest gets nothing sent.
Only device-side code goes in: the agent, the worker, workloads, kernels (with their data files) and the
probes; never the results store, the dashboard or the CLI (they need the controller's dependencies and
are no business of a board). Nothing is ever pip-installed on a device. Users' kernel plugins of a run
travel inside it too, under `plugins/<id>/` (`harness.plugins.bundle_files`): a changed plugin is a new
bundle, as changed harness code is.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# (path relative to the repository root, recursive?) of everything a device runs.
BUNDLE_SOURCES: tuple[tuple[str, bool], ...] = (
    ("harness/__init__.py", False),
    ("harness/agent.py", False),
    ("harness/lease.py", False),
    ("harness/worker.py", False),
    ("workloads", True),
    ("kernels", True),
    ("devices/__init__.py", False),
    ("devices/probe.py", False),
    ("devices/contention.py", False),
    ("devices/thermal.py", False),
    ("devices/power", True),
)
# Never shipped, even if someone drops them inside a shipped directory.
EXCLUDED_PARTS = ("__pycache__", "results", "dashboard", ".pytest_cache", ".mypy_cache")
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".swp")
# Marker written last on the device: a bundle directory without it is incomplete.
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class Bundle:
    """Files (relative path, content) in a stable order and the digest naming them."""

    files: tuple[tuple[str, bytes], ...]
    digest: str

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.files)

    def tarball(self) -> bytes:
        """A gzipped tar of the files, byte-identical for identical content (mtime, owner and order fixed)."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel, data in self.files:
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
        return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _wanted(rel: Path) -> bool:
    if any(part in EXCLUDED_PARTS or part.startswith(".") for part in rel.parts):
        return False
    return not rel.name.endswith(EXCLUDED_SUFFIXES)


def bundle_paths(root: Path = REPO_ROOT) -> list[str]:
    """Relative POSIX paths of every file the bundle holds, sorted. Missing optional sources are skipped."""
    found: set[str] = set()
    for source, recursive in BUNDLE_SOURCES:
        path = root / source
        if recursive and path.is_dir():
            for p in path.rglob("*"):
                rel = p.relative_to(root)
                if p.is_file() and _wanted(rel):
                    found.add(rel.as_posix())
        elif path.is_file():
            found.add(Path(source).as_posix())
    return sorted(found)


def digest_of(files: tuple[tuple[str, bytes], ...]) -> str:
    """16 hex digits of SHA-256 over every path and content (length-prefixed, so no two bundles collide
    by moving bytes between a name and a body)."""
    h = hashlib.sha256()
    for rel, data in files:
        name = rel.encode()
        h.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def build_bundle(root: Path = REPO_ROOT, extra: tuple[tuple[str, bytes], ...] = ()) -> Bundle:
    """Read the device-side files under `root`, add `extra` (path, bytes) files (plugins), and name them by
    their content."""
    files = tuple((rel, (root / rel).read_bytes()) for rel in bundle_paths(root))
    if extra:
        files = tuple(sorted(dict(files + tuple(extra)).items()))
    return Bundle(files=files, digest=digest_of(files))
