"""The worker: measures cases one at a time in its own process, on the device.

`python -m harness.worker` reads one JSON request per line on stdin and answers one JSON line per request
on the protocol stream (the original stdout; anything a library prints goes to stderr instead). The agent
reuses one worker across cases, so a sweep pays the torch import once, and starts a fresh one when a case
kills it. Runs on devices: standard library, numpy, psutil and torch only.

A request: {"case": {...canonical case...}, "measure": {...MeasureConfig...}, "seed": 0,
            "caps": {...}, "power": {...inventory power mapping...} | null, "workdir": str | null,
            "plugins": [{...kernels.plugins.PluginSpec...}], "plugin": id | null,
            "timing_only": bool (a further process of the case: no accuracy)}
An answer: {"status": "ok" | "failed" | "skipped", "error": str | null, "samples_ms": [...], ...}

Users' plugins (`plugins`) are imported once per worker, before the first case (`kernels.plugins`); a case
whose kernel comes from a plugin that did not load here (`plugin`) fails with that plugin's error, file and
line. `{"plugins": [...]}` alone loads them and answers each one's status.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import sys
import time
import traceback
from typing import Any, Mapping

from devices import thermal
from devices.contention import Contention, CpuSnapshot, contention, worker_cpus
from workloads.errors import HarnessError
from workloads.matrix import MeasureConfig
from workloads.spec import EXTERNAL
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
    from kernels.registry import Context, Unsupported, lookup, reference_of

    case = request["case"]
    if case.get("variant") == EXTERNAL:  # an imported benchmark: nothing here can run it (the matrix refuses it)
        return {"status": "skipped", "error": f"variant {EXTERNAL} is import-only: results of benchmarks imported "
                                              "from pyperf or pytest-benchmark files; no kernel runs them"}
    cfg = MeasureConfig.from_dict(request.get("measure", {}))
    caps = request.get("caps") or {}
    result: dict[str, Any] = {"status": "failed", "error": None}
    failure = load_plugins(request.get("plugins"), request.get("plugin"))
    if failure:
        return {"status": "failed", "error": failure}
    try:
        kernel = lookup(case)
    except HarnessError as exc:
        return {"status": "skipped", "error": str(exc)}
    missing = kernel.requires.missing(caps) if caps else None
    if missing:
        return {"status": "skipped", "error": f"{kernel.key}: {missing}"}

    thermal_before = _thermal_snapshot()
    cooldown = thermal.cool_down(cfg.cooldown_c, cfg.cooldown_max_s) if cfg.cooldown_c else None
    release_memory()
    threads = _threads(case)
    rss_before_kb = _status_kb("VmRSS")
    peak_supported = reset_peak_rss()
    device = "cuda" if caps.get("cuda_device") and torch.cuda.is_available() else "cpu"
    try:
        inputs = make_inputs(case, seed=int(request.get("seed", 0)))
        built = kernel.build(case, inputs, Context(device=device, caps=caps, workdir=request.get("workdir")))
        first = built.fn()
        first = first.detach().to("cpu", torch.float64) if isinstance(first, torch.Tensor) else first
        test_slowdown = request.get("test_slowdown") or {}
        planted = int(test_slowdown.get(case["precision"], test_slowdown.get("*", 1)))
        slowdown = int(case.get("slowdown") or 1) * planted
        fn = built.fn if slowdown == 1 else _repeated(built.fn, slowdown)
        timing, power, busy = _measure_with_power(fn, cfg, request.get("power"))
        retried = None
        if cfg.on_contention == "retry" and busy.contended(cfg.max_cpu_other):
            # Measured once more; the first attempt is kept in the details, not thrown away.
            retried = {"cpu_other": busy.cpu_other, "samples_ms": timing.samples_ms, "contention": busy.to_dict()}
            timing, power, busy = _measure_with_power(fn, cfg, request.get("power"))
    except Unsupported as exc:
        return {"status": "skipped", "error": str(exc), "threads": threads}
    peak_kb = _status_kb("VmHWM") if peak_supported else None
    result.update(timing.to_dict())
    result.update({
        "status": "ok",
        "worker_pid": os.getpid(),
        "threads": threads,
        "torch_device": device,
        "compute": built.compute,
        "kernel_bytes": built.bytes,
        "kernel_meta": built.meta,
        "input_bytes": inputs.nbytes(),
        "rss_before_mb": rss_before_kb / 1024 if rss_before_kb else None,
        "peak_mem_mb": peak_kb / 1024 if peak_kb else None,
        "peak_mem_source": "VmHWM after clear_refs" if peak_kb else None,
        "power": power,
        "contention": busy.to_dict(),
        "cpu_other": busy.cpu_other,
        "contended": busy.contended(cfg.max_cpu_other),
        "contention_retry": retried,
        "test_slowdown": planted if planted != 1 else None,
        "thermal": _thermal_record(thermal_before, _thermal_snapshot(), cooldown),
    })
    del built
    if request.get("timing_only"):
        # A further process of a case measured in several (measure.processes): the first one computed the
        # accuracy; this one adds its timing, memory and contention only.
        return result
    ref_case, ref_fn = reference_of(case)
    reference = reference_output(ref_case, inputs) if ref_fn is None else plugin_reference(ref_fn, case, inputs)
    result["accuracy"] = accuracy(first, reference)
    if ref_case is not case:
        result["reference"] = f"variant {ref_case['variant']}" if ref_fn is None else \
            f"the plugin's function {getattr(ref_fn, '__qualname__', 'reference')}"
    if case["variant"] != "dense" and (ref_fn is not None or ref_case["variant"] != "dense"):
        vs_dense = accuracy(first, dense_reference(case, inputs))
        result["accuracy"].update({f"{k}_vs_dense": v for k, v in vs_dense.items()})
    if math.isnan(result["accuracy"]["cos_sim"]):
        # A NaN or infinite output is a broken kernel, not an unmeasured accuracy: the timing is kept, the
        # case fails, and empty accuracy columns never read as "not measured" on an ok row.
        result["status"] = "failed"
        result["error"] = "the kernel's output contains NaN or infinity; accuracy is undefined"
    return result


def _repeated(fn: Any, times: int) -> Any:
    """`fn` called `times` times per call (a planted slowdown), keeping only the last output alive."""
    def run() -> Any:
        out = None
        for _ in range(times):
            out = fn()
        return out
    return run


class PluginReferenceError(Exception):
    """A plugin's reference function failed or returned something that is not a float64 output."""


