"""An external meter read through a command that prints watts (`{sensor: command, command: "..."}`).

The command is split with `shlex.split` and run without a shell, so inventory text is never interpreted by
one. Its last non-empty stdout line must be a number, optionally followed by "W".
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from typing import Any, Callable, Mapping

from workloads.errors import ConfigError, DeviceError

from .base import PowerSampler, check_keys, check_positive_power, get_opt, get_req

Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]
_WATTS = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*W?\s*$")


def run_command(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """The default runner: no shell, captured output, bounded time."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


def parse_watts(stdout: str) -> float:
    """Watts from the last non-empty line of a meter command's output."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    match = _WATTS.match(lines[-1]) if lines else None
    if match is None:
        raise DeviceError(f"power command printed {stdout[-200:]!r}, not a number of watts")
    return float(match[1])


class CommandSampler(PowerSampler):
    """Runs the command once per reading."""

    def __init__(self, command: str | list[str], interval_s: float = 1.0, timeout_s: float = 5.0,
                 runner: Runner = run_command) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ConfigError("empty command", key="command")
        self.update_interval_s, self.timeout_s, self.runner = interval_s, timeout_s, runner
        self.source = f"command:{os.path.basename(self.argv[0])}"
        check_positive_power(self.source, self.read_w())

    def read_w(self) -> float:
        try:
            done = self.runner(self.argv, self.timeout_s)
        except FileNotFoundError as exc:
            raise DeviceError(f"power command not found: {self.argv[0]}") from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"power command {shlex.join(self.argv)} took over {self.timeout_s} s") from exc
        if done.returncode != 0:
            raise DeviceError(f"power command {shlex.join(self.argv)} exited {done.returncode}: "
                              f"{(done.stderr or '').strip()[-300:]}")
        return parse_watts(done.stdout)

    def describe(self) -> dict[str, Any]:
        return {"sensor": "command", "source": self.source, "command": self.argv,
                "update_interval_s": self.update_interval_s, "power_w": self.read_w()}


# Keys of its inventory `power:` mapping besides `sensor` and `root`; REQUIRED_KEYS must be given.
CONFIG_KEYS = {"command", "interval_s", "timeout_s"}
REQUIRED_KEYS: tuple[str, ...] = ("command",)


def from_config(config: Mapping[str, Any], root: str, runner: Runner = run_command) -> CommandSampler:
    """`{sensor: command, command: "um25c-read --watts"[, interval_s: 1.0][, timeout_s: 5.0]}`."""
    check_keys(config, CONFIG_KEYS, "command")
    command = get_req(config, "command", (str, list), "command")
    if isinstance(command, list) and not all(isinstance(a, str) for a in command):
        raise ConfigError("a list command must hold strings", key="command")
    interval = float(get_opt(config, "interval_s", (int, float), 1.0))
    timeout = float(get_opt(config, "timeout_s", (int, float), 5.0))
    if interval <= 0 or timeout <= 0:
        raise ConfigError("must be > 0", key="interval_s" if interval <= 0 else "timeout_s")
    return CommandSampler(command, interval, timeout, runner)
