"""Background sampling in real time against sensors with a known truth, the idle baseline, make_sampler."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devices.power import (SENSORS, BackgroundSampler, CounterSampler, NoneSampler, PowerSampler,
                           available_sensors, make_sampler, measure_idle)
from workloads.errors import ConfigError, DeviceError

from helpers import REPO

FIX = Path(__file__).parent / "fixtures" / "power"


class FakeCounter(CounterSampler):
    """A µJ counter advancing at `watts` in real time, wrapping at `range_uj` (tiny on purpose)."""

    unit_j = 1e-6
    channels = ("package-0",)
    update_interval_s = 0.001

    def __init__(self, watts: float, range_uj: int) -> None:
        self.watts, self.ranges, self.t0 = watts, (range_uj,), time.perf_counter()
        self.source = "fake:counter"

    def read_counters(self) -> tuple[int, ...]:
        return (int((time.perf_counter() - self.t0) * self.watts * 1e6) % self.ranges[0],)

    def describe(self) -> dict[str, Any]:
        return {}


class FakeStep(PowerSampler):
    """Instantaneous power `low` before `t_step` (perf_counter seconds), `high` from it on."""

    update_interval_s = 0.02

    def __init__(self, low: float, high: float, t_step: float) -> None:
        self.low, self.high, self.t_step, self.source = low, high, t_step, "fake:step"

    def read_w(self) -> float:
        return self.high if time.perf_counter() >= self.t_step else self.low

    def describe(self) -> dict[str, Any]:
        return {}


class Broken(PowerSampler):
    update_interval_s = 0.01
    source = "fake:broken"

    def __init__(self) -> None:
        self.calls = 0

    def read_w(self) -> float:
        self.calls += 1
        if self.calls > 2:
            raise DeviceError("sensor unplugged")
        return 1.0

    def describe(self) -> dict[str, Any]:
        return {}


def test_counter_advancing_at_known_power_is_recovered_within_2_percent_across_wraps() -> None:
    # 7.5 W against a 2 J range: the counter wraps every 0.27 s, several times inside the window.
    bg = BackgroundSampler(FakeCounter(7.5, 2_000_000)).start()
    start = time.perf_counter()
    time.sleep(0.8)
    end = time.perf_counter()
    bg.stop()
    r = bg.energy(start, end)
    assert r is not None
    assert r.power_w_avg == pytest.approx(7.5, rel=0.02)
    assert r.energy_j == pytest.approx(7.5 * (end - start), rel=0.02)
    assert r.n_samples >= 20


def test_stepped_power_counts_only_the_in_window_part() -> None:
    t_step = time.perf_counter() + 0.5
    bg = BackgroundSampler(FakeStep(2.0, 10.0, t_step)).start()
    time.sleep(0.2)  # 2 W outside the window, before it
    start = time.perf_counter()
    time.sleep(max(0.0, t_step - time.perf_counter()) + 0.4)
    end = time.perf_counter()
    time.sleep(0.2)  # 10 W outside the window, after it
    samples = bg.stop()
    r = bg.energy(start, end)
    assert r is not None
    truth = 2.0 * (t_step - start) + 10.0 * (end - t_step)
    # The trapezoid can only smear the step across the one sample gap that straddles it.
    gap = max(b[0] - a[0] for a, b in zip(samples, samples[1:]) if a[0] <= t_step <= b[0])
    assert abs(r.energy_j - truth) <= 8.0 * gap / 2 + 1e-9
    assert r.window_s == pytest.approx(end - start)


def test_start_samples_before_the_window_and_stop_samples_after_it() -> None:
    bg = BackgroundSampler(FakeStep(3.0, 3.0, 0.0)).start()
    t_start = time.perf_counter()
    time.sleep(0.05)
    t_stop = time.perf_counter()
    samples = bg.stop()
    assert samples[0][0] <= t_start and samples[-1][0] >= t_stop
    r = bg.energy(t_start, t_stop, min_samples=1)
    assert r is not None and r.power_w_avg == pytest.approx(3.0)


def test_sensor_failure_in_the_thread_surfaces_at_stop() -> None:
    bg = BackgroundSampler(Broken()).start()
    time.sleep(0.1)
    with pytest.raises(DeviceError, match="fake:broken failed while sampling: sensor unplugged"):
        bg.stop()


def test_none_sensor_has_no_samples_no_energy_and_no_idle_power() -> None:
    none = make_sampler({"sensor": "none"})
    assert isinstance(none, NoneSampler) and none.source == "none" and not none.is_estimate
    bg = BackgroundSampler(none).start()
    assert bg.stop() == [] and bg.energy(0.0, 1.0) is None
    assert measure_idle(none, 5.0, sleep=lambda s: None) is None


def test_idle_baseline_is_the_mean_power_over_the_idle_period() -> None:
    assert measure_idle(FakeStep(3.3, 3.3, 0.0), 0.15) == pytest.approx(3.3)


def test_min_window_uses_the_slower_of_sensor_and_polling() -> None:
    assert BackgroundSampler(FakeStep(1, 1, 0)).min_window_s() == 1.0  # 20 x 20 ms < 1 s floor
    assert BackgroundSampler(FakeStep(1, 1, 0), interval_s=0.5).min_window_s() == pytest.approx(10.0)


@pytest.mark.parametrize("config, key", [({"sensor": "ina3221"}, "sensor"), ({}, "sensor"),
                                         ({"sensor": "rapl", "zone": 0}, "zone"),
                                         ({"sensor": "none", "rail": "x"}, "rail")])
def test_unknown_sensors_and_keys_are_config_errors_naming_the_key(config: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_sampler(config, root=str(FIX / "rapl_intel"))
    assert err.value.key == key


def test_power_mapping_that_is_not_a_mapping_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        make_sampler("rapl")  # type: ignore[arg-type]
    assert err.value.key == "power"


def test_every_documented_sensor_name_is_registered() -> None:
    assert set(SENSORS) == {"jetson-ina3221", "tegrastats", "rapl", "nvml", "ina219", "ina260", "command",
                            "estimate", "none"}


def test_available_sensors_finds_what_a_recorded_tree_holds() -> None:
    assert available_sensors(str(FIX / "rapl_intel")) == ["rapl"]
    assert available_sensors(str(FIX / "jetson_agx_orin_jp5")) == ["jetson-ina3221"]
    assert available_sensors(str(FIX / "no_sensor")) == []


def test_importing_the_readers_loads_nothing_beyond_stdlib_numpy_psutil() -> None:
    code = ("import sys; before = set(sys.modules); import devices.power, devices.thermal; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names); "
            "print(sorted(new - {'devices', 'workloads', 'psutil', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
