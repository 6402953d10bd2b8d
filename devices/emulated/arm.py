"""`make arm-devices`: emulated aarch64 devices, a Raspberry Pi 4's Cortex-A72 and a Cortex-A76, on x86-64 Linux.

`python -m devices.emulated.arm [--root DIR]` leaves, under `.devices/arm/` by default:

- `sysroot/`: an arm64 Debian userland for CPython 3.11 (the `:arm64` packages fetched with a private APT
  configuration and unpacked with `dpkg -x`: the host's dpkg architectures and package state stay as they
  are) with aarch64 wheels of torch, onnxruntime, onnx, numpy and psutil installed into its dist-packages;
- `cpu/a72/`, `cpu/a76/`: one qemu prefix per CPU, the sysroot's directories linked in, plus what that CPU's
  kernel would show and qemu 7.2 does not fake: an Arm `/proc/cpuinfo` (onnxruntime segfaults on import
  when it reads the host's x86 one) and `midr_el1` in sysfs (torch warns without it);
- `python-a72`, `python-a76`: executables that behave as a device's python, running qemu-user
  (`-cpu cortex-a72`: ARMv8.0, no dot product, no LSE atomics, as on a Pi 4; `-cpu cortex-a76`: asimddp,
  standing in for an Orin's A78AE). They export QEMU_LD_PREFIX and QEMU_CPU, and a `.pth` file points
  `sys.executable` at the launcher, so subprocesses and multiprocessing of the guest python work without
  binfmt_misc;
- `cache/`: the downloaded .debs and wheels. A second run finds the sysroot built (a stamp names the
  recipe) and only checks the launchers; after `rm -rf .devices/arm/sysroot` it rebuilds from the cache
  without the network.

Why torch 2.9.1 and not the controller's: PyPI's aarch64 torch from 2.10 on is a CUDA build that needs 2 GB of
NVIDIA wheels to import; 2.9.1 is the last CPU one. A device runs the torch it has; runs record the version.

Timings measured through these pythons are emulated (tens to thousands of times slower than the host, in
no fixed ratio to a real board): the probe records `emulated: true`, and compare and regress keep them apart
from real devices. What emulation is good for is everything else: the ISA the probe reads, kernels' route
choices, onnxruntime's and torch's ARM builds, the transport, faults.

Controller-side (standard library only); needs qemu-user-static, apt-get and dpkg (Debian or Ubuntu hosts).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from devices.probe import hwcap_features

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / ".devices" / "arm"
GUEST_PYTHON = "/usr/bin/python3.11"
DIST_PACKAGES = "usr/lib/python3/dist-packages"
RECIPE_VERSION = 1  # bump when the sysroot layout changes without the package lists changing


@dataclass(frozen=True)
class Cpu:
    """An emulated CPU: qemu's -cpu name and the MIDR_EL1 it reports (implementer 0x41 Arm, part, revision)."""

    key: str
    qemu_cpu: str
    midr: int
    name: str
    stands_for: str

    @property
    def part(self) -> str:
        return f"0x{(self.midr >> 4) & 0xFFF:03x}"


CPUS: dict[str, Cpu] = {
    "a72": Cpu("a72", "cortex-a72", 0x410FD083, "Cortex-A72", "Raspberry Pi 4 (BCM2711): ARMv8.0, no dot product"),
    "a76": Cpu("a76", "cortex-a76", 0x414FD0B1, "Cortex-A76",
               "an Orin-class core (A78AE): ARMv8.2 with the int8 dot product (asimddp)"),
}

