"""What else used the CPU while a case was timed: read on the device around the timed window.

`CpuSnapshot.take()` reads, in well under a millisecond, the per-CPU counters of `/proc/stat`, this
process's own CPU time (`time.process_time`: every thread of the worker, torch's and onnxruntime's pools
included), steal time, the runnable-task count, the load average and, where the kernel has PSI, the CPU
pressure stall total. `contention(before, after, cpus)` (pure) turns two snapshots into the record stored
with each measurement:

- `cpu_other`: the fraction (0..1) of the capacity of the CPUs the worker may run on that was used by
  anything but the worker during the window: busy time of those CPUs (elapsed minus idle and iowait, the
  counters the kernel keeps precisely on tickless systems) plus steal, minus the worker's own CPU time,
  over elapsed time times CPUs;
- `resolution`: the counters are in clock ticks (USER_HZ, 10 ms), read twice per CPU, so `cpu_other` can be
  off by up to 2 ticks per CPU: 0.02 for a 1 s window, 0.2 for a 0.1 s one. `contended` is decided on the
  lower bound (`cpu_other - resolution`), so a short window on a quiet device is not flagged by rounding;
- `steal`: the hypervisor's share (a VM's noisy neighbour) on its own, already inside `cpu_other`;
- `runnable`, `load1`, `cpu_pressure` (PSI "some": share of the window in which a task waited for a CPU).

Elsewhere than Linux the counters come from psutil (same definitions, coarser) or are absent: then
`cpu_other` is None, never 0. Standard library and psutil only; runs on devices.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

def _clk_tck() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100


CLK_TCK = _clk_tck()


@dataclass(frozen=True)
class CpuCounters:
    """One CPU's counters in seconds: what it spent idle (idle + iowait) and stolen by the hypervisor."""

    idle_s: float
    steal_s: float


@dataclass(frozen=True)
class CpuSnapshot:
    """Counters at one instant (monotonic clock): per CPU, this process's CPU time, and system gauges."""

    at: float
    cpus: Mapping[int, CpuCounters]
    self_cpu_s: float
    runnable: int | None = None
    load1: float | None = None
    psi_some_us: int | None = None
    source: str = "/proc/stat"

    @classmethod
    def take(cls, root: str = "/") -> "CpuSnapshot | None":
        """Now; None where no per-CPU counters can be read (then contention is not measured)."""
        at = time.monotonic()
        self_cpu = time.process_time()
        cpus, runnable = _read_proc_stat(root)
        source = "/proc/stat"
        if cpus is None:
            cpus, source = _psutil_cpus(), "psutil"
            if cpus is None:
                return None
        try:
            load1: float | None = os.getloadavg()[0]
        except (OSError, AttributeError):
            load1 = None
        return cls(at=at, cpus=cpus, self_cpu_s=self_cpu, runnable=runnable, load1=load1,
                   psi_some_us=_read_psi(root), source=source)


def _read_proc_stat(root: str) -> tuple[dict[int, CpuCounters] | None, int | None]:
    try:
        with open(os.path.join(root, "proc/stat")) as fh:
            text = fh.read()
    except OSError:
        return None, None
    cpus: dict[int, CpuCounters] = {}
    runnable = None
    for line in text.splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            ticks = [int(v) for v in values] + [0] * (8 - len(values))
            # user nice system idle iowait irq softirq steal [guest guest_nice]: guest is inside user.
            cpus[int(name[3:])] = CpuCounters(idle_s=(ticks[3] + ticks[4]) / CLK_TCK, steal_s=ticks[7] / CLK_TCK)
        elif line.startswith("procs_running "):
            runnable = int(line.split()[1])
    return (cpus or None), runnable


def _psutil_cpus() -> dict[int, CpuCounters] | None:
    try:
        import psutil

        times = psutil.cpu_times(percpu=True)
    except Exception:
        return None
    return {i: CpuCounters(idle_s=t.idle + getattr(t, "iowait", 0.0), steal_s=getattr(t, "steal", 0.0))
            for i, t in enumerate(times)}


