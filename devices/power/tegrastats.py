"""Jetson power from a running `tegrastats --interval <ms>` (power.md §2.4, §2.5).

Rail fields drift across generations: `POM_5V_IN 933/933` (JetPack 4, mW with no unit),
`VDD_IN 5704mW/5704mW` (JetPack 5/6), `VDD_GPU_SOC 5139mW/5139mW/5139mW` (JetPack 7, third value of unknown
meaning). The first value is the instantaneous power; the second is an average since tegrastats started and
is never used. Lines carry at most a 1-second wall-clock stamp, so each is stamped with `perf_counter` when it
arrives. Some versions print rails only under sudo: a line without rails is "no power", never 0 W.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from typing import IO, Any, Callable, Iterable, Mapping

from workloads.errors import ConfigError, DeviceError

from .base import PowerSampler, check_keys, check_positive_power, get_opt
from .jetson_ina3221 import choose_total

# NAME cur[mW]/avg[mW][/third[mW]]; the look-arounds keep "RAM 2257/30536MB" and "IRAM 0/252kB" out.
_RAIL = re.compile(r"(?<![\w@/])([A-Za-z]\w*) (\d+(?:\.\d+)?)(mW|W)?/(\d+(?:\.\d+)?)(?:mW|W)?"
                   r"(?:/\d+(?:\.\d+)?(?:mW|W)?)?(?![\w/])")


def parse_line(line: str) -> dict[str, tuple[float, float]]:
    """Rails of one tegrastats line: name -> (instantaneous mW, running average mW); NC dropped."""
    rails: dict[str, tuple[float, float]] = {}
    for name, cur, unit, avg in ((m[1], m[2], m[3], m[4]) for m in _RAIL.finditer(line)):
        if name == "NC":
            continue
        scale = 1000.0 if unit == "W" else 1.0
        rails[name] = (float(cur) * scale, float(avg) * scale)
    return rails


def total_mw(rails: Mapping[str, tuple[float, float]], rail: str | None = None) -> tuple[float, list[str]]:
    """The board total (mW) of parsed rails by the same rule as the INA3221 reader, and the rails used."""
    if not rails:
        raise DeviceError("tegrastats printed no power rails; on some JetPack versions they appear only "
                          "when tegrastats runs as root")
    if rail is not None:
        if rail not in rails:
            raise DeviceError(f"rail {rail!r} not in tegrastats output; rails present: {', '.join(rails)}")
        names = [rail]
    else:
        names, _ = choose_total(list(rails))
    return sum(rails[n][0] for n in names), names


Popen = Callable[[list[str]], Any]


class TegrastatsSampler(PowerSampler):
    """Runs tegrastats and reports its total rail power, one value per line it prints."""

    streaming = True

    def __init__(self, interval_ms: int = 500, path: str = "tegrastats", rail: str | None = None,
                 popen: Popen | None = None, first_line_timeout_s: float | None = None) -> None:
        self.argv = [path, "--interval", str(interval_ms)]
        self.rail = rail
        self.update_interval_s = interval_ms / 1000
        self._timeout_s = first_line_timeout_s or 3 * self.update_interval_s + 2.0
        self._lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        start = popen or (lambda argv: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                        text=True, bufsize=1))
        try:
            self._proc = start(self.argv)
        except OSError as exc:
            raise DeviceError(f"cannot start {' '.join(self.argv)}: {exc}") from exc
        # Drain stdout continuously: lines left in the pipe between samples would later be stamped late.
        self._reader = threading.Thread(target=self._pump, args=(self._proc.stdout,), daemon=True)
        self._reader.start()
        self.source = "tegrastats"
        try:
            _, self.last_line = self._next_line()
            watts, names = self._watts(self.last_line)
        except DeviceError:
            self.close()
            raise
        self.total = names
        self.source = "tegrastats:" + (names[0] if len(names) == 1 else "sum(" + "+".join(names) + ")")
        check_positive_power(self.source, watts)

    def _pump(self, stream: IO[str] | Iterable[str]) -> None:
        for line in stream:
            self._lines.put((time.perf_counter(), line))
        self._lines.put(None)

    def _next_line(self) -> tuple[float, str]:
        """The first line that arrives after this call (older ones are stale)."""
        called = time.perf_counter()
        while True:
            try:
                item = self._lines.get(timeout=self._timeout_s)
            except queue.Empty:
                raise DeviceError(f"{' '.join(self.argv)} printed nothing for {self._timeout_s:.1f} s") \
                    from None
            if item is None:
                self._lines.put(None)  # keep reporting the end to later calls
                raise DeviceError(f"{' '.join(self.argv)} exited: {self._stderr_tail()}")
            if item[0] >= called:
                return item

    def _stderr_tail(self) -> str:
        err = getattr(self._proc, "stderr", None)
        try:
            return (err.read() if err else "")[-500:].strip() or "(no stderr)"
        except (OSError, ValueError):
            return "(stderr unreadable)"

    def _watts(self, line: str) -> tuple[float, list[str]]:
        mw, names = total_mw(parse_line(line), self.rail)
        return mw / 1000, names

    def sample(self) -> tuple[float, float]:
        t, self.last_line = self._next_line()
        return t, self._watts(self.last_line)[0]

    def read_w(self) -> float:
        return self.sample()[1]

    def describe(self) -> dict[str, Any]:
        return {"sensor": "tegrastats", "source": self.source, "command": self.argv,
                "interval_ms": round(self.update_interval_s * 1000), "total": self.total,
                "rails_mw": {n: cur for n, (cur, _) in parse_line(self.last_line).items()},
                "scope": "module (carrier board not measured)"}

    def close(self) -> None:
        proc = self._proc
        if hasattr(proc, "terminate") and getattr(proc, "poll", lambda: 0)() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()


# Keys of its inventory `power:` mapping besides `sensor` and `root`; REQUIRED_KEYS must be given.
CONFIG_KEYS = {"interval_ms", "path", "rail"}
REQUIRED_KEYS: tuple[str, ...] = ()


def from_config(config: Mapping[str, Any], root: str) -> TegrastatsSampler:
    """`{sensor: tegrastats[, interval_ms: 500][, path: tegrastats][, rail: NAME]}`."""
    check_keys(config, CONFIG_KEYS, "tegrastats")
    interval = get_opt(config, "interval_ms", int, 500)
    if interval < 10:
        raise ConfigError("must be >= 10 ms", key="interval_ms")
    return TegrastatsSampler(interval, get_opt(config, "path", str, "tegrastats"),
                             get_opt(config, "rail", str, None))
