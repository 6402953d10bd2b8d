"""The compare core on planted data: verdicts, intervals, geometric mean, comparability."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from results.compare import (FASTER, FIXED, MISSING_IN_A, MISSING_IN_B, NEWLY_FAILING, NO_SAMPLES, NOISE, SKIPPED,
                             SLOWER, STILL_FAILING, IncomparableRuns, Side, compare_cases, compare_runs,
                             environment_diff, geometric_mean, verdict_for)
from results.store import Store
from workloads.spec import canonical_case, case_hash

FP = {"arch": "aarch64", "cpu_model": "Cortex-A72", "board": "Raspberry Pi 4 Model B Rev 1.4", "cores": 4,
      "isa": ["asimd", "fp"], "mem_total_mb": 3794, "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0-rpi7",
      "python_version": "3.11.2", "torch": "2.4.1", "onnxruntime": "1.19.2", "numpy": "1.26.4",
      "cuda_device": None, "governor": "performance", "hostname": "rpi4"}


def noisy(median: float, n: int = 40, cv: float = 0.01, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median * (1 + cv * rng.standard_normal(n)))


def row(case: dict[str, Any], status: str = "ok", mid: int | None = None, device: str = "rpi4",
        p50: float | None = None, error: str | None = None) -> dict[str, Any]:
    c = canonical_case(case)
    return {"device": device, "case_hash": case_hash(c), **c, "status": status, "error": error,
            "measurement_id": mid, "latency_ms_p50": p50}


FP32 = {"precision": "fp32", "seq_len": 128}
INT8 = {"precision": "int8", "seq_len": 128}
BF16 = {"precision": "bf16", "seq_len": 128}


# -- verdicts ---------------------------------------------------------------------------------------------
def test_a_clear_speedup_beyond_the_minimum_effect_is_faster() -> None:
    out = compare_cases([row(FP32, mid=1)], [row(FP32, mid=2)], {1: noisy(10.0, seed=1), 2: noisy(5.0, seed=2)})
    (c,) = out
    assert c.verdict == FASTER
    assert c.speedup == pytest.approx(2.0, rel=0.02)
    assert c.ci_low is not None and c.ci_high is not None
    assert 1.0 < c.ci_low < c.speedup < c.ci_high


def test_a_clear_slowdown_is_slower_with_speedup_below_one() -> None:
    (c,) = compare_cases([row(FP32, mid=1)], [row(FP32, mid=2)], {1: noisy(10.0, seed=1), 2: noisy(12.0, seed=2)})
    assert c.verdict == SLOWER
    assert c.speedup == pytest.approx(10 / 12, rel=0.02)
    assert c.ci_high < 1.0


def test_a_significant_change_smaller_than_the_minimum_effect_is_noise() -> None:
    # 2% slower with 0.1% noise: the interval excludes 1, but 2% is under the 5% minimum effect.
    a, b = noisy(10.0, cv=0.001, seed=1), noisy(10.2, cv=0.001, seed=2)
    (c,) = compare_cases([row(FP32, mid=1)], [row(FP32, mid=2)], {1: a, 2: b})
    assert c.ci_high < 1.0
    assert c.verdict == NOISE
    (c2,) = compare_cases([row(FP32, mid=1)], [row(FP32, mid=2)], {1: a, 2: b}, min_effect=0.01)
    assert c2.verdict == SLOWER


def test_a_large_change_whose_interval_includes_one_is_noise() -> None:
    # Medians 10 vs 11 but 30% noise on 8 samples: too wide to tell.
    (c,) = compare_cases([row(FP32, mid=1)], [row(FP32, mid=2)],
                         {1: noisy(10.0, n=8, cv=0.3, seed=3), 2: noisy(11.0, n=8, cv=0.3, seed=4)})
    assert c.ci_low < 1.0 < c.ci_high
    assert c.verdict == NOISE


def test_medians_come_from_the_raw_samples_not_the_stored_summary() -> None:
    (c,) = compare_cases([row(FP32, mid=1, p50=99.0)], [row(FP32, mid=2, p50=99.0)],
                         {1: [1.0, 2.0, 3.0, 100.0], 2: [1.0, 1.0, 2.0]})
    assert c.a.median_ms == 2.5 and c.a.n == 4
    assert c.b.median_ms == 1.0 and c.b.n == 3
    assert c.speedup == pytest.approx(2.5)


def test_pruned_samples_fall_back_to_stored_medians_without_an_interval() -> None:
    (c,) = compare_cases([row(FP32, mid=1, p50=10.0)], [row(FP32, mid=2, p50=5.0)], {})
    assert c.speedup == pytest.approx(2.0)
    assert c.ci_low is None and c.ci_high is None
    assert c.verdict == NO_SAMPLES


@pytest.mark.parametrize("a_status,b_status,expected", [
    ("ok", "failed", NEWLY_FAILING), ("ok", "timeout", NEWLY_FAILING), ("failed", "ok", FIXED),
    ("timeout", "ok", FIXED), ("failed", "failed", STILL_FAILING), ("skipped", "ok", MISSING_IN_A),
    ("ok", "skipped", MISSING_IN_B), ("skipped", "skipped", SKIPPED), ("failed", "skipped", MISSING_IN_B),
])
def test_status_transitions_get_their_verdicts(a_status: str, b_status: str, expected: str) -> None:
    samples = {1: noisy(10.0), 2: noisy(10.0, seed=5)}
    (c,) = compare_cases([row(FP32, a_status, mid=1, error=None if a_status == "ok" else "boom")],
                         [row(FP32, b_status, mid=2, error=None if b_status == "ok" else "bang")], samples)
    assert c.verdict == expected
    if expected == NEWLY_FAILING:
        assert c.b.error == "bang" and c.speedup is None


def test_cases_present_on_one_side_only_are_reported_not_dropped() -> None:
    out = compare_cases([row(FP32, mid=1), row(INT8, mid=2)], [row(FP32, mid=3), row(BF16, mid=4)],
                        {i: noisy(10.0, seed=i) for i in range(1, 5)})
    verdicts = {c.case["precision"]: c.verdict for c in out}
    assert verdicts == {"fp32": NOISE, "int8": MISSING_IN_B, "bf16": MISSING_IN_A}
    assert [c.a.status for c in out if c.case["precision"] == "bf16"] == [None]


def test_the_same_case_on_two_devices_is_two_rows() -> None:
    out = compare_cases([row(FP32, mid=1), row(FP32, mid=2, device="jetson")],
                        [row(FP32, mid=3), row(FP32, mid=4, device="jetson")],
                        {1: noisy(10.0), 2: noisy(4.0), 3: noisy(10.0, seed=3), 4: noisy(2.0, seed=4)})
    assert [(c.device, c.verdict) for c in out] == [("jetson", FASTER), ("rpi4", NOISE)]


def test_verdict_needs_both_the_interval_and_the_effect() -> None:
    ok = Side("ok", 1.0)
    assert verdict_for(ok, ok, 1.10, (1.05, 1.15), 0.05) == FASTER
    assert verdict_for(ok, ok, 1.10, (0.99, 1.15), 0.05) == NOISE
    assert verdict_for(ok, ok, 1.03, (1.01, 1.05), 0.05) == NOISE
    assert verdict_for(ok, ok, 1 / 1.10, (0.85, 0.95), 0.05) == SLOWER
    assert verdict_for(ok, ok, 1.10, None, 0.05) == NO_SAMPLES


def test_geometric_mean_of_planted_speedups() -> None:
    assert geometric_mean([2.0, 0.5]) == pytest.approx(1.0)
    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert geometric_mean([None, 4.0, float("nan")]) == pytest.approx(4.0)
    assert geometric_mean([]) is None


def test_bootstrap_interval_is_reproducible() -> None:
    args = ([row(FP32, mid=1)], [row(FP32, mid=2)], {1: noisy(10.0, cv=0.05), 2: noisy(9.0, cv=0.05, seed=9)})
    assert compare_cases(*args) == compare_cases(*args)


# -- comparability ----------------------------------------------------------------------------------------
def test_environment_diff_names_stable_fields_and_ignores_isa_order() -> None:
    other = dict(FP, torch="2.5.0", isa=["fp", "asimd"], governor="ondemand")
    diffs = environment_diff({"rpi4": FP}, {"rpi4": other}, {"git_revision": "aaa"}, {"git_revision": "bbb"})
    got = {(d.device, d.field, d.scope) for d in diffs}
    assert got == {("rpi4", "torch", "stable"), ("rpi4", "governor", "info"), (None, "git_revision", "run")}
    torch = next(d for d in diffs if d.field == "torch")
    assert (torch.a, torch.b) == ("2.4.1", "2.5.0")


def test_environment_diff_flags_a_missing_fingerprint_without_blocking() -> None:
    diffs = environment_diff({"rpi4": FP}, {"rpi4": None})
    assert [(d.field, d.scope) for d in diffs] == [("fingerprint", "info")]


# -- the shell over a real SQLite store -------------------------------------------------------------------
def _record(samples: list[float] | None, status: str = "ok", error: str | None = None) -> dict[str, Any]:
    return {"status": status, "error": error, "samples_ms": samples or [], "started_at": 1.0e9, "finished_at": 1.0e9 + 1}


def _plant_run(store: Store, fingerprint: dict[str, Any], results: dict[str, tuple[dict[str, Any], dict[str, Any]]],
               device: str = "rpi4") -> str:
    run_id = store.create_run(matrix_name="planted", matrix_text="", measure={}, devices=[device])
    store.set_run_device(run_id, device, status="complete", fingerprint=fingerprint)
    for case, record in results.values():
        store.add_result(run_id, device, canonical_case(case), record)
    store.finish_run(run_id, "complete")
    return run_id


def test_compare_runs_refuses_runs_from_different_environments_unless_forced(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    a = _plant_run(store, FP, {"fp32": (FP32, _record(noisy(10.0)))})
    b = _plant_run(store, dict(FP, torch="2.5.0", kernel="6.6.0"), {"fp32": (FP32, _record(noisy(10.0, seed=3)))})
    with pytest.raises(IncomparableRuns) as err:
        compare_runs(store, a, b)
    assert {d.field for d in err.value.diffs} == {"torch", "kernel"}
    assert "torch '2.4.1' -> '2.5.0'" in str(err.value) and "--force" in str(err.value)
    forced = compare_runs(store, a, b, force=True)
    assert not forced.comparable
    assert {d.field for d in forced.stable_diffs} == {"torch", "kernel"}
    assert [c.verdict for c in forced.cases] == [NOISE]


def test_compare_runs_over_a_store_gives_verdicts_counts_and_geomean(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    a = _plant_run(store, FP, {
        "fp32": (FP32, _record(noisy(10.0, seed=1))), "int8": (INT8, _record(noisy(6.0, seed=2))),
        "bf16": (BF16, _record(noisy(8.0, seed=3)))})
    b = _plant_run(store, dict(FP, governor="ondemand"), {
        "fp32": (FP32, _record(noisy(5.0, seed=4))), "int8": (INT8, _record(noisy(12.0, seed=5))),
        "bf16": (BF16, _record(None, "failed", "RuntimeError: boom"))})
    cmp = compare_runs(store, a[:6], "latest")
    assert (cmp.run_a, cmp.run_b) == (a, b)
    assert cmp.comparable  # the governor is volatile: shown, not refused
    assert [d.field for d in cmp.env_diffs if d.device] == ["governor"]
    verdicts = {c.case["precision"]: c.verdict for c in cmp.cases}
    assert verdicts == {"fp32": FASTER, "int8": SLOWER, "bf16": NEWLY_FAILING}
    assert cmp.counts == {SLOWER: 1, FASTER: 1, NEWLY_FAILING: 1}
    assert cmp.geomean == pytest.approx(math.sqrt(2.0 * 0.5), rel=0.03)
    bf16 = next(c for c in cmp.cases if c.case["precision"] == "bf16")
    assert bf16.b.error == "RuntimeError: boom"


# -- emulated devices -------------------------------------------------------------------------------------
EMU = {"emulator": "qemu-aarch64-static", "cpu": "cortex-a72", "host_cpu": "AMD EPYC"}


def test_an_emulated_and_a_real_run_of_the_same_device_are_not_comparable() -> None:
    emulated = dict(FP, emulated=True, emulation=dict(EMU, evidence=["comm is 'qemu-aarch64-st'"]))
    diffs = environment_diff({"rpi4": FP}, {"rpi4": emulated})
    assert [(d.field, d.scope) for d in diffs] == [("emulated", "stable")]
    assert diffs[0].a == "real hardware" and diffs[0].b.startswith("emulated: qemu-aarch64-static -cpu cortex-a72")
    # The same emulation on the same host CPU is comparable (the evidence and paths are not identity)...
    assert environment_diff({"rpi4": emulated}, {"rpi4": dict(emulated, emulation=EMU)}) == []
    # ...on another host CPU it is not: emulated timings are the host's.
    other_host = dict(emulated, emulation=dict(EMU, host_cpu="Intel Xeon"))
    assert [d.field for d in environment_diff({"rpi4": emulated}, {"rpi4": other_host})] == ["emulated"]
    # Fingerprints from before emulation was detected read as real.
    assert environment_diff({"rpi4": FP}, {"rpi4": dict(FP, emulated=False, emulation=None)}) == []


def test_compare_runs_refuses_emulated_against_real_and_labels_emulated_devices(tmp_path: Path) -> None:
    from harness.report import comparison_rows, emulation_warning

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    emulated = dict(FP, emulated=True, emulation=EMU)
    real = _plant_run(store, FP, {"fp32": (FP32, _record(noisy(10.0)))})
    emu_a = _plant_run(store, emulated, {"fp32": (FP32, _record(noisy(900.0)))})
    emu_b = _plant_run(store, emulated, {"fp32": (FP32, _record(noisy(905.0, seed=2)))})
    with pytest.raises(IncomparableRuns, match="emulated 'real hardware' -> 'emulated: qemu-aarch64-static"):
        compare_runs(store, real, emu_a)
    cmp = compare_runs(store, emu_a, emu_b)
    assert cmp.comparable and cmp.emulated_devices == ("rpi4",)
    assert comparison_rows(cmp)[0][0] == "rpi4 (emulated)"
    assert "EMULATED: rpi4" in (emulation_warning(cmp.emulated_devices) or "")
