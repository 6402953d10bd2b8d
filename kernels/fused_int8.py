"""The fused int8 attention kernel (`kernels/native/int8_attention.cpp`): back-end choice, build, call.

The numeric core is a torch-free C++ file with a small C ABI. It ships in the bundle as source and is
compiled on the device on first use by the device's own C++ compiler, one back end per ISA target, into a
plain shared library called through ctypes on the tensors' data pointers. Why not
`torch.utils.cpp_extension`: a torch-free library compiles in about 4 s instead of about a minute (torch's
headers), needs neither ninja nor the Python headers on a board, cannot break when the device's torch is
upgraded (no C++ ABI coupling), and the same file cross-compiles for aarch64 into a standalone test driver
run under qemu-user. A ctypes call costs a few microseconds and releases the GIL. Where torch has loaded an
OpenMP runtime (libgomp in the PyPI wheels), the library is linked against that very file, so the kernel
runs on torch's threads instead of a second pool competing with them (`openmp_runtime`); elsewhere it
keeps a small pool of its own.

Back ends (`BACKENDS`) are chosen from the probe's ISA flags (`choose_backend`): AVX512-VNNI, AVX-VNNI,
AVX2, NEON with the dot product (Orin's A78AE), NEON without it (Pi 4's A72), scalar. `HARNESS_INT8_BACKEND`
forces one (tests and benchmarks), or `eager` for the unfused `torch._int_mm` route.

The build cache lives in the device's workdir (`<workdir>/native/<backend>-<key>/`), keyed by a hash of
the source, the compiler's identity, the back end's flags and the OpenMP runtime. A build happens in a private temporary
directory renamed into place, so two processes compiling at once never see a half-written library: the
first rename wins and the other's copy is discarded. A failed build leaves a `<backend>-<key>.failed` file
with the compiler's output, so later cases do not retry it; a new compiler or source gets a new key.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

SOURCE = Path(__file__).resolve().parent / "native" / "int8_attention.cpp"
LIBRARY = "libattn_int8.so"
ABI_VERSION = 1
# libstdc++ linked in: the library then loads on a device whose libstdc++ is older than the compiler's, and
# nothing but C types crosses its ABI.
COMMON_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-pthread",
                "-static-libstdc++", "-static-libgcc")
BUILD_TIMEOUT_S = 300.0
FORCE_ENV = "HARNESS_INT8_BACKEND"
CACHE_ENV = "HARNESS_NATIVE_CACHE"
EAGER = "eager"
# Rows per scale for the case's `quant` (the same blocks as the eager route: kernels.dense_torch).
QUANT_ROWS = {"per_token": (1, 1), "per_block": (32, 32)}


@dataclass(frozen=True)
class Backend:
    """One ISA target of the fused kernel."""

    name: str
    arch: str  # "x86_64", "aarch64" or "any"
    macro: str
    flags: tuple[str, ...]
    needs: tuple[str, ...]  # probe ISA flags, all required
    dot: str  # the integer instruction doing the products, for `details`
    automatic: bool = True  # False: only when forced (a test-only build)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("avx512vnni", "x86_64", "ATTN_AVX512VNNI",
            ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"), ("avx512_vnni",),
            "vpdpbusd zmm (u8 x s8 -> s32)"),
    Backend("avxvnni", "x86_64", "ATTN_AVXVNNI", ("-mavx2", "-mfma", "-mavxvnni"), ("avx_vnni", "avx2"),
            "vpdpbusd ymm, VEX (u8 x s8 -> s32)"),
    # The AVX-VNNI code path with the EVEX form of the same instruction: lets a CPU with AVX512-VNNI but
    # no AVX-VNNI (AMD Zen 4) run the 256-bit code in tests.
    Backend("avxvnni_evex", "x86_64", "ATTN_AVXVNNI_EVEX",
            ("-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512vnni"), ("avx512_vnni",),
            "vpdpbusd ymm, EVEX (u8 x s8 -> s32)", automatic=False),
    Backend("avx2", "x86_64", "ATTN_AVX2", ("-mavx2", "-mfma"), ("avx2", "fma"),
            "vpmaddwd + vpaddd (s16 x s16 -> s32)"),
    Backend("neon_dot", "aarch64", "ATTN_NEON_DOT", ("-march=armv8.2-a+dotprod",), ("asimddp",),
            "sdot (s8 x s8 -> s32)"),
    Backend("neon", "aarch64", "ATTN_NEON", ("-march=armv8-a",), (),
            "smull/smlal + sadalp (s8 x s8 -> s16 -> s32), smlal (s16 x s16 -> s32)"),
    Backend("scalar", "any", "ATTN_SCALAR", (), (), "C++ integer loops (compiler-vectorized)"),
)}
# Back ends without an integer dot-product instruction: they run only where they beat the eager route
# (see `dense_int8` in kernels.dense_torch), since nothing measured says they do on every CPU.
PORTABLE = ("neon", "scalar")


class BuildError(RuntimeError):
    """The fused kernel could not be compiled or loaded here; the message says why (for `details`)."""


def normalize_arch(arch: str | None) -> str:
    arch = arch or platform.machine()
    return {"AMD64": "x86_64", "amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)


def choose_backend(caps: Mapping[str, Any]) -> str:
    """The best back end for a device's probed capabilities (its `arch` and ISA flags)."""
    arch = normalize_arch(caps.get("arch"))
    isa = set(caps.get("isa", ()))
    for b in BACKENDS.values():
        if b.automatic and b.arch in (arch, "any") and isa.issuperset(b.needs):
            return b.name
    return "scalar"