# The arm64 userland CPython 3.11 and the wheels' native code need; apt adds their dependencies.
DEB_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libstdc++6", "libgcc-s1",
    "libgomp1", "zlib1g", "libffi8", "libssl3", "libexpat1", "libbz2-1.0", "liblzma5", "libsqlite3-0",
)
# Exact pins, so the cache is reused as is. Binary wheels for manylinux aarch64 / cp311; the rest are pure
# Python (torch's and onnx's import-time dependencies), listed because pip evaluates dependency markers for the
# host, and would add torch's x86-only NVIDIA wheels.
WHEELS = (
    "torch==2.9.1", "numpy==2.4.6", "onnxruntime==1.32.0", "onnx==1.23.2", "psutil==7.2.2", "ml_dtypes==0.7.0",
    "protobuf==7.36.2", "markupsafe==3.0.4",
    "filelock==4.3.2", "typing_extensions==4.16.0", "sympy==1.14.0", "mpmath==1.3.0", "networkx==3.6.1",
    "jinja2==3.1.6", "fsspec==2026.9.0", "flatbuffers==25.12.19", "packaging==26.4",
)
# pip does not fall back from one manylinux tag to older ones by itself when --platform is given.
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_26_aarch64",
             "manylinux_2_17_aarch64", "manylinux2014_aarch64")
QEMU_NAMES = ("qemu-aarch64-static", "qemu-aarch64")


class BuildError(Exception):
    """The recipe cannot go on; the message says what is missing and what to do."""


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"arm-devices [{time.monotonic() - _T0:5.1f} s]: {message}", file=sys.stderr, flush=True)


# -- paths -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def apt(self) -> Path:
        return self.cache / "apt"

    @property
    def wheels(self) -> Path:
        return self.cache / "wheels"

    @property
    def stamp(self) -> Path:
        return self.sysroot / ".attn-harness-recipe"

    def prefix(self, cpu: Cpu) -> Path:
        return self.root / "cpu" / cpu.key

    def launcher(self, cpu: Cpu) -> Path:
        return self.root / f"python-{cpu.key}"


def recipe_digest() -> str:
    """Names the sysroot's recipe: a sysroot stamped with another digest is rebuilt."""
    text = json.dumps({"v": RECIPE_VERSION, "debs": DEB_PACKAGES, "wheels": WHEELS, "guest": GUEST_PYTHON})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_qemu() -> str | None:
    """The qemu-user binary for aarch64 guests, or None."""
    for name in QEMU_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else "unknown"


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """One build at a time per root (a test session and a user's `make` may start together)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], *, what: str, env: dict[str, str] | None = None, timeout: float = 1800,
         capture: bool = True) -> str:
    """Run a command; BuildError with its output's tail when it fails."""
    try:
        proc = subprocess.run(list(cmd), capture_output=capture, text=True, env=env, timeout=timeout)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: no answer within {timeout:.0f} s ({shlex.join(cmd)[:200]})") from None
    if proc.returncode != 0:
        tail = ((proc.stdout or "") + (proc.stderr or ""))[-2000:]
        raise BuildError(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)[:300]}\n{tail}")
    return proc.stdout or ""


# -- the arm64 userland --------------------------------------------------------------------------------------
def debian_sources(etc: Path = Path("/etc/apt")) -> str:
    """The host's Debian archive entries (deb822 stanzas or one-line `deb` lines), for arm64.

    Only entries of the Debian archive (a URI ending in /debian or /debian-security, or signed by its
    keyring): third-party repositories rarely carry arm64 and could fail the update.
    """
    stanzas: list[str] = []
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                lines = [ln for ln in stanza.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
                fields = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines
                          if ":" in ln and not ln.startswith((" ", "\t"))}
                types = fields.get("types", "").split()
                if "deb" not in types or fields.get("enabled", "yes").lower() == "no":
                    continue
                if not _is_debian(fields.get("uris", ""), fields.get("signed-by", "")):
                    continue
                kept = [ln for ln in lines if not ln.lower().startswith(("architectures:", "types:"))]
                stanzas.append("Types: deb\n" + "\n".join(kept))
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if not parts or parts[0] != "deb":
                    continue
                opts = ""
                rest = parts[1:]
                if rest and rest[0].startswith("["):
                    end = next(i for i, p in enumerate(rest) if p.endswith("]"))
                    opts = " ".join(p for p in rest[: end + 1] if not p.strip("[]").startswith("arch="))
                    rest = rest[end + 1:]
                if len(rest) >= 2 and _is_debian(rest[0], opts):
                    signed = _signed_by(opts)
                    stanzas.append(f"Types: deb\nURIs: {rest[0]}\nSuites: {rest[1]}\n"
                                   f"Components: {' '.join(rest[2:]) or 'main'}"
                                   + (f"\nSigned-By: {signed}" if signed else ""))
    return "\n\n".join(stanzas) + "\n" if stanzas else ""


