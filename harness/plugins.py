"""Users' kernel plugins on the controller: where they are named, what exactly they are, where they go.

A plugin is named by a matrix (`plugins: [path, ...]`, relative to the matrix file), by `--plugin PATH` on
the command line, or by an installed package's entry point in the group `attn_harness.kernels`. Nothing
else names one: the harness never imports a plugin it found only in the results database or an import
file (a stored run records its plugins' paths, but `--resume` and `regress --confirm` take plugins from
the command line and check them against the record).

Each plugin is read once, bounded (`MAX_PLUGIN_BYTES`, `MAX_PLUGIN_FILES`), and identified by the sha256 of
that content; its bytes are kept here (`files_of`), so what the devices run is exactly what was hashed and
recorded, whatever happens to the file meanwhile. When it lives in a git work tree its revision and
whether it has uncommitted changes are recorded too (`git_info`). The controller then imports it
(`kernels.plugins.activate`) to learn its variants and knobs; a plugin that fails there is reported with
its file and line, and the cases that needed it are stored as failed; the rest of the sweep runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from harness.safe_text import terminal
from kernels import plugins as loader
from kernels.plugins import PLUGIN_DIR, PluginSpec, PluginStatus, content_sha256, plugin_files
from workloads.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "attn_harness.kernels"
# A plugin is source code, shipped to every device inside the bundle.
MAX_PLUGIN_BYTES = 16 * 2 ** 20
MAX_PLUGIN_FILES = 1000
GIT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Plugin:
    """One plugin as read: its spec (path: where the controller imports it from), its files (names relative
    to the plugin's parent folder) and its provenance."""

    spec: PluginSpec
    files: tuple[tuple[str, bytes], ...]
    source: str  # how it was named: "--plugin", "matrix m.yaml line 3", "entry point attn_harness.kernels: x"
    git: dict[str, Any] | None = None

    def shipped(self, root: str | Path | None = None) -> PluginSpec:
        """The spec a device gets: its copy below `root` (a device's workdir), or inside the bundle."""
        rel = f"{PLUGIN_DIR}/{self.spec.id}/{self.spec.name}"
        return PluginSpec(self.spec.id, self.spec.name, str(Path(root) / rel) if root else rel, self.spec.origin,
                          self.spec.sha256)

    def record(self) -> dict[str, Any]:
        """What a run keeps about it (fingerprint, row details): path, sha256, revision and dirty flag."""
        git = self.git or {}
        return {"name": self.spec.name, "path": self.spec.origin, "sha256": self.spec.sha256,
                "revision": git.get("revision"), "dirty": git.get("dirty"), "repo": git.get("repo"),
                "path_in_repo": git.get("path_in_repo"), "source": self.source}


_files_lock = threading.Lock()
_FILES: dict[str, tuple[tuple[str, bytes], ...]] = {}


def files_of(plugin_id: str) -> tuple[tuple[str, bytes], ...]:
    """The bytes of a plugin read in this process, by id (what the bundle and a local copy are made of)."""
    with _files_lock:
        try:
            return _FILES[plugin_id]
        except KeyError:
            raise PluginError(f"plugin {plugin_id} was not read by this controller") from None


def _keep(plugin_id: str, files: tuple[tuple[str, bytes], ...]) -> None:
    with _files_lock:
        _FILES[plugin_id] = files


def read_plugin(path: str | Path, source: str, *, base: str | Path | None = None, file: str | None = None,
                line: int | None = None, key: str | None = None) -> Plugin:
    """Read the plugin at `path` (relative to `base` when given): a `.py` file, or a folder with
    `__init__.py`. ConfigError (naming `file`, `line`, `key` when given) when it is missing or too large."""
    raw = Path(os.path.expanduser(str(path)))
    full = Path(os.path.normpath((Path(base) / raw if base is not None and not raw.is_absolute() else raw).absolute()))

    def bad(message: str) -> ConfigError:
        return ConfigError(f"plugin {terminal(str(path))}: {message}", file=file, line=line, key=key)

    if full.is_dir():
        if not (full / "__init__.py").is_file():
            raise bad(f"{terminal(str(full))} is a folder without __init__.py; a plugin is a .py file or a package")
    elif not full.exists():
        raise bad(f"{terminal(str(full))} does not exist" + (" (paths in a matrix are relative to the matrix file)"
                                                             if base is not None else ""))
    elif not full.is_file() or full.suffix != ".py":
        raise bad(f"{terminal(str(full))} is not a .py file or a package folder")
    found = plugin_files(full)
    if len(found) > MAX_PLUGIN_FILES:
        raise bad(f"{len(found)} files; a plugin ships to every device, at most {MAX_PLUGIN_FILES} files")
    files, total = [], 0
    for name, p in found:
        if p.is_symlink() and not p.resolve().is_relative_to((full if full.is_dir() else full.parent).resolve()):
            raise bad(f"{terminal(name)} links outside the plugin; ship the file itself")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise bad(f"cannot read {terminal(str(p))}: {exc.strerror or exc}") from None
        total += len(data)
        if total > MAX_PLUGIN_BYTES:
            raise bad(f"more than {MAX_PLUGIN_BYTES // 2 ** 20} MiB; a plugin is source code shipped to every device")
        files.append((name, data))
    sha = content_sha256(files)
    spec = PluginSpec(sha[:16], full.name, str(full), str(full), sha)
    _keep(spec.id, tuple(files))
    return Plugin(spec, tuple(files), source, git_info(full))


def _git(cwd: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(path: Path) -> dict[str, Any] | None:
    """The git work tree a plugin lives in: its top folder, the plugin's path in it, the revision checked out
    (HEAD) and whether the plugin differs from it (`dirty`: modified, or not committed at all). None outside
    a work tree or without git."""
    folder = path if path.is_dir() else path.parent
    top = _git(folder, "rev-parse", "--show-toplevel")
    if not top:
        return None
    try:
        rel = path.resolve().relative_to(Path(top).resolve()).as_posix()
    except ValueError:
        return None
    revision = _git(Path(top), "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    status = _git(Path(top), "status", "--porcelain", "--untracked-files=all", "--", rel)
    tracked = _git(Path(top), "ls-files", "--", rel)
    return {"repo": top, "path_in_repo": rel, "revision": revision or None,
            "dirty": bool(status) or not tracked or not revision}


def entry_point_plugins() -> tuple[list[Plugin], list[str]]:
    """Plugins installed packages expose in the entry point group `attn_harness.kernels` (each names a
    module or package), and a problem line for each that cannot be found."""
    from importlib.metadata import entry_points

    found, problems = [], []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        label = f"entry point {ENTRY_POINT_GROUP}: {ep.name} = {ep.value}"
        try:
            module = importlib.util.find_spec(ep.module)
        except (ImportError, ValueError) as exc:
            module = None
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        if module is None or not module.origin:
            problems.append(f"{label}: module {ep.module} is not installed")
            continue
        where = Path(module.origin)
        path = where.parent if module.submodule_search_locations else where
        try:
            found.append(read_plugin(path, label))
        except ConfigError as exc:
            problems.append(f"{label}: {exc}")
    return found, problems


@dataclass
class PluginSet:
    """The plugins of one run and what loading them on the controller did."""

    plugins: list[Plugin] = field(default_factory=list)
    statuses: dict[str, PluginStatus] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # plugins that could not even be found (entry points)

    @property
    def failed(self) -> list[PluginStatus]:
        return [s for s in self.statuses.values() if not s.ok]

    @property
    def loaded(self) -> list[Plugin]:
        return [p for p in self.plugins if self.statuses.get(p.spec.id) and self.statuses[p.spec.id].ok]

    def messages(self) -> list[str]:
        """One line per plugin that did not load (file and line), and per entry point not found."""
        return [s.error or f"plugin {s.origin} did not load" for s in self.failed] + self.problems

    def by_id(self, plugin_id: str | None) -> Plugin | None:
        return next((p for p in self.plugins if p.spec.id == plugin_id), None)

    def records(self, device: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every plugin's record, with whether it loaded on the controller and (`device`: id -> status dict
        from the device's hello) on the device, and what it registered."""
        out = []
        for p in self.plugins:
            status = self.statuses.get(p.spec.id)
            rec = dict(p.record(), kernels=list(status.kernels) if status else [])
            error = status.error if status and not status.ok else None
            if device is not None and p.spec.id in device and error is None:
                there = device[p.spec.id] or {}
                if not there.get("ok"):
                    error = there.get("error") or "did not load on this device"
            rec["error"] = error
            out.append(rec)
        return out

    def unknown_case_error(self, case: Mapping[str, Any]) -> str:
        """Why a case whose variant (or backend) nobody registered cannot run: the plugins that failed."""
        from workloads.spec import known_backends, known_variants, suggest

        what = (f"variant {case.get('variant')!r}{suggest(str(case.get('variant')), known_variants())}"
                if case.get("variant") not in known_variants() else
                f"backend {case.get('backend')!r}{suggest(str(case.get('backend')), known_backends())}")
        return (f"{what} is registered by no loaded plugin, and plugin(s) failed to load: "
                + "; ".join(self.messages()))


def resolve_plugins(cli: Sequence[str] = (), declared: Sequence[tuple[str, int | None]] = (), *,
                    matrix_file: str | None = None, entry_points: bool = True) -> PluginSet:
    """Read the plugins named on the command line, by a matrix (relative to its folder) and by installed
    entry points, in that order, each once (by content)."""
    named: list[Plugin] = []
    base = Path(matrix_file).parent if matrix_file else None
    for i, (path, line) in enumerate(declared):
        named.append(read_plugin(path, f"matrix {matrix_file} line {line}", base=base, file=matrix_file,
                                 line=line, key=f"plugins[{i}]"))
    for path in cli:
        named.append(read_plugin(path, "--plugin", key="--plugin"))
    problems: list[str] = []
    if entry_points:
        installed, problems = entry_point_plugins()
        named += installed
    unique: dict[str, Plugin] = {}
    for p in named:
        unique.setdefault(p.spec.id, p)
    return PluginSet(list(unique.values()), {}, problems)


def load(plugins: PluginSet) -> PluginSet:
    """Import the set's plugins into this process's registry (replacing any others) and note how each
    did."""
    statuses = loader.activate([p.spec for p in plugins.plugins])
    plugins.statuses = {s.id: s for s in statuses}
    return plugins


def unload() -> None:
    loader.deactivate()


def materialize(specs: Iterable[Mapping[str, Any]], root: Path) -> list[dict[str, Any]]:
    """Write the plan's plugins under `root/plugins/<id>/` (once per id, renamed into place so a concurrent
    run never sees half a copy) and return the specs pointing there: how the local device gets them."""
    out = []
    for raw in specs:
        spec = PluginSpec.from_dict(raw)
        folder = root / PLUGIN_DIR / spec.id
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder.parent))
            for name, data in files_of(spec.id):
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            try:
                tmp.rename(folder)
            except OSError:  # another run put the same content there first
                shutil.rmtree(tmp, ignore_errors=True)
        out.append(dict(raw, path=str(folder / spec.name)))
    return out


def bundle_files(specs: Iterable[Mapping[str, Any]]) -> list[tuple[str, bytes]]:
    """(path in the bundle, bytes) of the plan's plugins: plugins/<id>/<name>."""
    out = []
    for raw in specs:
        spec = PluginSpec.from_dict(raw)
        out += [(f"{PLUGIN_DIR}/{spec.id}/{name}", data) for name, data in files_of(spec.id)]
    return out


def installed_plugins_present() -> bool:
    """Whether an installed package exposes kernels in the `attn_harness.kernels` entry point group (cheap:
    reads package metadata, imports nothing)."""
    from importlib.metadata import entry_points

    return any(True for _ in entry_points(group=ENTRY_POINT_GROUP))


def kernel_listing(paths: Sequence[str] = ()) -> tuple[list[tuple[str, ...]], list[str], list[str]]:
    """What `harness kernels [--plugin PATH ...]` shows: rows (variant, precision, backend, scope, needs,
    from, computes) — every kernel, or with `paths` only the plugins' —, a note per plugin (its sha256 and
    revision, its variants with their knobs and references), and a line per plugin that did not load."""
    from kernels.registry import all_kernels, variant_reference
    from workloads.spec import plugin_variant

    found = load(resolve_plugins(paths, entry_points=True))
    origin = {p.spec.id: p.spec.origin for p in found.plugins}
    rows = []
    for key, k in sorted(all_kernels().items(), key=lambda kv: str(kv[0])):
        if paths and k.plugin is None:
            continue
        needs = ", ".join(k.requires.modules + k.requires.torch_ops)
        where = origin.get(k.plugin, "plugin") if k.plugin else "bundled"
        rows.append((key.variant, key.precision, key.backend, key.scope, needs, where, k.description))
    notes = []
    for p in found.plugins:
        status = found.statuses.get(p.spec.id)
        git = p.git or {}
        version = (f"revision {git['revision'][:12]}" + (" (uncommitted changes)" if git.get("dirty") else "")
                   if git.get("revision") else "not in git")
        notes.append(f"plugin {p.spec.origin} ({p.source}): sha256 {p.spec.sha256}, {version}")
        for variant in (status.variants if status else []):
            vdef = plugin_variant(variant)
            ref = variant_reference(variant)
            knobs = ", ".join(f"{name} (default {spec.default!r})" for name, spec in (vdef.knobs if vdef else {}).items())
            notes.append(f"  variant {variant}: knobs {knobs or 'none'}; accuracy against "
                         + (f"variant {ref}" if isinstance(ref, str) else "its own float64 reference function"))
        if status and status.ok and not status.kernels:
            notes.append("  registers no kernels (no @register ran)")
    return rows, notes, found.messages()