def _read_psi(root: str) -> int | None:
    try:
        with open(os.path.join(root, "proc/pressure/cpu")) as fh:
            for line in fh:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_cpus() -> list[int] | None:
    """The CPUs this process may run on (its affinity), or None where that cannot be read."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


@dataclass
class Contention:
    """What else used the CPU over one window (see the module docstring for each field)."""

    cpu_other: float | None
    resolution: float | None
    window_s: float
    cpus: list[int] = field(default_factory=list)
    self_cpu: float | None = None  # the worker's own CPU time over the window, in CPUs (2.0: two busy CPUs)
    steal: float | None = None
    runnable: list[int | None] = field(default_factory=list)  # at the start and the end
    load1: list[float | None] = field(default_factory=list)
    cpu_pressure: float | None = None
    source: str | None = None

    def contended(self, max_cpu_other: float) -> bool | None:
        """Whether others surely used more than `max_cpu_other`: decided on the lower bound; None unmeasured."""
        if self.cpu_other is None or self.resolution is None:
            return None
        return self.cpu_other - self.resolution > max_cpu_other

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_other": self.cpu_other, "resolution": self.resolution, "window_s": self.window_s,
                "cpus": self.cpus, "self_cpu": self.self_cpu, "steal": self.steal, "runnable": self.runnable,
                "load1": self.load1, "cpu_pressure": self.cpu_pressure, "source": self.source}


def contention(before: CpuSnapshot | None, after: CpuSnapshot | None,
               cpus: Sequence[int] | None = None) -> Contention:
    """The contention record between two snapshots over `cpus` (default: every CPU counted). Pure."""
    window = (after.at - before.at) if (before and after) else 0.0
    if before is None or after is None or window <= 0:
        return Contention(cpu_other=None, resolution=None, window_s=max(window, 0.0))
    chosen = [c for c in (cpus or sorted(after.cpus)) if c in before.cpus and c in after.cpus]
    if not chosen:
        chosen = [c for c in sorted(after.cpus) if c in before.cpus]
    n = len(chosen)
    idle = sum(max(0.0, after.cpus[c].idle_s - before.cpus[c].idle_s) for c in chosen)
    steal = sum(max(0.0, after.cpus[c].steal_s - before.cpus[c].steal_s) for c in chosen)
    capacity = window * n
    busy = min(max(capacity - idle, 0.0), capacity)
    self_cpu = max(0.0, after.self_cpu_s - before.self_cpu_s)
    # Steal is time the hypervisor gave to someone else while we wanted the CPU: it is "other" use too. It
    # may or may not be inside the busy figure depending on the kernel's idle accounting, so take the larger.
    other = max(busy - self_cpu, 0.0)
    other = min(max(other, steal), capacity)
    pressure = None
    if before.psi_some_us is not None and after.psi_some_us is not None:
        pressure = min(max((after.psi_some_us - before.psi_some_us) / 1e6 / window, 0.0), 1.0)
    return Contention(
        cpu_other=other / capacity, resolution=min(2.0 / CLK_TCK / window, 1.0), window_s=window, cpus=chosen,
        self_cpu=self_cpu / window, steal=steal / capacity, runnable=[before.runnable, after.runnable],
        load1=[before.load1, after.load1], cpu_pressure=pressure, source=after.source)


def sample_other(seconds: float, cpus: Sequence[int] | None = None) -> Contention:
    """Contention over the next `seconds` while this process sleeps (the agent's quiet check)."""
    before = CpuSnapshot.take()
    time.sleep(seconds)
    return contention(before, CpuSnapshot.take(), cpus)


def wait_for_quiet(max_cpu_other: float, max_wait_s: float, *, probe_s: float = 0.5,
                   cpus: Sequence[int] | None = None) -> dict[str, Any]:
    """Sleep in `probe_s` windows until others use at most `max_cpu_other` of the CPUs (or `max_wait_s`
    passed). Says how long it waited, whether the device went quiet and the last reading."""
    t0 = time.monotonic()
    while True:
        reading = sample_other(probe_s, cpus)
        waited = time.monotonic() - t0
        quiet = reading.cpu_other is None or reading.cpu_other <= max_cpu_other
        if quiet or waited >= max_wait_s:
            return {"waited_s": round(waited, 3), "quiet": quiet, "cpu_other": reading.cpu_other}