def _is_debian(uris: str, signed: str) -> bool:
    return "debian-archive-keyring" in signed or any(
        u.rstrip("/").endswith(("/debian", "/debian-security")) for u in uris.split())


def _signed_by(opts: str) -> str | None:
    match = re.search(r"signed-by=(\S+?)\]?(\s|$)", opts)
    return match.group(1).rstrip("]") if match else None


def apt_env(layout: Layout, sources: str) -> dict[str, str]:
    """A private APT configuration for arm64: its own sources, lists, package cache and (empty) status."""
    apt = layout.apt
    for sub in ("state/lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "state" / "status").touch()
    (apt / "etc" / "sources.list.d" / "arm64.sources").write_text(sources)
    conf = apt / "etc" / "apt.conf"
    conf.write_text("\n".join([
        f'Dir::State "{apt}/state";',
        f'Dir::State::status "{apt}/state/status";',
        f'Dir::Cache "{apt}/cache";',
        'Dir::Cache::pkgcache "";',
        'Dir::Cache::srcpkgcache "";',
        f'Dir::Etc::SourceList "{apt}/etc/sources.list";',
        f'Dir::Etc::SourceParts "{apt}/etc/sources.list.d";',
        f'Dir::Etc::Preferences "{apt}/etc/preferences";',
        f'Dir::Etc::PreferencesParts "{apt}/etc/preferences.d";',
        'APT::Architecture "arm64";',
        'APT::Architectures { "arm64"; };',
        'APT::Install-Recommends "false";',
        'APT::Install-Suggests "false";',
        'APT::Get::AllowUnauthenticated "false";',
        # The host's own hooks (docker-clean, say) run after downloads; they are not ours to run.
        '#clear APT::Update::Post-Invoke;',
        '#clear APT::Update::Post-Invoke-Success;',
        '#clear DPkg::Post-Invoke;',
        '#clear DPkg::Pre-Invoke;',
        '#clear DPkg::Pre-Install-Pkgs;',
    ]) + "\n")
    env = dict(os.environ)
    env.update({"APT_CONFIG": str(conf), "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"})
    return env


def resolve_debs(env: dict[str, str]) -> list[tuple[str, str]]:
    """(package, version) of everything `apt-get install` would unpack on an empty arm64 system."""
    out = _run(["apt-get", "-s", "-q", "install", *DEB_PACKAGES], what="resolving the arm64 packages", env=env)
    found = re.findall(r"^Inst (\S+) \((\S+) ", out, flags=re.M)
    if not found:
        raise BuildError(f"apt resolved no arm64 packages:\n{out[-1500:]}")
    return [(name.split(":")[0], version) for name, version in found]


def deb_file(archives: Path, name: str, version: str) -> Path | None:
    quoted = version.replace(":", "%3a")
    hits = sorted(archives.glob(f"{name}_{quoted}_*.deb"))
    return hits[0] if hits else None


def fetch_debs(layout: Layout, sources: str) -> list[Path]:
    """The .debs of the userland, downloaded into the cache unless they are there already."""
    env = apt_env(layout, sources)
    archives = layout.apt / "cache" / "archives"
    lists = layout.apt / "state" / "lists"
    updated = False
    if not any(lists.glob("*_Packages*")):
        log("apt-get update (arm64, private configuration)")
        _run(["apt-get", "-q", "update"], what="apt-get update for arm64", env=env)
        updated = True
    for attempt in range(2):
        pkgs = resolve_debs(env)
        missing = [(n, v) for n, v in pkgs if deb_file(archives, n, v) is None]
        if missing:
            log(f"downloading {len(missing)} of {len(pkgs)} arm64 packages")
            try:
                _run(["apt-get", "-q", "-y", "--download-only", "install", *DEB_PACKAGES],
                     what="downloading the arm64 packages", env=env)
            except BuildError:
                if updated or attempt:
                    raise
                # Lists from an earlier run may name versions the archive no longer has.
                _run(["apt-get", "-q", "update"], what="apt-get update for arm64", env=env)
                updated = True
                continue
        files = [deb_file(archives, n, v) for n, v in pkgs]
        absent = [f"{n}={v}" for (n, v), f in zip(pkgs, files) if f is None]
        if absent:
            raise BuildError(f"apt did not download {', '.join(absent)}")
        return [f for f in files if f is not None]
    raise BuildError("could not download the arm64 packages")


def relink_absolute(sysroot: Path) -> None:
    """Absolute symlinks inside the userland point at the host's files: make them relative to the sysroot."""
    for dirpath, dirnames, filenames in os.walk(sysroot):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue
            target = os.readlink(path)
            if target.startswith("/"):
                path.unlink()
                path.symlink_to(os.path.relpath(sysroot / target.lstrip("/"), path.parent))


# -- wheels --------------------------------------------------------------------------------------------------
def _pip_target_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def _wheel_name(requirement: str) -> tuple[str, str]:
    name, _, version = requirement.partition("==")
    return re.sub(r"[-_.]+", "_", name).lower(), version


def cached_wheel(wheels: Path, requirement: str) -> Path | None:
    name, version = _wheel_name(requirement)
    for path in wheels.glob("*.whl"):
        parts = path.name.split("-")
        if re.sub(r"[-_.]+", "_", parts[0]).lower() == name and parts[1] == version:
            return path
    return None


def fetch_wheels(layout: Layout, python: str) -> list[Path]:
    """The aarch64 wheels, downloaded into the cache unless they are there already."""
    layout.wheels.mkdir(parents=True, exist_ok=True)
    missing = [r for r in WHEELS if cached_wheel(layout.wheels, r) is None]
    if missing:
        log(f"downloading {len(missing)} aarch64 wheel(s): {' '.join(missing)}")
        _run([python, "-m", "pip", "download", "-q", "--no-deps", "--dest", str(layout.wheels),
              *_pip_target_args(), *missing], what="pip download of the aarch64 wheels")
    files = [cached_wheel(layout.wheels, r) for r in WHEELS]
    absent = [r for r, f in zip(WHEELS, files) if f is None]
    if absent:
        raise BuildError(f"pip did not download {', '.join(absent)}")
    return [f for f in files if f is not None]


# -- building ------------------------------------------------------------------------------------------------
PTH = ("import os, sys; sys.executable = os.environ.get('ATTN_HARNESS_EMULATED_PYTHON') or sys.executable\n")


def build_sysroot(layout: Layout, python: str, sources: str) -> None:
    """Fetch (or take from the cache) and unpack the userland and the wheels; stamp the sysroot."""
    debs = fetch_debs(layout, sources)
    wheels = fetch_wheels(layout, python)
    tmp = layout.root / "sysroot.incoming"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"unpacking {len(debs)} arm64 packages")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], what=f"unpacking {deb.name}")
    relink_absolute(tmp)
    if not (tmp / GUEST_PYTHON.lstrip("/")).exists():
        raise BuildError(f"the unpacked userland has no {GUEST_PYTHON}")
    dist = tmp / DIST_PACKAGES
    dist.mkdir(parents=True, exist_ok=True)
    log(f"installing {len(wheels)} aarch64 wheels")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile", "--target", str(dist),
          *_pip_target_args(), *map(str, wheels)], what="pip install of the aarch64 wheels")
    (dist / "zz-attn-harness-emulated.pth").write_text(PTH)
    compile_bytecode(tmp, python)
    (tmp / layout.stamp.name).write_text(recipe_digest() + "\n")
    shutil.rmtree(layout.sysroot, ignore_errors=True)
    os.replace(tmp, layout.sysroot)


