"""The probe on Arm and under emulation, on planted /proc trees and planted answers: hardware capabilities from
the auxiliary vector (never an x86 host's cpuinfo), the core from MIDR, user-mode qemu told apart from a real
CPU, and the backend canary that turns an op dying with SIGILL into skipped cases with the reason."""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

import pytest

from devices import probe
from devices.emulated import arm
from harness.agent import precheck
from harness.checks import summarize_fingerprint

# AT_HWCAP as qemu 7.2 shows it for -cpu cortex-a72 and cortex-a76 (shared/reference/qemu-aarch64.md).
A72_HWCAP, A76_HWCAP = 0x8FB, 0x119FFB
X86_CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
               "flags\t\t: fpu avx2 avx512f avx512_vnni\n")


def plant(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def auxv_bytes(**entries: int) -> bytes:
    keys = {"hwcap": probe.AT_HWCAP, "hwcap2": probe.AT_HWCAP2, "platform": probe.AT_PLATFORM}
    return b"".join(struct.pack("<QQ", keys[k], v) for k, v in entries.items()) + struct.pack("<QQ", 0, 0)


def test_hwcap_bits_decode_to_the_kernels_feature_names() -> None:
    assert probe.hwcap_features(A72_HWCAP) == ["fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"]
    a76 = probe.hwcap_features(A76_HWCAP)
    assert "asimddp" in a76 and "atomics" in a76 and "fphp" in a76 and "i8mm" not in a76
    assert probe.hwcap_features(0, 1 << 13 | 1 << 14 | 1 << 1) == ["sve2", "i8mm", "bf16"]
    assert probe.hwcap_features(1 << 22) == ["sve"]


def test_on_arm_the_isa_comes_from_the_auxiliary_vector_not_an_x86_hosts_cpuinfo(tmp_path: Path) -> None:
    root = plant(tmp_path, {"proc/cpuinfo": X86_CPUINFO, "proc/self/auxv": auxv_bytes(hwcap=A76_HWCAP),
                            "sys/devices/system/cpu/cpu0/regs/identification/midr_el1": "0x00000000414fd0b1\n"})
    cpu = probe.cpuinfo(str(root), arch="aarch64")
    assert cpu["isa"] == ["asimd", "asimddp", "asimdhp", "atomics", "fphp"]
    assert cpu["cpu_model"] == "Cortex-A76" and cpu["hwcaps"]["hwcap"] == "0x119ffb"
    # The same tree read as x86 keeps the x86 reading.
    assert "avx512_vnni" in probe.cpuinfo(str(root), arch="x86_64")["isa"]


def test_without_an_auxiliary_vector_an_x86_cpuinfo_gives_an_arm_device_no_flags(tmp_path: Path) -> None:
    root = plant(tmp_path, {"proc/cpuinfo": X86_CPUINFO})
    cpu = probe.cpuinfo(str(root), arch="aarch64")
    assert cpu["isa"] == [] and cpu["hwcaps"] is None


def test_a_pi4_cpuinfo_names_the_core_and_big_little_names_both(tmp_path: Path) -> None:
    pi4 = "".join(f"processor\t: {i}\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
                  f"CPU part\t: 0xd08\n\n" for i in range(4)) + "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    cpu = probe.cpuinfo(str(plant(tmp_path / "pi", {"proc/cpuinfo": pi4})), arch="aarch64")
    assert cpu["cpu_model"] == "Cortex-A72" and cpu["isa"] == ["asimd"]
    rk = "".join(f"processor\t: {i}\nCPU implementer\t: 0x41\nCPU part\t: {p}\n\n"
                 for i, p in enumerate(["0xd05"] * 4 + ["0xd0b"] * 4))
    assert probe.cpuinfo(str(plant(tmp_path / "rk", {"proc/cpuinfo": rk})), arch="aarch64")["cpu_model"] == \
        "Cortex-A55 + Cortex-A76"


def test_user_mode_qemu_is_told_apart_from_the_cpu_it_emulates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMU_CPU", "cortex-a72")
    root = plant(tmp_path, {"proc/self/comm": "qemu-aarch64-st\n", "proc/self/stat": "42 (python3.11) S 1 42\n",
                            "proc/self/root/proc/cpuinfo": X86_CPUINFO, "proc/thread-self/.keep": ""})
    os.symlink("/usr/bin/qemu-aarch64-static", root / "proc/thread-self/exe")
    emu = probe.emulation(str(root))
    assert emu is not None
    assert (emu["emulator"], emu["cpu"], emu["host_cpu"]) == ("qemu-aarch64-static", "cortex-a72", "AMD EPYC")
    assert len(emu["evidence"]) == 2
    real = plant(tmp_path / "real", {"proc/self/comm": "python3\n", "proc/self/stat": "42 (python3) S 1 42\n"})
    assert probe.emulation(str(real)) is None


def test_this_machine_is_not_emulated_and_its_fingerprint_says_so() -> None:
    fp = probe.fingerprint()
    assert fp["emulated"] is False and fp["emulation"] is None
    assert "emulation" not in probe.stable(fp)  # keys stored before emulation was detected stay valid
    assert set(fp["canary"]) >= {"torch.mm fp32", "torch.mm fp64", "torch.sdpa fp32", "torch._int_mm"}
    assert all(v == "ok" for v in fp["canary"].values()), fp["canary"]


def test_an_op_that_dies_with_sigill_in_the_canary_is_named_and_the_probe_lives_on() -> None:
    got = probe.run_canary(lambda: os.kill(os.getpid(), signal.SIGILL))
    assert got.startswith("SIGILL (illegal instruction")
    assert probe.run_canary(lambda: 1 / 0) == "error: ZeroDivisionError: division by zero"
    assert probe.run_canary(lambda: None) == "ok"


def test_cases_whose_backend_op_died_in_the_canary_are_skipped_with_the_reason() -> None:
    fp = {"modules": {"torch": True, "onnxruntime": True, "numpy": True, "onnx": True},
          "canary": {"torch.mm fp32": "SIGILL (illegal instruction: the build uses an instruction this CPU lacks)",
                     "torch.mm fp64": "ok", "torch.sdpa fp32": "ok", "onnxruntime": "ok"}}
    caps = probe.capabilities(fp)
    reason = precheck({"backend": "torch", "variant": "dense", "precision": "fp32"}, caps, None)
    assert reason and "torch.mm fp32 dies on this device" in reason and "SIGILL" in reason
    only_ort = dict(fp, canary={"torch.mm fp32": "ok", "torch.mm fp64": "ok", "torch.sdpa fp32": "ok",
                                "onnxruntime": "SIGILL (illegal instruction)"})
    caps = probe.capabilities(only_ort)
    assert precheck({"backend": "torch", "variant": "dense", "precision": "fp32"}, caps, None) is None
    assert "onnxruntime dies" in (precheck({"backend": "onnxruntime", "variant": "dense", "precision": "fp32"},
                                           caps, None) or "")


def test_the_canarys_onnx_model_is_a_valid_model() -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(probe.canary_onnx_model())
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMulInteger", "MatMul"]


def test_devices_check_says_emulated_first_and_names_the_emulation() -> None:
    fp = {"arch": "aarch64", "cpu_model": "Cortex-A72", "emulated": True, "canary": {"torch.mm fp32": "ok"},
          "emulation": {"emulator": "qemu-aarch64-static", "cpu": "cortex-a72", "host_cpu": "AMD EPYC"}}
    summary = summarize_fingerprint(fp)
    assert list(summary)[0] == "emulated"
    assert summary["emulated"].startswith("YES: qemu-aarch64-static -cpu cortex-a72 on AMD EPYC")
    assert summarize_fingerprint({"arch": "x86_64"})["emulated"] == "no"


def test_the_emulated_cpuinfo_is_what_an_arm64_kernel_writes_for_that_core() -> None:
    text = arm.cpuinfo_text(arm.CPUS["a72"], probe.hwcap_features(A72_HWCAP), cores=2)
    assert text.count("processor\t:") == 2 and "CPU part\t: 0xd08" in text and "CPU implementer\t: 0x41" in text
    assert "Features\t: fp asimd aes pmull sha1 sha2 crc32 cpuid\n" in text
    assert arm.CPUS["a76"].part == "0xd0b"


def test_the_recipe_takes_only_the_hosts_debian_archive_entries(tmp_path: Path) -> None:
    etc = plant(tmp_path, {
        "sources.list": "deb http://mirror.example/debian bookworm main\ndeb https://apt.example.com/x stable main\n",
        "sources.list.d/debian.sources": "Types: deb\nURIs: http://mirror.example/debian-security\n"
                                         "Suites: bookworm-security\nComponents: main\nArchitectures: amd64\n"
                                         "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        "sources.list.d/node.sources": "Types: deb\nURIs: https://deb.example/node\nSuites: x\nComponents: main\n"})
    text = arm.debian_sources(etc)
    assert text.count("Types: deb") == 2
    assert "apt.example.com" not in text and "deb.example/node" not in text and "Architectures" not in text