def plugin_reference(fn: Any, case: Mapping[str, Any], inputs: Any) -> Any:
    """A plugin's own float64 reference for the case: a float64 torch tensor or numpy array."""
    import numpy as np
    import torch

    try:
        out = fn(dict(case), inputs)
    except Exception as exc:
        raise PluginReferenceError(f"the plugin's reference function raised {type(exc).__name__}: {exc}") from exc
    dtype = getattr(out, "dtype", None)
    if dtype not in (torch.float64, np.float64):
        raise PluginReferenceError(f"the plugin's reference function returned {type(out).__name__} of dtype "
                                   f"{dtype}; a reference is computed in float64 (torch.float64 or numpy float64)")
    return out.detach().cpu() if isinstance(out, torch.Tensor) else out


def load_plugins(specs: Any, plugin_id: str | None = None) -> str | None:
    """Load the plan's plugins in this worker (once; nothing is re-imported for the next case) and say why a
    case whose kernel comes from plugin `plugin_id` cannot run here, or None."""
    if not specs:
        return f"plugin {plugin_id} was not sent to this device" if plugin_id else None
    from kernels import plugins

    problem = plugins.spec_error(specs)
    if problem:
        return f"the plan's plugins are malformed: {problem}"
    plugins.activate(specs)
    return plugins.failure_for(plugin_id)


_SAMPLERS: dict[str, Any] = {}


def sampler_for(power_cfg: Mapping[str, Any] | None) -> Any:
    """The power sampler for an inventory `power:` mapping, opened once per worker; None without one."""
    if not power_cfg:
        return None
    key = json.dumps(power_cfg, sort_keys=True)
    if key not in _SAMPLERS:
        from devices.power import make_sampler

        _SAMPLERS[key] = make_sampler(power_cfg)
    return _SAMPLERS[key]