def compile_bytecode(sysroot: Path, python: str) -> None:
    """Precompile the guest's .py files on the host (same 3.11 bytecode): the environment may forbid writing
    .pyc files at run time (PYTHONDONTWRITEBYTECODE), and without them `import torch` under qemu takes twice
    as long."""
    version = _run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], what="host python").strip()
    if version != "3.11":
        log(f"the host python is {version}, not 3.11: bytecode not precompiled (imports under qemu are slower)")
        return
    log("precompiling the guest's Python files")
    for sub in ("usr/lib/python3.11", DIST_PACKAGES):
        # -s/-p: tracebacks name the guest's paths. -j0: every core. Compile errors in test data are expected.
        subprocess.run([python, "-m", "compileall", "-q", "-j0", "-s", str(sysroot), "-p", "/", str(sysroot / sub)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)


def _write_if_changed(path: Path, text: str, mode: int | None = None) -> None:
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, path)


def guest_hwcaps(layout: Layout, qemu: str, cpu: Cpu) -> tuple[int, int]:
    """AT_HWCAP and AT_HWCAP2 as the emulated CPU shows them to a guest process (cached per qemu version)."""
    cache = layout.prefix(cpu) / ".hwcaps.json"
    key = f"{qemu_version(qemu)}:{cpu.qemu_cpu}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return int(cached["hwcap"]), int(cached["hwcap2"])
    except (OSError, ValueError, KeyError):
        pass
    code = ("import struct; d = open('/proc/self/auxv', 'rb').read(); "
            "a = dict(struct.iter_unpack('<QQ', d)); print(a.get(16, 0), a.get(26, 0))")
    out = _run([qemu, "-L", str(layout.sysroot), "-cpu", cpu.qemu_cpu,
                str(layout.sysroot / GUEST_PYTHON.lstrip("/")), "-I", "-S", "-c", code],
               what=f"reading the {cpu.name}'s hardware capabilities under qemu", timeout=120)
    hwcap, hwcap2 = (int(v) for v in out.split())
    _write_if_changed(cache, json.dumps({"key": key, "hwcap": hwcap, "hwcap2": hwcap2}) + "\n")
    return hwcap, hwcap2


