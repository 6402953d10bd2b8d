"""tegrastats lines of every Jetson generation, and the streaming sampler fed by a fake process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from devices.power import BackgroundSampler, make_sampler
from devices.power.tegrastats import TegrastatsSampler, parse_line, total_mw
from workloads.errors import ConfigError, DeviceError

FIX = Path(__file__).parent / "fixtures" / "power" / "tegrastats"


def line(name: str) -> str:
    return (FIX / f"tegrastats_{name}.txt").read_text()


def test_jp4_nano_rails_have_no_unit_and_are_milliwatts() -> None:
    rails = parse_line(line("nano_jp4"))
    assert rails == {"POM_5V_IN": (933, 933), "POM_5V_GPU": (0, 0), "POM_5V_CPU": (84, 84)}
    assert total_mw(rails) == (933, ["POM_5V_IN"])


def test_jp4_nano_sudo_line_with_iram_field_parses_the_same_rails() -> None:
    rails = parse_line(line("nano_jp4_sudo"))
    assert set(rails) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}  # not IRAM 0/252kB, RAM or SWAP
    assert rails["POM_5V_CPU"] == (84, 105)  # instantaneous first, tegrastats' running average second


def test_tx2_total_is_vdd_in() -> None:
    rails = parse_line(line("tx2_jp4"))
    assert len(rails) == 6
    assert total_mw(rails) == (1038, ["VDD_IN"])


def test_agx_xavier_rails_without_vdd_prefix_are_summed() -> None:
    rails = parse_line(line("xavier_jp4"))
    assert list(rails) == ["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"]
    assert total_mw(rails)[0] == 1155 + 385 + 2504 + 0 + 192 + 2692


def test_agx_orin_jp5_mw_suffix_and_nc_entries_dropped() -> None:
    rails = parse_line(line("orin_jp5_sudo"))
    assert rails == {"VDD_GPU_SOC": (2390, 2390), "VDD_CPU_CV": (796, 796), "VIN_SYS_5V0": (3522, 3522),
                     "VDDQ_VDD2_1V8AO": (301, 301)}
    assert total_mw(rails)[0] == 2390 + 796 + 3522 + 301


def test_agx_orin_line_without_sudo_has_no_rails_and_is_not_zero_watts() -> None:
    rails = parse_line(line("orin_jp5_nosudo"))
    assert rails == {}
    with pytest.raises(DeviceError, match="no power rails.*root"):
        total_mw(rails)


def test_orin_nano_jp6_bracketed_gpu_frequency_does_not_confuse_rails() -> None:
    rails = parse_line(line("orin_nano_jp6"))
    assert rails == {"VDD_IN": (5704, 5704), "VDD_CPU_GPU_CV": (831, 831), "VDD_SOC": (1624, 1624)}
    assert total_mw(rails) == (5704, ["VDD_IN"])


def test_jetpack7_three_value_rails_use_the_first_value() -> None:
    rails = parse_line(line("agx_orin_jp72"))
    assert rails["VDD_CPU_CV"] == (3268, 3268)
    assert total_mw(rails)[0] == 5139 + 3268 + 5500


def test_watt_suffix_is_scaled_to_milliwatts() -> None:
    assert parse_line("VDD_IN 5.7W/5.6W") == {"VDD_IN": (5700.0, 5600.0)}


class FakeTegrastats:
    """A tegrastats process that prints the given lines `interval_s` apart, then exits."""

    def __init__(self, lines: list[str], interval_s: float) -> None:
        self.lines, self.interval_s, self.argv = lines, interval_s, None
        self.terminated = False
        self.stderr = None

    def __call__(self, argv: list[str]) -> FakeTegrastats:
        self.argv = argv
        return self

    @property
    def stdout(self) -> Iterator[str]:
        for text in self.lines:
            time.sleep(self.interval_s)
            yield text + "\n"

    def poll(self) -> int | None:
        return None if not self.terminated else 0

    def terminate(self) -> None:
        self.terminated = True

    def wait(self, timeout: float) -> int:
        return 0


def test_sampler_runs_tegrastats_with_interval_and_reads_watts_per_line() -> None:
    fake = FakeTegrastats([line("orin_nano_jp6")] * 6, 0.03)
    before = time.perf_counter()
    s = TegrastatsSampler(interval_ms=30, popen=fake)
    assert fake.argv == ["tegrastats", "--interval", "30"]
    assert s.source == "tegrastats:VDD_IN"
    assert s.update_interval_s == pytest.approx(0.03)
    t, watts = s.sample()
    assert watts == pytest.approx(5.704)
    assert before < t <= time.perf_counter()  # stamped on arrival with the window's clock
    s.close()
    assert fake.terminated


def test_background_sampling_of_a_streaming_sensor_stamps_each_line_once() -> None:
    fake = FakeTegrastats([line("nano_jp4")] * 12, 0.02)
    s = TegrastatsSampler(interval_ms=20, popen=fake)
    bg = BackgroundSampler(s).start()
    time.sleep(0.1)
    samples = bg.stop()
    times = [t for t, _ in samples]
    assert len(samples) >= 3
    assert times == sorted(times) and len(set(times)) == len(times)
    assert {w for _, w in samples} == {0.933}


def test_tegrastats_without_rails_fails_at_start_with_the_reason() -> None:
    with pytest.raises(DeviceError, match="no power rails"):
        TegrastatsSampler(interval_ms=20, popen=FakeTegrastats([line("orin_jp5_nosudo")] * 3, 0.01))


def test_tegrastats_that_exits_is_reported() -> None:
    s = TegrastatsSampler(interval_ms=20, popen=FakeTegrastats([line("tx2_jp4")], 0.01))
    with pytest.raises(DeviceError, match="exited"):
        s.sample()


def test_missing_tegrastats_binary_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="cannot start"):
        make_sampler({"sensor": "tegrastats", "path": "/nonexistent/tegrastats"})


def test_interval_below_10_ms_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        make_sampler({"sensor": "tegrastats", "interval_ms": 1})
    assert err.value.key == "interval_ms"
