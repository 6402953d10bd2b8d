"""Timing helpers for benchmarks/kernels.py and benchmarks/block_edge.py: interleaved rounds, medians, one process."""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable

import torch

from kernels.caps import local_caps
from kernels.inputs import make_inputs
from kernels.metrics import accuracy
from kernels.reference import dense_reference, reference_output
from kernels.registry import Context, lookup
from workloads.spec import canonical_case


def build(raw: dict, inputs: Any = None) -> tuple[dict, Any, Any]:
    """(canonical case, inputs, Built) for a raw case."""
    case = canonical_case(raw)
    inputs = inputs if inputs is not None else make_inputs(case)
    return case, inputs, lookup(case).build(case, inputs, Context(caps=local_caps()))


def interleaved_medians(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median ms per call of each function, timed round-robin so drift hits all of them alike.

    The order is shuffled every round (fixed seed): a function always timed right after the same neighbour
    inherits that neighbour's after-effects (threads going to sleep, a cold cache), which measured as a 25%
    swing for a 0.25 ms kernel at L=128 depending only on its place in the round.
    """
    for fn in fns.values():
        fn()  # warm-up (first-call allocation, graph optimisation)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def accuracy_pair(case: dict, inputs: Any, out: Any) -> tuple[dict, dict]:
    """Accuracy against the variant's own float64 reference and against dense float64."""
    out = out.float() if isinstance(out, torch.Tensor) else out
    return accuracy(out, reference_output(case, inputs)), accuracy(out, dense_reference(case, inputs))