def cpuinfo_text(cpu: Cpu, features: Sequence[str], cores: int) -> str:
    """/proc/cpuinfo as an arm64 Linux kernel writes it for this CPU (no BogoMIPS: there is nothing to report)."""
    midr = cpu.midr
    block = (f"Features\t: {' '.join(features)}\nCPU implementer\t: 0x{midr >> 24:02x}\nCPU architecture: 8\n"
             f"CPU variant\t: 0x{(midr >> 20) & 0xF:x}\nCPU part\t: {cpu.part}\nCPU revision\t: {midr & 0xF}\n")
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(cores))


def make_prefix(layout: Layout, qemu: str, cpu: Cpu) -> Path:
    """The qemu prefix of one CPU: the sysroot's top-level directories linked in, plus its /proc/cpuinfo,
    MIDR in sysfs and a device-tree model that says it is emulated."""
    prefix = layout.prefix(cpu)
    prefix.mkdir(parents=True, exist_ok=True)
    for entry in layout.sysroot.iterdir():
        if entry.name.startswith(".") or entry.name in ("proc", "sys"):
            continue
        link = prefix / entry.name
        target = os.path.relpath(entry, prefix)
        if not link.is_symlink() or os.readlink(link) != target:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
    hwcap, hwcap2 = guest_hwcaps(layout, qemu, cpu)
    cores = os.cpu_count() or 1
    _write_if_changed(prefix / "proc" / "cpuinfo", cpuinfo_text(cpu, hwcap_features(hwcap, hwcap2), cores))
    _write_if_changed(prefix / "proc" / "device-tree" / "model", f"qemu-user emulated {cpu.name}\x00")
    for i in range(cores):
        ident = prefix / "sys" / "devices" / "system" / "cpu" / f"cpu{i}" / "regs" / "identification"
        _write_if_changed(ident / "midr_el1", f"0x{cpu.midr:016x}\n")
        _write_if_changed(ident / "revidr_el1", f"0x{0:016x}\n")
    return prefix


