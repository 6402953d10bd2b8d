"""The worker's verdict on one case, with a planted kernel."""

from __future__ import annotations

import torch

import harness.worker as worker
from kernels import registry
from workloads.spec import canonical_case


def test_a_kernel_whose_output_is_nan_fails_instead_of_reading_as_unmeasured(monkeypatch):
    case = canonical_case({"variant": "dense", "precision": "fp32", "seq_len": 16, "heads": 1, "head_dim": 8})
    key = registry.key_of(case)
    registry.all_kernels()

    def build(case, inputs, ctx):
        out = torch.full_like(inputs.q, float("nan"))
        return registry.Built(lambda: out, compute="planted NaN")

    monkeypatch.setitem(registry._REGISTRY, key, registry.Kernel(key, build, registry.Requires(), "planted"))
    monkeypatch.setattr(worker, "_DEFAULT_THREADS", 1)
    answer = worker.run_case({"case": case, "measure": {"warmup_s": 0.0, "min_time_s": 0.01, "min_samples": 3,
                                                        "max_time_s": 1, "timeout_s": 10}})
    assert answer["status"] == "failed" and "NaN" in answer["error"]
    assert answer["samples_ms"]  # the timing is kept
