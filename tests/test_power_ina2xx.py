"""INA219 and INA260 readers over a fake I2C bus replaying recorded register bytes (power.md F11)."""

from __future__ import annotations

import sys

import pytest

from devices.power import make_sampler
from devices.power import ina219, ina260
from devices.power.i2c import read_register
from devices.power.ina219 import Ina219Sampler, adc_time_s, calibration
from devices.power.ina260 import Ina260Sampler
from workloads.errors import ConfigError, DeviceError


class FakeBus:
    """An SMBus that holds register bytes (MSB, LSB) as the chip sends them.

    `read_word_data` returns what real SMBus returns: the first byte on the wire in the low half.
    """

    def __init__(self, registers: dict[int, tuple[int, int]]) -> None:
        self.registers = dict(registers)
        self.writes: list[tuple[int, int, int]] = []
        self.closed = False

    def read_word_data(self, i2c_addr: int, register: int) -> int:
        msb, lsb = self.registers[register]
        return msb | lsb << 8

    def write_word_data(self, i2c_addr: int, register: int, value: int) -> None:
        self.writes.append((i2c_addr, register, value))
        self.registers[register] = (value & 0xFF, value >> 8)

    def close(self) -> None:
        self.closed = True


def ina219_bus(**overrides: tuple[int, int]) -> FakeBus:
    """F11: R_shunt 0.1 Ω, current LSB 100 µA, 5.000 V at 0.5 A = 2.5 W; calibration 0 as after power-on."""
    regs = {0x00: (0x39, 0x9F), 0x01: (0x13, 0x88), 0x02: (0x27, 0x12), 0x03: (0x04, 0xE2),
            0x04: (0x13, 0x88), 0x05: (0x00, 0x00)}
    regs.update({int(k[1:], 16): v for k, v in overrides.items()})
    return FakeBus(regs)


def test_smbus_words_are_byte_swapped_into_big_endian_registers() -> None:
    bus = ina219_bus()
    assert bus.read_word_data(0x40, 0x02) == 0x1227
    assert read_register(bus, 0x40, 0x02) == 0x2712


def test_ina219_writes_calibration_msb_first_and_reads_watts_volts_amps() -> None:
    bus = ina219_bus()
    s = Ina219Sampler(bus, 0x40, shunt_ohms=0.1, bus_number=1)
    assert bus.writes == [(0x40, 0x05, 0x0010)]  # 4096 = 0x1000 goes on the wire as 10 00
    assert bus.registers[0x05] == (0x10, 0x00)
    assert s.source == "ina219:1-0x40"
    assert s.read_w() == pytest.approx(2.5)  # 1250 x 20 x 100 µA
    values = s.read_all()
    assert values["bus_v"] == pytest.approx(5.000)
    assert values["shunt_mv"] == pytest.approx(50.0)
    assert values["current_a"] == pytest.approx(0.5)


def test_ina219_update_interval_comes_from_the_config_register() -> None:
    s = Ina219Sampler(ina219_bus(), shunt_ohms=0.1)
    assert s.update_interval_s == pytest.approx(2 * 532e-6)  # 0x399F: 12-bit bus and shunt
    assert adc_time_s(0b1111) == pytest.approx(68.1e-3, rel=1e-3)  # 128 averages
    assert adc_time_s(0b0000) == pytest.approx(84e-6)


def test_ina219_negative_current_is_sign_extended() -> None:
    s = Ina219Sampler(ina219_bus(r04=(0xFF, 0x38)), shunt_ohms=0.1)
    assert s.read_all()["current_a"] == pytest.approx(-200 * 1e-4)


def test_ina219_overflow_bit_is_an_error_not_a_clipped_value() -> None:
    with pytest.raises(DeviceError, match="overflowed"):
        Ina219Sampler(ina219_bus(r02=(0x27, 0x13)), shunt_ohms=0.1)


def test_ina219_reading_zero_watts_is_refused() -> None:
    with pytest.raises(DeviceError, match="reads 0.0 W"):
        Ina219Sampler(ina219_bus(r03=(0x00, 0x00)), shunt_ohms=0.1)