class ContentionHooks:
    """Snapshots of the CPU counters as the timed window opens and closes (a fraction of a millisecond each,
    outside the window)."""

    def __init__(self) -> None:
        self.cpus = worker_cpus()
        self.before: CpuSnapshot | None = None
        self.after: CpuSnapshot | None = None

    def begin(self) -> None:
        self.before = CpuSnapshot.take()

    def end(self) -> None:
        self.after = CpuSnapshot.take()

    def result(self) -> Contention:
        return contention(self.before, self.after, self.cpus)


def _measure_with_power(fn: Any, cfg: MeasureConfig, power_cfg: Mapping[str, Any] | None
                        ) -> tuple[Any, Any, Contention]:
    """Time `fn` and record what else used the CPU meanwhile; with a sensor, sample power in a background
    thread on the same clock and integrate over exactly the timed window, which is stretched until it holds
    enough sensor readings."""
    hooks = ContentionHooks()
    sampler = sampler_for(power_cfg)
    if sampler is None or sampler.kind == "none":
        return measure(fn, cfg, hooks=hooks), None, hooks.result()
    from devices.power import BackgroundSampler, EnergyError

    bg = BackgroundSampler(sampler)
    min_window = bg.min_window_s()
    bg.start()
    try:
        timing = measure(fn, cfg, min_window_s=min_window, hooks=hooks)
    finally:
        bg.stop()
    busy = hooks.result()
    power: dict[str, Any] = {"power_source": sampler.source, "is_estimate": bool(sampler.is_estimate),
                             "update_interval_s": sampler.update_interval_s, "min_window_s": min_window}
    try:
        energy = bg.energy(timing.window_start, timing.window_end)
    except EnergyError as exc:
        # A sensor that read nothing usable: the energy columns stay empty and the reason is kept.
        power["error"] = str(exc)
        return timing, power, busy
    assert energy is not None
    power.update({"energy_mj_per_inf": energy.energy_j * 1e3 / timing.calls, "power_w_avg": energy.power_w_avg,
                  "energy_j": energy.energy_j, "n_samples": energy.n_samples, "window_s": energy.window_s})
    return timing, power, busy


def _thermal_snapshot() -> dict[str, Any]:
    try:
        return thermal.snapshot()
    except Exception as exc:  # telemetry must never fail a case
        return {"error": f"{type(exc).__name__}: {exc}"}


def _thermal_record(before: dict[str, Any], after: dict[str, Any], cooldown: Any) -> dict[str, Any]:
    throttled = None
    if "throttling" in before and "throttling" in after:
        throttled = thermal.throttled_between(before["throttling"], after["throttling"])
    temp = lambda snap: (snap.get("temperature") or {}).get("max_c")  # noqa: E731
    return {"temp_before_c": temp(before), "temp_after_c": temp(after), "throttled": throttled,
            "governor": (after.get("governor") or {}).get("governor"), "cooldown": cooldown,
            "before": before, "after": after}


def measure_idle_power(power_cfg: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The device's idle baseline (W) before a sweep; None, never 0, without a sensor."""
    from devices.power import measure_idle

    sampler = sampler_for(power_cfg)
    if sampler is None:
        return {"idle_power_w": None, "power_source": None}
    return {"idle_power_w": measure_idle(sampler, seconds), "power_source": sampler.source,
            "is_estimate": bool(sampler.is_estimate)}


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
        if "plugins" in request and "case" not in request:
            from kernels import plugins

            problem = plugins.spec_error(request["plugins"])
            statuses = [] if problem else [st.to_dict() for st in plugins.activate(request["plugins"])]
            out.write(json.dumps({"plugins": statuses, "error": problem}) + "\n")
            out.flush()
            continue
        if "idle" in request:
            try:
                answer = measure_idle_power(request["idle"], float(request.get("seconds", 5.0)))
            except Exception as exc:
                answer = {"idle_power_w": None, "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
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
