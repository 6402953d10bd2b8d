"""Loading users' kernel plugins: a Python file, or a package (a folder with `__init__.py`), that registers
kernels through the public API of `kernels.registry`.

The same loader runs on the controller (to know a plugin's variants and knobs before a matrix is checked)
and on every device (in the worker, from the copy the controller shipped: inside the bundle over SSH, in
the device's workdir for `local`). A plugin is named by a `PluginSpec`: where its code is, what the user
called it (`origin`, for messages) and the sha256 of its content, which the loader checks against what it
finds before importing anything, so a half-copied or changed plugin is refused rather than measured under
another plugin's name.

Each plugin is imported under a module name of its own (`attn_harness_plugin_<id>`), so two revisions of a
plugin never share a module, and inside `registry.plugin_scope`, so one that fails (raises on import, clashes
with a registered kernel) is undone as a whole and reported with its file and line; the other plugins and
the bundled kernels are unaffected. Device-side: standard library only (the plugin itself imports torch).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from workloads.errors import PluginError

from . import registry

# Where shipped plugins live below a bundle or a device's workdir: plugins/<id>/<name>.
PLUGIN_DIR = "plugins"
CODE_ROOT = Path(__file__).resolve().parent.parent
# Skipped when a package plugin is read, hashed or shipped.
IGNORED_PARTS = ("__pycache__",)
IGNORED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class PluginSpec:
    """A plugin as the plan names it (plain JSON both ways)."""

    id: str  # the first 16 hex digits of sha256: names its module and its folder on a device
    name: str  # the file or package folder name: "my_kernel.py", "my_kernels"
    path: str  # where its code is: absolute, or relative to the code root (a bundle)
    origin: str  # the path the user gave (messages name it)
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PluginSpec":
        return cls(**{k: str(data[k]) for k in ("id", "name", "path", "origin", "sha256")})

    @property
    def module(self) -> str:
        return f"attn_harness_plugin_{self.id}"


@dataclass
class PluginStatus:
    """What loading one plugin did: the kernels it registered, or why it did not load."""

    id: str
    origin: str
    ok: bool
    error: str | None = None
    kernels: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plugin_files(path: Path) -> list[tuple[str, Path]]:
    """(relative name, file) of a plugin's code: the file itself, or every file of a package folder
    (sorted; caches and compiled files left out). Names are relative to the plugin's parent folder."""
    if path.is_file():
        return [(path.name, path)]
    out = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path.parent)
        if p.is_file() and not any(part in IGNORED_PARTS or part.startswith(".") for part in rel.parts) \
                and not p.name.endswith(IGNORED_SUFFIXES):
            out.append((rel.as_posix(), p))
    return out


def content_sha256(files: Iterable[tuple[str, bytes]]) -> str:
    """The sha256 of a plugin's content. A single file: the file's own sha256 (what `sha256sum` prints).
    A package: the sha256 of its `sha256sum`-style manifest ("<sha256>  <name>\\n" per file, sorted by
    name), so it can be checked with standard tools too."""
    items = sorted(files)
    if len(items) == 1 and "/" not in items[0][0]:
        return hashlib.sha256(items[0][1]).hexdigest()
    manifest = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in items)
    return hashlib.sha256(manifest.encode()).hexdigest()


def resolve(spec: PluginSpec, root: Path = CODE_ROOT) -> Path:
    """Where a spec's code is on this machine (a relative path is below the code root: the bundle)."""
    path = Path(spec.path)
    return path if path.is_absolute() else root / path


_ACTIVE: list[tuple[PluginSpec, registry.PluginScope | None, PluginStatus]] = []


def active() -> list[PluginStatus]:
    return [status for _, _, status in _ACTIVE]


def activate(specs: Iterable[PluginSpec | Mapping[str, Any]], root: Path = CODE_ROOT) -> list[PluginStatus]:
    """Make exactly these plugins the loaded ones, in this order (those already loaded in that order stay
    as they are); returns one status per plugin. Never raises for a plugin's own failure: its status says
    it."""
    wanted = [s if isinstance(s, PluginSpec) else PluginSpec.from_dict(s) for s in specs]
    keep = 0
    while keep < min(len(wanted), len(_ACTIVE)) and _ACTIVE[keep][0] == wanted[keep]:
        keep += 1
    deactivate(keep)
    for spec in wanted[keep:]:
        scope, status = _load(spec, root)
        _ACTIVE.append((spec, scope, status))
    return active()