def backend_missing(name: str, caps: Mapping[str, Any]) -> str | None:
    """Why back end `name` cannot run on a device with `caps`, or None."""
    b = BACKENDS[name]
    arch = normalize_arch(caps.get("arch"))
    if b.arch not in (arch, "any"):
        return f"the {name} back end is for {b.arch}; this device is {arch}"
    lacking = [f for f in b.needs if f not in set(caps.get("isa", ()))]
    if lacking:
        return f"the {name} back end needs the CPU features {', '.join(lacking)}"
    return None


def forced_backend() -> str | None:
    """The back end forced through HARNESS_INT8_BACKEND, or None; an unknown name is refused."""
    value = os.environ.get(FORCE_ENV, "").strip()
    if not value:
        return None
    if value != EAGER and value not in BACKENDS:
        raise BuildError(f"{FORCE_ENV}={value!r} is not a back end; use one of {', '.join([*BACKENDS, EAGER])}")
    return value


def cache_root(workdir: str | None) -> Path:
    """Where built libraries live: $HARNESS_NATIVE_CACHE, else `<workdir>/native` (~/.cache/attn-harness)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = Path(os.path.expanduser(workdir)) if workdir else Path.home() / ".cache" / "attn-harness"
    return base / "native"


@dataclass(frozen=True)
class Compiler:
    path: str
    version: str  # the first line of `--version`
    target: str = ""  # `-dumpmachine`, e.g. aarch64-linux-gnu


def compiler_candidates(arch: str) -> list[str]:
    """$CXX, then the usual names, then the cross compiler named for `arch` (an emulated aarch64 device
    running on an x86 host finds the host's aarch64-linux-gnu-g++, whose output it can load)."""
    return [os.environ.get("CXX") or "", "c++", "g++", "clang++", f"{arch}-linux-gnu-g++"]


@functools.lru_cache(maxsize=4)
def find_compiler(cxx: str | None = None) -> Compiler | None:
    """A C++ compiler that builds for this machine's architecture, with its version, or None."""
    arch = normalize_arch(None)
    for name in ([cxx] if cxx else compiler_candidates(arch)):
        path = shutil.which(name) if name else None
        if not path:
            continue
        try:
            version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            target = subprocess.run([path, "-dumpmachine"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        machine = target.stdout.strip()
        if version.returncode or not version.stdout.strip():
            continue
        if machine and normalize_arch(machine.split("-")[0]) != arch:
            continue  # a compiler for another machine (the host's, seen from an emulated device)
        return Compiler(path, version.stdout.strip().splitlines()[0], machine)
    return None


def build_key(backend: Backend, compiler: Compiler, source: bytes, openmp: Path | None = None) -> str:
    """16 hex digits naming one build: source, compiler identity, flags, ABI version, OpenMP runtime."""
    h = hashlib.sha256()
    runtime = f"{openmp}:{openmp.stat().st_size}" if openmp else ""
    for part in (source, compiler.path.encode(), compiler.version.encode(), compiler.target.encode(),
                 json.dumps([backend.macro, *backend.flags, *COMMON_FLAGS, ABI_VERSION, runtime]).encode()):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


def openmp_runtime() -> Path | None:
    """The OpenMP runtime torch loaded into this process (libgomp, libiomp5 or libomp), or None.

    Linking the kernel against that very file makes its threads torch's: one pool for both. Two pools on
    the same cores (the kernel's and torch's OpenMP team, which spins for a while after every parallel op)
    steal cores from each other; measured on 2 cores, SDPA called right after a kernel with its own pool ran
    2-15x slower.
    """
    if "torch" not in sys.modules:
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        if re.match(r"lib(gomp|iomp5|omp)([-.][^/]*)?\.so", os.path.basename(path)) and os.path.isfile(path):
            return Path(path)
    return None


def build_commands(backend: Backend, compiler: Compiler, source: Path, output: Path,
                   openmp: Path | None) -> list[list[str]]:
    """Compiler invocations building `output`. With an OpenMP runtime: compile with -fopenmp, then link that
    runtime by path (no -fopenmp at link time, which would pull in the compiler's own libgomp)."""
    flags = [*COMMON_FLAGS, f"-D{backend.macro}", *backend.flags]
    if openmp is None:
        return [[compiler.path, *flags, str(source), "-o", str(output)]]
    obj = output.with_suffix(".o")
    compile_flags = [f for f in flags if f not in ("-shared", "-static-libstdc++", "-static-libgcc")]
    return [[compiler.path, *compile_flags, "-fopenmp", "-DATTN_OPENMP", "-c", str(source), "-o", str(obj)],
            [compiler.path, "-shared", "-fPIC", "-pthread", "-static-libstdc++", "-static-libgcc", str(obj),
             str(openmp), f"-Wl,-rpath,{openmp.parent}", "-o", str(output)]]


def ensure_built(backend: Backend, root: Path, compiler: Compiler, openmp: Path | None = None) -> Path:
    """The library for `backend`, compiled into the cache under `root` unless it is there already."""
    source = SOURCE.read_bytes()
    key = build_key(backend, compiler, source, openmp)
    final = root / f"{backend.name}-{key}"
    lib = final / LIBRARY
    if lib.is_file():
        return lib
    failed = root / f"{backend.name}-{key}.failed"
    if failed.is_file():
        raise BuildError(f"the {backend.name} build failed before with this compiler ({failed}): "
                         f"{failed.read_text(errors='replace')[-600:]}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{backend.name}-", dir=root))
    try:
        cmds = build_commands(backend, compiler, SOURCE, tmp / LIBRARY, openmp)
        log, rc = "", 0
        for cmd in cmds:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
                log, rc = log + proc.stdout + proc.stderr, proc.returncode
            except subprocess.TimeoutExpired:
                log, rc = log + f"compiler did not finish within {BUILD_TIMEOUT_S:g} s", -1
            if rc != 0:
                break
        if rc != 0:
            marker = tmp / "failed"
            marker.write_text("\n".join(" ".join(c) for c in cmds) + f"\nexit {rc}\n{log}")
            os.replace(marker, failed)  # atomic: a reader sees all of it or nothing
            raise BuildError(f"compiling the {backend.name} back end failed (exit {rc}): {log.strip()[-600:]}")
        (tmp / LIBRARY).with_suffix(".o").unlink(missing_ok=True)
        (tmp / "build.json").write_text(json.dumps({"commands": cmds, "compiler": compiler.version, "key": key,
                                                    "backend": backend.name,
                                                    "openmp": str(openmp) if openmp else None}, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not lib.is_file():  # not a lost race: a real problem
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


class FusedInt8:
    """A loaded back end: `attention(q, k, v, ...)` on contiguous float32 CPU tensors [B, H, L, D]."""

    def __init__(self, backend: Backend, lib_path: Path, compiler: Compiler | None) -> None:
        self.backend = backend
        self.path = lib_path
        self.compiler = compiler
        lib = ctypes.CDLL(str(lib_path))
        lib.attn_int8_backend.restype = ctypes.c_char_p
        lib.attn_int8_p_format.restype = ctypes.c_char_p
        lib.attn_int8_error.restype = ctypes.c_char_p
        lib.attn_int8_error.argtypes = [ctypes.c_int]
        lib.attn_int8_abi.restype = ctypes.c_int
        lib.attn_int8_threading.restype = ctypes.c_char_p
        ptr, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.attn_int8_attention.argtypes = [ptr, ptr, ptr, ptr, ctypes.POINTER(i64), i64, i64, i64, i64, i64, i64,
                                            i64, c_int, c_int, ctypes.c_float]
        lib.attn_int8_attention.restype = c_int
        lib.attn_int8_linear_bytes.argtypes = [i64, i64]
        lib.attn_int8_linear_bytes.restype = i64
        lib.attn_int8_linear_pack.argtypes = [ptr, i64, i64, ptr]
        lib.attn_int8_linear_pack.restype = c_int
        lib.attn_int8_linear.argtypes = [ptr, i64, i64, ptr, ptr, i64, c_int]
        lib.attn_int8_linear.restype = c_int
        if lib.attn_int8_abi() != ABI_VERSION or lib.attn_int8_backend().decode() != backend.name:
            raise BuildError(f"{lib_path} is not the {backend.name} library of ABI {ABI_VERSION}")
        self._lib = lib
        self.p_format = lib.attn_int8_p_format().decode()
        self.threading = lib.attn_int8_threading().decode()

    def _check(self, rc: int) -> None:
        if rc:
            raise ValueError(f"fused int8 kernel: {self._lib.attn_int8_error(rc).decode()}")

    def attention(self, q: Any, k: Any, v: Any, *, causal: bool = False, threads: int = 1,
                  rows_per_scale: tuple[int, int] = (1, 1), out: Any = None) -> Any:
        """softmax(Q K^T / sqrt(d)) V in the fused kernel; q [B, H, Lq, D], k and v [B, H, Lk, D], float32 CPU
        tensors whose last dimension is contiguous (views with other strides are read in place)."""
        import torch

        b, h, n, d = q.shape
        nk = k.shape[-2]
        if k.shape != (b, h, nk, d) or v.shape != (b, h, nk, d):
            raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
        if out is None:
            out = torch.empty(b, h, n, d)
        strides = []
        for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
            if t.dtype != torch.float32 or t.device.type != "cpu" or t.stride(-1) != 1:
                raise ValueError(f"{name} must be a float32 CPU tensor with a contiguous last dimension")
            strides += list(t.stride()[:3])
        arr = (ctypes.c_int64 * 12)(*strides)
        self._check(self._lib.attn_int8_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), arr, b,
                                                  h, n, nk, d, rows_per_scale[0], rows_per_scale[1], int(causal),
                                                  max(1, threads), 1.0 / math.sqrt(d)))
        return out

    def pack_linear(self, w: Any) -> "PackedLinear":
        """W [k_in, n_out] (y = x W) quantized to int8 per output column, in this back end's layout."""
        import torch

        w = w.detach().to(torch.float32).contiguous()
        k_in, n_out = w.shape
        size = self._lib.attn_int8_linear_bytes(k_in, n_out)
        if size < 0:
            raise ValueError(f"weight {tuple(w.shape)} is out of range for the int8 linear")
        buf = torch.empty(size + 64, dtype=torch.uint8)
        offset = (-buf.data_ptr()) % 64  # the packed layout is read with aligned vector loads
        packed = buf[offset:offset + size]
        self._check(self._lib.attn_int8_linear_pack(w.data_ptr(), k_in, n_out, packed.data_ptr()))
        return PackedLinear(buf, packed, k_in, n_out)

    def linear(self, x: Any, w: "PackedLinear", *, threads: int = 1, out: Any = None) -> Any:
        """x [m, k_in] W -> [m, n_out]: x quantized per row to int8 on the fly, integer dot products."""
        import torch

        m, k_in = x.shape
        if k_in != w.k_in or x.dtype != torch.float32 or x.stride(-1) != 1:
            raise ValueError(f"x {tuple(x.shape)} must be float32 [m, {w.k_in}] with contiguous rows")
        if out is None:
            out = torch.empty(m, w.n_out)
        self._check(self._lib.attn_int8_linear(x.data_ptr(), m, x.stride(0), w.packed.data_ptr(), out.data_ptr(),
                                               out.stride(0), max(1, threads)))
        return out


@dataclass
class PackedLinear:
    """An int8 weight packed by `FusedInt8.pack_linear` (keeps its buffer alive)."""

    buffer: Any
    packed: Any
    k_in: int
    n_out: int

    @property
    def nbytes(self) -> int:
        return int(self.packed.numel())


_LOADED: dict[tuple[str, str], FusedInt8] = {}


def load(name: str, workdir: str | None = None) -> FusedInt8:
    """Back end `name` built (or found) in the cache and loaded; BuildError saying why not."""
    backend = BACKENDS[name]
    root = cache_root(workdir)
    cached = _LOADED.get((name, str(root)))
    if cached is not None:
        return cached
    compiler = find_compiler()
    if compiler is None:
        raise BuildError("no C++ compiler on this device (looked for $CXX, c++, g++, clang++); "
                         "install g++ to build the fused kernel")
    kernel = None
    openmp = openmp_runtime()
    if openmp is not None:
        try:
            kernel = FusedInt8(backend, ensure_built(backend, root, compiler, openmp), compiler)
        except (BuildError, OSError):
            kernel = None  # e.g. no omp.h for this compiler, or an older runtime: the own pool still works
    if kernel is None:
        lib = ensure_built(backend, root, compiler)
        try:
            kernel = FusedInt8(backend, lib, compiler)
        except OSError as exc:
            raise BuildError(f"loading {lib} failed: {exc}") from exc
    _LOADED[(name, str(root))] = kernel
    return kernel
