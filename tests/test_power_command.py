"""The external-meter command reader and the CPU-utilization estimate."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import pytest

from devices.power import command, make_sampler
from devices.power.command import CommandSampler, parse_watts
from devices.power.estimate import CpuUtilization, EstimateSampler, cubic_power_w
from workloads.errors import ConfigError, DeviceError


class Recorder:
    """A runner that records argv and answers with fixed output."""

    def __init__(self, stdout: str, returncode: int = 0, stderr: str = "") -> None:
        self.stdout, self.returncode, self.stderr = stdout, returncode, stderr
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, self.stderr)


def test_command_is_split_with_shlex_and_never_given_to_a_shell() -> None:
    runner = Recorder("4.333 W\n")
    s = CommandSampler("um25c-read --port '/dev/rfcomm 0' ; rm -rf /", runner=runner)
    assert runner.calls[0] == ["um25c-read", "--port", "/dev/rfcomm 0", ";", "rm", "-rf", "/"]
    assert s.source == "command:um25c-read"
    assert s.read_w() == pytest.approx(4.333)


@pytest.mark.parametrize("out, watts", [("5.1", 5.1), ("12.5W\n", 12.5), ("  3e0 W \n", 3.0),
                                        ("meter ok\nV=5.1 A=0.8\n4.08\n", 4.08)])
def test_watts_are_read_from_the_last_line(out: str, watts: float) -> None:
    assert parse_watts(out) == pytest.approx(watts)


@pytest.mark.parametrize("out", ["n/a\n", "", "5.1 mW\n", "4.2 W 5.0 V\n"])
def test_output_that_is_not_watts_is_an_error(out: str) -> None:
    with pytest.raises(DeviceError, match="not a number of watts"):
        parse_watts(out)


def test_failing_command_reports_exit_code_and_stderr() -> None:
    with pytest.raises(DeviceError, match="exited 2: no meter on /dev/rfcomm0"):
        CommandSampler("um25c-read", runner=Recorder("", 2, "no meter on /dev/rfcomm0\n"))


def test_meter_reading_zero_watts_is_refused() -> None:
    with pytest.raises(DeviceError, match="reads 0.0 W"):
        CommandSampler("meter", runner=Recorder("0.0\n"))


def test_real_command_runs_without_a_shell() -> None:
    cmd = f"{shlex.quote(sys.executable)} -c 'print(3.5)'"
    s = make_sampler({"sensor": "command", "command": cmd, "interval_s": 0.5})
    assert s.read_w() == pytest.approx(3.5)
    assert s.update_interval_s == 0.5


def test_missing_command_binary_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="not found"):
        make_sampler({"sensor": "command", "command": "/nonexistent/meter"})


def test_command_key_is_required_and_typed() -> None:
    with pytest.raises(ConfigError) as err:
        make_sampler({"sensor": "command"})
    assert err.value.key == "command"
    with pytest.raises(ConfigError) as err:
        command.from_config({"sensor": "command", "command": "m", "timeout_s": 0}, "/", runner=Recorder("1"))
    assert err.value.key == "timeout_s"


def test_cubic_model_matches_codecarbon_cpu_load_with_default_idle() -> None:
    assert cubic_power_w(0.0, 15.0, 1.5) == pytest.approx(1.5)
    assert cubic_power_w(1.0, 15.0, 1.5) == pytest.approx(15.0)
    assert cubic_power_w(0.5, 15.0, 1.5) == pytest.approx(15.0 * (0.1 + 0.9 * 0.125))
    assert cubic_power_w(1.7, 15.0, 1.5) == pytest.approx(15.0)  # clamped


def test_estimate_is_always_labelled_as_one() -> None:
    s = EstimateSampler(6.4, 2.7, cpu_percent=lambda: 50.0)
    assert s.is_estimate is True
    assert s.source.startswith("estimate:")
    assert s.read_w() == pytest.approx(2.7 + (6.4 - 2.7) * 0.125)
    assert s.describe()["is_estimate"] is True


def test_estimate_needs_tdp_and_checks_idle() -> None:
    with pytest.raises(ConfigError) as err:
        make_sampler({"sensor": "estimate"})
    assert err.value.key == "tdp_w"
    with pytest.raises(ConfigError) as err:
        make_sampler({"sensor": "estimate", "tdp_w": 5, "idle_w": 9})
    assert err.value.key == "idle_w"
    s = make_sampler({"sensor": "estimate", "tdp_w": 5})
    assert s.is_estimate and 0.5 <= s.read_w() <= 5  # type: ignore[attr-defined]


def test_cpu_utilization_sees_a_busy_loop() -> None:
    util = CpuUtilization()
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        pass
    assert 0.0 < util() <= 100.0