def test_ina219_in_triggered_mode_is_refused() -> None:
    with pytest.raises(DeviceError, match="not converting continuously"):
        Ina219Sampler(ina219_bus(r00=(0x39, 0x9B)), shunt_ohms=0.1)


def test_ina219_calibration_follows_the_datasheet_formula() -> None:
    assert calibration(0.1, 1e-4) == 4096
    assert calibration(0.1, 2.0 / 32767) == 6710
    with pytest.raises(ConfigError) as err:
        calibration(0.0001, 1e-6)
    assert err.value.key == "max_amps"


def test_ina219_config_from_inventory_mapping() -> None:
    bus = ina219_bus()
    config = {"sensor": "ina219", "i2c_bus": 1, "address": 0x40, "shunt_ohms": 0.1}
    s = ina219.from_config(config, "/", bus=bus)
    assert s.read_w() == pytest.approx(2.5)
    s.close()
    assert bus.closed


@pytest.mark.parametrize("config, key", [
    ({"sensor": "ina219", "address": 0x20}, "address"),
    ({"sensor": "ina219", "shunt_ohms": "0.1"}, "shunt_ohms"),
    ({"sensor": "ina219", "shunt_ohms": 0}, "shunt_ohms"),
    ({"sensor": "ina219", "i2c_bus": True}, "i2c_bus"),
    ({"sensor": "ina219", "shunt": 0.1}, "shunt"),
    ({"sensor": "ina260", "shunt_ohms": 0.1}, "shunt_ohms"),
])
def test_bad_ina_config_names_the_key(config: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_sampler(config)
    assert err.value.key == key


def test_missing_smbus2_is_a_device_error_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "smbus2", None)  # makes `import smbus2` raise ImportError
    with pytest.raises(DeviceError, match="pip install smbus2"):
        make_sampler({"sensor": "ina219", "i2c_bus": 1, "address": 0x40, "shunt_ohms": 0.1})


def ina260_bus(**overrides: tuple[int, int]) -> FakeBus:
    """5.000 V (4000 x 1.25 mV), 0.5 A (400 x 1.25 mA), 2.5 W (250 x 10 mW), default config 0x6127."""
    regs = {0x00: (0x61, 0x27), 0x01: (0x01, 0x90), 0x02: (0x0F, 0xA0), 0x03: (0x00, 0xFA),
            0xFE: (0x54, 0x49)}
    regs.update({int(k[1:], 16): v for k, v in overrides.items()})
    return FakeBus(regs)


def test_ina260_reads_watts_volts_amps_in_its_fixed_lsbs() -> None:
    s = Ina260Sampler(ina260_bus(), 0x40, bus_number=1)
    assert s.source == "ina260:1-0x40"
    assert s.read_w() == pytest.approx(2.5)
    d = s.describe()
    assert d["bus_v"] == pytest.approx(5.0) and d["current_a"] == pytest.approx(0.5)
    assert d["notes"] == []
    assert s.update_interval_s == pytest.approx(2.2e-3)  # 1 average x (1.1 ms + 1.1 ms)


def test_ina260_negative_current_and_foreign_manufacturer_id_are_reported() -> None:
    s = Ina260Sampler(ina260_bus(r01=(0xFE, 0x70), rFE=(0x00, 0x00)), 0x40)
    d = s.describe()
    assert d["current_a"] == pytest.approx(-400 * 1.25e-3)
    assert "manufacturer ID 0x0000" in d["notes"][0]


def test_ina260_config_from_inventory_mapping() -> None:
    s = ina260.from_config({"sensor": "ina260", "address": 0x41}, "/", bus=ina260_bus())
    assert s.source == "ina260:1-0x41"


def test_bus_is_closed_when_the_chip_fails_its_probe() -> None:
    bus = ina219_bus(r03=(0x00, 0x00))
    with pytest.raises(DeviceError):
        ina219.from_config({"sensor": "ina219"}, "/", bus=bus)
    assert bus.closed