def deactivate(keep: int = 0) -> None:
    """Unload every plugin but the first `keep` (their kernels, variants and modules), newest first."""
    while len(_ACTIVE) > keep:
        spec, scope, _ = _ACTIVE.pop()
        if scope is not None:
            registry.unregister(scope)
        for name in [m for m in sys.modules if m == spec.module or m.startswith(spec.module + ".")]:
            del sys.modules[name]


def _load(spec: PluginSpec, root: Path) -> tuple[registry.PluginScope | None, PluginStatus]:
    path = resolve(spec, root)
    fail = lambda message: (None, PluginStatus(spec.id, spec.origin, False, message))  # noqa: E731
    try:
        files = plugin_files(path)
        found = content_sha256((name, p.read_bytes()) for name, p in files)
    except OSError as exc:
        return fail(f"plugin {spec.origin}: cannot read {path}: {exc.strerror or exc}")
    if not files:
        return fail(f"plugin {spec.origin}: {path} holds no files")
    if found != spec.sha256:
        return fail(f"plugin {spec.origin}: the copy at {path} has sha256 {found[:16]}..., not the "
                    f"{spec.sha256[:16]}... the controller sent; it changed or was copied only in part")
    if path.is_dir():
        init = path / "__init__.py"
        if not init.is_file():
            return fail(f"plugin {spec.origin}: a package plugin is a folder with an __init__.py")
        module_spec = importlib.util.spec_from_file_location(spec.module, init, submodule_search_locations=[str(path)])
    else:
        module_spec = importlib.util.spec_from_file_location(spec.module, path)
    if module_spec is None or module_spec.loader is None:
        return fail(f"plugin {spec.origin}: not a Python file or package")
    scope = registry.PluginScope(spec.id, spec.origin)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[spec.module] = module
    try:
        with registry.plugin_scope(scope):
            module_spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 (a plugin's SystemExit or KeyboardInterrupt too is its failure)
        for name in [m for m in sys.modules if m == spec.module or m.startswith(spec.module + ".")]:
            del sys.modules[name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        return fail(describe_failure(exc, spec, path))
    return scope, PluginStatus(spec.id, spec.origin, True, kernels=[str(k) for k in scope.keys],
                               variants=list(scope.variants))


def describe_failure(exc: BaseException, spec: PluginSpec, path: Path) -> str:
    """One line naming the plugin's file and line and what went wrong (paths of the copy shown as the
    user's own)."""
    here = str(path.parent if path.is_file() else path)
    origin_dir = str(Path(spec.origin).parent if path.is_file() else Path(spec.origin))

    def relabel(text: str) -> str:
        return text.replace(here, origin_dir) if here != origin_dir else text

    if isinstance(exc, PluginError):  # it names the line already
        return relabel(f"plugin {exc}" if str(exc).startswith(here) else f"plugin {spec.origin}: {exc}")
    if isinstance(exc, SyntaxError):
        file, line, text = exc.filename or "", exc.lineno, f"SyntaxError: {exc.msg}"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(here)]
        file, line = (frames[-1].filename, frames[-1].lineno) if frames else ("", None)
        text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    file = relabel(file)
    if file == spec.origin:
        return f"plugin {spec.origin} line {line}: {text}"
    return f"plugin {spec.origin}: " + (f"{file} line {line}: " if file else "") + text


def status_of(plugin_id: str) -> PluginStatus | None:
    for spec, _, status in _ACTIVE:
        if spec.id == plugin_id:
            return status
    return None


def failure_for(plugin_id: str | None) -> str | None:
    """The error that keeps a case whose kernel comes from plugin `plugin_id` from running, or None."""
    if not plugin_id:
        return None
    status = status_of(plugin_id)
    if status is None:
        return f"plugin {plugin_id} was not sent to this device"
    return None if status.ok else status.error


def spec_error(specs: Any) -> str | None:
    """What is wrong with a plan's plugin list (it comes from the controller, but is checked before any
    path in it is used), or None."""
    if not isinstance(specs, list):
        return "the plan's plugins are not a list"
    for item in specs:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in
                                                 ("id", "name", "path", "origin", "sha256")):
            return "a plugin in the plan lacks id, name, path, origin or sha256"
        if len(item["id"]) != 16 or any(c not in "0123456789abcdef" for c in item["id"]):
            return f"plugin id {item['id']!r:.40} is not 16 hex digits"
    return None

