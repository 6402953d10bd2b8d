"""The worker: measures cases one at a time in its own process, on the device.

`python -m harness.worker` reads one JSON request per line on stdin and answers one JSON line per request
on the protocol stream (the original stdout; anything a library prints goes to stderr instead). The agent
reuses one worker across cases, so a sweep pays the torch import once, and starts a fresh one when a case
kills it. Runs on devices: standard library, numpy, psutil and torch only.

A request: {"case": {...canonical case...}, "measure": {...MeasureConfig...}, "seed": 0,
            "caps": {...}, "power": {...inventory power mapping...} | null}
An answer: {"status": "ok" | "failed" | "skipped", "error": str | null, "samples_ms": [...], ...}
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import time
import traceback
from typing import Any, Mapping

from workloads.errors import HarnessError
from workloads.matrix import MeasureConfig
from workloads.timing import measure


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs). False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Give freed memory back to the OS so the next case's peak RSS starts from what is really live.

    Tensors are freed by reference counting; only the young generations are collected, because a full
    collection walks torch's hundreds of thousands of objects (0.15 s a case, half the overhead budget).
    """
    gc.collect(1)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _threads(case: Mapping[str, Any]) -> int:
    import torch

    wanted = case.get("threads")
    if wanted:
        torch.set_num_threads(int(wanted))
    else:
        torch.set_num_threads(_DEFAULT_THREADS)
    return torch.get_num_threads()


_DEFAULT_THREADS = 0


def run_case(request: Mapping[str, Any]) -> dict[str, Any]:
    """Measure one case; never raises for a case-level problem (the answer carries status and error)."""
    import torch

    from kernels.inputs import make_inputs
    from kernels.metrics import accuracy
    from kernels.reference import dense_reference, reference_output
    from kernels.registry import Context, Unsupported, lookup

    case = request["case"]
    cfg = MeasureConfig.from_dict(request.get("measure", {}))
    caps = request.get("caps") or {}
    result: dict[str, Any] = {"status": "failed", "error": None}
    try:
        kernel = lookup(case)
    except HarnessError as exc:
        return {"status": "skipped", "error": str(exc)}
    missing = kernel.requires.missing(caps) if caps else None
    if missing:
        return {"status": "skipped", "error": f"{kernel.key}: {missing}"}

    release_memory()
    threads = _threads(case)
    rss_before_kb = _status_kb("VmRSS")
    peak_supported = reset_peak_rss()
    device = "cuda" if caps.get("cuda_device") and torch.cuda.is_available() else "cpu"
    try:
        inputs = make_inputs(case, seed=int(request.get("seed", 0)))
        built = kernel.build(case, inputs, Context(device=device, caps=caps))
        first = built.fn()
        first = first.detach().to("cpu", torch.float64) if isinstance(first, torch.Tensor) else first
        slowdown = int(case.get("slowdown") or 1)
        fn = built.fn if slowdown == 1 else (lambda: [built.fn() for _ in range(slowdown)][-1])
        timing = measure(fn, cfg)
    except Unsupported as exc:
        return {"status": "skipped", "error": str(exc), "threads": threads}
    peak_kb = _status_kb("VmHWM") if peak_supported else None
    result.update(timing.to_dict())
    result.update({
        "status": "ok",
        "threads": threads,
        "torch_device": device,
        "compute": built.compute,
        "kernel_bytes": built.bytes,
        "kernel_meta": built.meta,
        "input_bytes": inputs.nbytes(),
        "rss_before_mb": rss_before_kb / 1024 if rss_before_kb else None,
        "peak_mem_mb": peak_kb / 1024 if peak_kb else None,
        "peak_mem_source": "VmHWM after clear_refs" if peak_kb else None,
    })
    del built
    reference = reference_output(case, inputs)
    result["accuracy"] = accuracy(first, reference)
    if case["variant"] != "dense":
        vs_dense = accuracy(first, dense_reference(case, inputs))
        result["accuracy"].update({f"{k}_vs_dense": v for k, v in vs_dense.items()})
    return result


def serve(requests: Any, out: Any) -> None:
    """Answer requests until stdin closes. A Python exception in a case is a failed case, not a dead worker."""
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        t0 = time.time()
        if "probe" in request:
            # The agent asks the worker to probe: it has torch imported already, the agent need not.
            from devices.probe import fingerprint

            out.write(json.dumps({"fingerprint": fingerprint(request.get("workdir"))}) + "\n")
            out.flush()
            continue
        try:
            answer = run_case(request)
        except MemoryError:
            answer = {"status": "failed", "error": "MemoryError: the case did not fit in memory"}
        except Exception as exc:
            answer = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=8)}
        answer.setdefault("started_at", t0)
        answer["finished_at"] = time.time()
        out.write(json.dumps(answer, allow_nan=True) + "\n")
        out.flush()


def main() -> None:
    global _DEFAULT_THREADS
    # The protocol owns the real stdout; library chatter goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    import torch

    _DEFAULT_THREADS = torch.get_num_threads()
    serve(sys.stdin, protocol)


if __name__ == "__main__":
    main()
