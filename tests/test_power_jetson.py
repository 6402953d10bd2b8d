"""Jetson INA3221 readers replayed on recorded sysfs trees of JetPack 4 (IIO) and 5+ (hwmon) modules."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from devices.power import make_sampler
from devices.power.jetson_ina3221 import IIO_CONTINUOUS_S, IIO_TRIGGERED_S, JetsonIna3221Sampler, choose_total
from workloads.errors import ConfigError, DeviceError

FIX = Path(__file__).parent / "fixtures" / "power"


def tree(name: str) -> str:
    return str(FIX / name)


def copy_tree(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIX / name, dest, symlinks=True)
    return dest


def test_nano_jp4_total_is_pom_5v_in_not_the_sum_of_rails() -> None:
    s = JetsonIna3221Sampler(tree("jetson_nano_jp4"))
    assert s.source == "jetson-ina3221:POM_5V_IN"
    assert s.read_w() == pytest.approx(0.933)  # in_power0_input is mW; 933 + 0 + 86 would be wrong
    d = s.describe()
    assert d["rails"]["POM_5V_CPU"]["power_mw"] == 86
    assert d["rails"]["POM_5V_IN"] == {"device": "6-0040", "driver": "iio", "channel": 0, "power_mw": 933}
    assert s.update_interval_s == IIO_TRIGGERED_S  # running_mode 0: every read is a fresh conversion
    assert not s.is_estimate


def test_device_reached_through_driver_symlink_and_devices_dir_is_found_once() -> None:
    s = JetsonIna3221Sampler(tree("jetson_nano_jp4"))
    assert [r.name for r in s.rails] == ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"]


def test_xavier_nx_jp4_in_continuous_mode_updates_every_422_ms() -> None:
    s = JetsonIna3221Sampler(tree("jetson_xavier_nx_jp4"))
    assert s.source == "jetson-ina3221:VDD_IN"
    assert s.read_w() == pytest.approx(4.121)
    assert s.update_interval_s == pytest.approx(IIO_CONTINUOUS_S) == pytest.approx(0.4224)


def test_agx_xavier_jp4_without_input_rail_sums_both_chips() -> None:
    s = JetsonIna3221Sampler(tree("jetson_agx_xavier_jp4"))
    assert s.source == "jetson-ina3221:sum(GPU+CPU+SOC+CV+VDDRQ+SYS5V)"
    assert s.read_w() == pytest.approx((1155 + 385 + 2504 + 0 + 192 + 2692) / 1000)


def test_xavier_nx_jp5_hwmon_power_is_millivolts_times_milliamps() -> None:
    s = JetsonIna3221Sampler(tree("jetson_xavier_nx_jp5"))
    assert s.source == "jetson-ina3221:VDD_IN"
    assert s.read_w() == pytest.approx(5000 * 900 / 1e6)  # mV x mA = µW
    assert s.describe()["chips"][0]["path"].endswith("7-0040/hwmon/hwmon5")


def test_orin_nano_jp6_skips_shunt_sum_channel_and_reads_update_interval_in_ms() -> None:
    s = JetsonIna3221Sampler(tree("jetson_orin_nano_jp6"))
    assert s.read_w() == pytest.approx(5056 * 1128 / 1e6)  # 5703.2 mW (power.md F2)
    assert [r.name for r in s.rails] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    d = s.describe()
    assert any("sum of shunt voltages" in x for x in d["skipped"])
    assert s.update_interval_s == pytest.approx(0.007)
    assert d["chips"][0]["samples"] == 1


def test_agx_orin_skips_nc_channels_and_sums_rails_because_vin_sys_5v0_is_not_the_total() -> None:
    s = JetsonIna3221Sampler(tree("jetson_agx_orin_jp5"))
    assert [r.name for r in s.rails] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    assert s.source == "jetson-ina3221:sum(VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO)"
    expected_mw = 19232 * 124 / 1000 + 19248 * 41 / 1000 + 5000 * 704 / 1000 + 5000 * 60 / 1000
    assert s.read_w() == pytest.approx(expected_mw / 1000)
    assert sum("NC" in x for x in s.describe()["skipped"]) == 2


def test_choose_total_prefers_vin_then_pom_5v_in_then_vdd_in() -> None:
    assert choose_total(["VDD_CPU", "VDD_IN", "VIN"])[0] == ["VIN"]
    assert choose_total(["POM_5V_CPU", "POM_5V_IN"])[0] == ["POM_5V_IN"]
    assert choose_total(["VDD_GPU_SOC", "VIN_SYS_5V0"])[0] == ["VDD_GPU_SOC", "VIN_SYS_5V0"]


def test_rail_key_selects_one_rail_and_an_unknown_rail_is_named() -> None:
    s = make_sampler({"sensor": "jetson-ina3221", "rail": "VDD_SOC"}, root=tree("jetson_orin_nano_jp6"))
    assert s.source == "jetson-ina3221:VDD_SOC"
    assert s.read_w() == pytest.approx(5048 * 321 / 1e6)
    with pytest.raises(DeviceError, match="VDD_GPU.*not found.*VDD_IN"):
        make_sampler({"sensor": "jetson-ina3221", "rail": "VDD_GPU"}, root=tree("jetson_orin_nano_jp6"))


def test_root_key_in_the_power_mapping_points_the_reader_at_a_tree() -> None:
    s = make_sampler({"sensor": "jetson-ina3221", "root": tree("jetson_xavier_nx_jp5")})
    assert s.read_w() == pytest.approx(4.5)


def test_unknown_key_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as err:
        make_sampler({"sensor": "jetson-ina3221", "rails": "VDD_IN"}, root=tree("jetson_orin_nano_jp6"))
    assert err.value.key == "rails"


def test_board_without_ina3221_fails_with_the_reason() -> None:
    with pytest.raises(DeviceError, match="no INA3221 rails"):
        JetsonIna3221Sampler(tree("no_sensor"))


def test_total_rail_reading_zero_is_refused_not_stored(tmp_path: Path) -> None:
    root = copy_tree("jetson_nano_jp4", tmp_path)
    (root / "sys/bus/i2c/devices/6-0040/iio:device0/in_power0_input").write_text("0\n")
    with pytest.raises(DeviceError, match="reads 0.0 W"):
        JetsonIna3221Sampler(str(root))


def test_unreadable_iio_files_give_a_permission_hint() -> None:
    def read_file(path: str) -> str:
        if path.endswith("in_power0_input"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return Path(path).read_text()

    with pytest.raises(DeviceError, match="permission denied.*chgrp i2c"):
        JetsonIna3221Sampler(tree("jetson_nano_jp4"), read_file=read_file)


def test_disabled_hwmon_channel_read_error_is_a_device_error_not_zero() -> None:
    def read_file(path: str) -> str:
        if path.endswith("curr1_input"):
            raise OSError(errno.ENODATA, "No data available", path)
        return Path(path).read_text()

    with pytest.raises(DeviceError, match="No data available"):
        JetsonIna3221Sampler(tree("jetson_orin_nano_jp6"), read_file=read_file)



def test_tx2_older_iio_device_directory_form_is_found() -> None:
    s = JetsonIna3221Sampler(tree("jetson_tx2_jp4"))
    assert s.source == "jetson-ina3221:VDD_IN"
    assert s.read_w() == pytest.approx(1.038)