def write_launcher(layout: Layout, qemu: str, cpu: Cpu) -> Path:
    """The device python for one CPU: a sh script that execs qemu-user on the guest's CPython."""
    prefix = layout.prefix(cpu)
    launcher = layout.launcher(cpu)
    q = shlex.quote
    text = (
        "#!/bin/sh\n"
        f"# An emulated aarch64 python: qemu-user -cpu {cpu.qemu_cpu}, standing in for {cpu.stands_for}.\n"
        "# Made by `make arm-devices` (devices/emulated/arm.py). Timings measured through it are emulated.\n"
        f"QEMU_LD_PREFIX={q(str(prefix))}\n"
        f"QEMU_CPU={q(cpu.qemu_cpu)}\n"
        f"ATTN_HARNESS_EMULATED_PYTHON={q(str(launcher))}\n"
        "export QEMU_LD_PREFIX QEMU_CPU ATTN_HARNESS_EMULATED_PYTHON\n"
        f'exec {q(qemu)} {q(str(prefix / GUEST_PYTHON.lstrip("/")))} "$@"\n'
    )
    _write_if_changed(launcher, text, mode=0o755)
    return launcher


def smoke_test(launcher: Path, cpu: Cpu) -> None:
    """The launcher runs, says aarch64, imports numpy, onnxruntime and psutil (not torch: 20 s under qemu)."""
    code = ("import platform, sys, numpy, onnxruntime, psutil; "
            "print(platform.machine(), sys.executable, onnxruntime.__version__)")
    out = _run([str(launcher), "-c", code], what=f"checking {launcher.name}", timeout=300).split()
    if not out or out[0] != "aarch64" or out[1] != str(launcher):
        raise BuildError(f"{launcher.name} does not run as an aarch64 python: {' '.join(out)!r}")


def build(root: Path = DEFAULT_ROOT, *, python: str = sys.executable, cpus: Sequence[str] = tuple(CPUS),
          check: bool = True, sources: str | None = None) -> dict[str, Path]:
    """Build (or check) the emulated devices under `root`; returns the launcher of each CPU by key."""
    if not sys.platform.startswith("linux"):
        raise BuildError("emulated devices need Linux (qemu-user)")
    qemu = find_qemu()
    if qemu is None:
        raise BuildError("qemu-user is not installed: `apt-get install qemu-user-static` (make arm-devices "
                         "does it), or your distribution's qemu-user package")
    layout = Layout(root.resolve())
    t0 = time.monotonic()
    with locked(layout.root):
        stamp = layout.stamp.read_text().strip() if layout.stamp.exists() else None
        if stamp != recipe_digest():
            log(f"building the arm64 sysroot in {layout.sysroot} (downloads are cached in {layout.cache})")
            srcs = sources if sources is not None else debian_sources()
            if not srcs.strip():
                raise BuildError("no Debian archive entry in /etc/apt/sources.list{,.d}: pass --apt-sources FILE "
                                 "(a deb822 .sources file of a Debian 12 archive)")
            if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
                raise BuildError("apt-get and dpkg-deb are needed to fetch the arm64 userland (Debian or Ubuntu)")
            build_sysroot(layout, python, srcs)
        launchers = {}
        for key in cpus:
            cpu = CPUS[key]
            make_prefix(layout, qemu, cpu)
            launchers[key] = write_launcher(layout, qemu, cpu)
            if check:
                smoke_test(launchers[key], cpu)
    log(f"ready in {time.monotonic() - t0:.1f} s: " + ", ".join(str(p) for p in launchers.values()))
    return launchers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devices.emulated.arm", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where to build (default .devices/arm)")
    parser.add_argument("--cpu", action="append", choices=sorted(CPUS), help="only this CPU (repeatable)")
    parser.add_argument("--no-check", action="store_true", help="skip the launchers' import check")
    parser.add_argument("--apt-sources", type=Path, help="a deb822 .sources file of a Debian 12 archive to use "
                                                         "instead of the host's")
    args = parser.parse_args(argv)
    try:
        sources = args.apt_sources.read_text() if args.apt_sources else None
        launchers = build(args.root, cpus=args.cpu or tuple(CPUS), check=not args.no_check, sources=sources)
    except (BuildError, OSError) as exc:
        log(f"error: {exc}")
        return 2
    for key, path in launchers.items():
        print(f"{key}: {path}  ({CPUS[key].stands_for})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
