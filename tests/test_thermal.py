"""Temperature, throttling and governor readers on recorded Pi, Jetson, x86 and container trees."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from devices import thermal
from devices.thermal import (cool_down, decode_throttled, parse_get_throttled, read_governor,
                             read_temperatures, read_throttling, snapshot, throttled_between)

FIX = Path(__file__).parent / "fixtures" / "thermal"


def root(name: str) -> str:
    return str(FIX / name)


def vcgencmd(output_file: str):
    """A runner replaying a recorded `vcgencmd` output."""
    text = (FIX / "pi4_vcgencmd" / output_file).read_text()

    def run(argv: list[str]) -> str:
        assert argv == ["vcgencmd", "get_throttled"]
        return text
    return run


def not_a_pi(argv: list[str]) -> str:
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv[0])


def test_pi4_cpu_thermal_zone_is_read_in_degrees_celsius() -> None:
    t = read_temperatures(root("pi4"))
    assert t["sensors"]["cpu-thermal"]["c"] == pytest.approx(42.236)  # 42236 m°C
    assert t["sensors"]["cpu_thermal/temp1"]["c"] == pytest.approx(42.236)
    assert t["max_c"] == pytest.approx(42.236) and t["reason"] is None


@pytest.mark.parametrize("output, value, now, occurred", [
    ("get_throttled_healthy.txt", 0x0, [], []),
    ("get_throttled_past.txt", 0x50000, [], ["under_voltage_occurred", "throttling_occurred"]),
    ("get_throttled_now.txt", 0x50005, ["under_voltage", "throttled"],
     ["under_voltage_occurred", "throttling_occurred"]),
])
def test_pi_get_throttled_bits_are_decoded(output: str, value: int, now: list[str],
                                           occurred: list[str]) -> None:
    r = read_throttling(root("pi4"), runner=vcgencmd(output))
    assert r["source"] == "vcgencmd" and r["raw"] == f"0x{value:x}"
    assert r["now"] == now and r["occurred"] == occurred
    assert r["throttled_now"] is bool(now)


def test_all_documented_throttle_bits_have_names() -> None:
    d = decode_throttled(0xF000F)
    assert d["now"] == ["under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit"]
    assert len(d["occurred"]) == 4


def test_throttled_case_is_a_now_bit_or_a_change_in_sticky_bits() -> None:
    healthy = read_throttling(root("pi4"), runner=vcgencmd("get_throttled_healthy.txt"))
    past = read_throttling(root("pi4"), runner=vcgencmd("get_throttled_past.txt"))
    now = read_throttling(root("pi4"), runner=vcgencmd("get_throttled_now.txt"))
    assert throttled_between(healthy, healthy) is False
    assert throttled_between(healthy, past) is True  # it happened during the case
    assert throttled_between(past, past) is False  # sticky since boot, not during the case
    assert throttled_between(past, now) is True


def test_vcgencmd_failure_is_none_with_the_reason_not_healthy() -> None:
    def denied(argv: list[str]) -> str:
        raise RuntimeError("VCHI initialization failed")

    r = read_throttling(root("pi4"), runner=denied)
    assert r["throttled_now"] is None and "VCHI initialization failed" in r["reason"]


def test_garbled_get_throttled_output_is_none_with_the_reason() -> None:
    r = read_throttling(root("pi4"), runner=lambda argv: "error=1 error_msg=\"Command not registered\"\n")
    assert r["throttled_now"] is None and "not get_throttled output" in r["reason"]
    with pytest.raises(ValueError):
        parse_get_throttled("temp=42.2'C")


def test_pi4_governor_and_frequencies_in_khz() -> None:
    g = read_governor(root("pi4"))
    assert g["governor"] == "ondemand"
    assert g["per_cpu"]["cpu3"] == {"governor": "ondemand", "cur": 600000, "min": 600000, "max": 1500000}


def test_mixed_governors_are_reported_as_mixed(tmp_path: Path) -> None:
    tree = tmp_path / "pi4"
    shutil.copytree(FIX / "pi4", tree)
    (tree / "sys/devices/system/cpu/cpu3/cpufreq/scaling_governor").write_text("performance\n")
    g = read_governor(str(tree))
    assert g["governor"] == "mixed" and g["per_cpu"]["cpu3"]["governor"] == "performance"


def test_jetson_nano_pmic_placeholder_is_left_out_of_the_maximum() -> None:
    t = read_temperatures(root("jetson_nano_jp4"))
    assert t["sensors"]["PMIC-Die"]["c"] == 100.0 and "placeholder" in t["sensors"]["PMIC-Die"]["reason"]
    assert t["max_c"] == pytest.approx(27.0) and t["max_sensor"] == "AO-therm"


def test_jetson_has_no_throttle_flag_so_it_is_none_with_gpu_clocks_recorded() -> None:
    r = read_throttling(root("jetson_nano_jp4"), runner=not_a_pi)
    assert r["throttled_now"] is None and "no throttle flag" in r["reason"]
    assert r["devfreq_hz"]["57000000.gpu"] == {"cur_freq": 76800000, "max_freq": 921600000}
    assert throttled_between(r, r) is None
    assert read_governor(root("jetson_nano_jp4"))["governor"] == "schedutil"


def test_agx_orin_offline_zones_are_none_not_minus_256() -> None:
    t = read_temperatures(root("jetson_agx_orin_jp5"))
    assert t["sensors"]["gpu-thermal"]["c"] is None and "offline" in t["sensors"]["gpu-thermal"]["reason"]
    assert t["max_c"] == pytest.approx(41.656) and t["max_sensor"] == "tj-thermal"


def test_x86_coretemp_labels_and_throttle_counters() -> None:
    t = read_temperatures(root("x86"))
    assert t["sensors"]["coretemp/Package id 0"]["c"] == pytest.approx(47.0)
    assert t["sensors"]["x86_pkg_temp"]["c"] == pytest.approx(45.0)
    assert t["max_c"] == pytest.approx(47.0)
    r = read_throttling(root("x86"), runner=not_a_pi)
    assert r["source"] == "x86-thermal_throttle"
    assert r["core_throttle_count"] == 3 + 4 and r["package_throttle_count"] == 7
    assert read_governor(root("x86"))["governor"] == "powersave"


def test_x86_throttling_during_a_case_is_a_counter_increase(tmp_path: Path) -> None:
    tree = tmp_path / "x86"
    shutil.copytree(FIX / "x86", tree)
    before = read_throttling(str(tree), runner=not_a_pi)
    assert throttled_between(before, read_throttling(str(tree), runner=not_a_pi)) is False
    (tree / "sys/devices/system/cpu/cpu1/thermal_throttle/core_throttle_count").write_text("9\n")
    assert throttled_between(before, read_throttling(str(tree), runner=not_a_pi)) is True


def test_container_without_sensors_gives_none_with_reasons_never_zero() -> None:
    s = snapshot(root("container"))
    assert s["temperature"]["max_c"] is None and "no readable" in s["temperature"]["reason"]
    assert s["governor"]["governor"] is None and "cpufreq" in s["governor"]["reason"]
    assert s["throttling"]["throttled_now"] is None and s["throttling"]["reason"]


def test_recorded_tree_never_runs_the_real_vcgencmd(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(argv: list[str]) -> str:
        raise AssertionError("ran vcgencmd for a recorded tree")

    monkeypatch.setattr(thermal, "run_vcgencmd", boom)
    assert snapshot(root("x86"))["throttling"]["source"] == "x86-thermal_throttle"


def test_unreadable_temperature_is_none_with_the_error() -> None:
    def read_file(path: str) -> str:
        if path.endswith("thermal_zone0/temp"):
            raise OSError(errno.EIO, "Input/output error", path)
        return Path(path).read_text()

    t = read_temperatures(root("pi4"), read_file=read_file)
    zone = t["sensors"]["cpu-thermal"]
    assert zone["c"] is None and "Input/output error" in zone["reason"]
    assert t["max_c"] == pytest.approx(42.236)  # the hwmon view of the same sensor still reads


def test_cool_down_waits_until_the_target_temperature(tmp_path: Path) -> None:
    tree = tmp_path / "pi4"
    shutil.copytree(FIX / "pi4", tree)
    (tree / "sys/class/thermal/thermal_zone0/temp").write_text("55000\n")
    temps = iter([52000, 47000, 44500])
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s
        (tree / "sys/class/thermal/thermal_zone0/temp").write_text(f"{next(temps)}\n")
        (tree / "sys/class/hwmon/hwmon0/temp1_input").write_text("40000\n")

    r = cool_down(45.0, 60.0, root=str(tree), poll_s=2.0, sleep=sleep, clock=lambda: now[0])
    assert r["reached"] is True and r["max_c"] == pytest.approx(44.5) and r["waited_s"] == 6.0


def test_cool_down_gives_up_at_the_timeout_and_says_so() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    r = cool_down(30.0, 5.0, root=root("pi4"), poll_s=2.0, sleep=sleep, clock=lambda: now[0])
    assert r["reached"] is False and "still 42.2 C" in r["reason"] and r["waited_s"] >= 5.0
    assert cool_down(30.0, 5.0, root=root("container"))["reached"] is None
