"""aarch64 in the loop: a real sweep over real SSH on two emulated CPUs (qemu-user), a Pi 4's Cortex-A72 (no
dot product) and a Cortex-A76 (asimddp), built by the same recipe as `make arm-devices`.

The sysroot is built here when it is missing (a clean clone pays the cold setup once, about a minute with
the downloads; `.devices/arm/cache` keeps them). Only a machine that cannot run qemu-user at all skips.
Cases are tiny on purpose: `import torch` alone costs 10-20 s under qemu, so each device runs one agent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sshd import Env, ssh_env, ssh_lab  # noqa: F401 (fixtures)

from devices.emulated import arm
from harness.controller import run_sweep
from results import queries
from results.compare import IncomparableRuns, compare_runs
from results.exchange import export_rows
from workloads.matrix import parse_matrix

pytestmark = pytest.mark.slow

FOUR_CASES = """\
name: arm
defaults: {batch: 1, heads: 2, head_dim: 16, seq_len: 32, variant: dense}
matrix:
  precision: [fp32, int8]
  backend: [torch, onnxruntime]
measure: {warmup_s: 0.01, min_time_s: 0.05, min_samples: 3, max_time_s: 2, timeout_s: 300}
"""


def qemu_unusable() -> str | None:
    """Why this machine cannot run qemu-user at all, or None."""
    qemu = arm.find_qemu()
    if qemu is None:
        return ("qemu-user is not installed (`make test` and `make arm-devices` install qemu-user-static; "
                "elsewhere install your distribution's qemu-user package)")
    try:
        subprocess.run([qemu, "--version"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{qemu} does not run here: {exc}"
    stamp = arm.Layout(arm.DEFAULT_ROOT).stamp
    built = stamp.exists() and stamp.read_text().strip() == arm.recipe_digest()
    if not built and (not shutil.which("apt-get") or not shutil.which("dpkg-deb")):
        return "no apt-get/dpkg-deb to fetch the arm64 userland (the recipe needs a Debian or Ubuntu host)"
    return None


@pytest.fixture(scope="session")
def arm_pythons() -> dict[str, Path]:
    """The two emulated device pythons, built (or found built) under .devices/arm."""
    reason = qemu_unusable()
    if reason:
        pytest.skip(reason)
    return arm.build(arm.DEFAULT_ROOT, check=False)


def test_a_sweep_over_ssh_on_emulated_a72_and_a76_runs_every_case_and_records_the_arm_fingerprints(
        ssh_env: Env, arm_pythons: dict[str, Path]) -> None:
    inventory = ssh_env.inventory({
        "a72": ssh_env.device("pi", python=str(arm_pythons["a72"])),
        "a76": ssh_env.device("jetson", python=str(arm_pythons["a76"])),
    })
    store = ssh_env.store()
    outcome = run_sweep(inventory, store, devices=["a72", "a76"], sweep=parse_matrix(FOUR_CASES))
    assert outcome.status == "complete", {d: o.error for d, o in outcome.devices.items()}
    rows = export_rows(store, [outcome.run_id])
    by_device: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_device.setdefault(row["device"], []).append(row)
    assert sorted(by_device) == ["a72", "a76"]
    for device, got in by_device.items():
        assert len(got) == 4, device
        assert {(r["precision"], r["backend"]) for r in got} == {
            ("fp32", "torch"), ("int8", "torch"), ("fp32", "onnxruntime"), ("int8", "onnxruntime")}
        for r in got:
            assert r["status"] in ("ok", "skipped"), (device, r["precision"], r["backend"], r["error"])
            if r["status"] == "skipped":
                assert r["error"], (device, r)
            else:
                assert r["cos_sim"] > 0.99 and r["latency_ms_p50"] > 0, (device, r)
    fps = {r["device"]: r["fingerprint"] for r in rows}
    for device, cpu in (("a72", "cortex-a72"), ("a76", "cortex-a76")):
        fp = fps[device]
        assert fp["arch"] == "aarch64" and fp["emulated"] is True
        assert fp["emulation"]["cpu"] == cpu and fp["emulation"]["emulator"].startswith("qemu-aarch64")
        assert fp["cpu_model"] == {"a72": "Cortex-A72", "a76": "Cortex-A76"}[device]
        assert fp["hwcaps"]["hwcap"] and "avx2" not in fp["isa"]  # the auxv, never the x86 host's cpuinfo
        assert set(fp["canary"]) >= {"torch.mm fp32", "torch.mm fp64", "onnxruntime"}
    assert fps["a72"]["int8_dot"] == [] and "atomics" not in fps["a72"]["isa"]
    assert fps["a76"]["int8_dot"] == ["asimddp"]
    # The int8 kernels record the route the CPU allowed: no fast path on the A72, the dot product on the A76.
    int8_torch = {r["device"]: r for r in rows if r["precision"] == "int8" and r["backend"] == "torch"}
    for device, fast in (("a72", []), ("a76", ["asimddp"])):
        if int8_torch[device]["status"] == "ok":
            assert int8_torch[device]["details"]["kernel_meta"]["int8_fast_path"] == fast
    # Labelled wherever its timings show, and never compared with a real device's run.
    assert queries.emulated_devices(store, [outcome.run_id]) == {outcome.run_id: ["a72", "a76"]}
    real = store.create_run(matrix_name="arm", matrix_text=FOUR_CASES, measure={}, devices=["a72"])
    store.set_run_device(real, "a72", status="complete", fingerprint=dict(fps["a72"], emulated=False, emulation=None))
    store.finish_run(real, "complete")
    with pytest.raises(IncomparableRuns, match="emulated"):
        compare_runs(store, real, outcome.run_id, devices=["a72"])
