"""TI INA260 power monitor with an integrated 2 mΩ shunt, on I2C (power.md §4.2).

Registers (16-bit, big-endian): 0x00 config (AVG bits 11-9, VBUSCT 8-6, ISHCT 5-3, MODE 2-0), 0x01 current
(signed, 1.25 mA/LSB), 0x02 bus voltage (1.25 mV/LSB), 0x03 power (10 mW/LSB), 0xFE manufacturer ID. There
is no calibration register.
"""

from __future__ import annotations

from typing import Any, Mapping

from workloads.errors import ConfigError, DeviceError

from .base import PowerSampler, check_keys, check_positive_power, get_opt
from .i2c import I2CBus, open_bus, read_register, signed16

REG_CONFIG, REG_CURRENT, REG_BUS, REG_POWER = range(4)
REG_MANUFACTURER = 0xFE
TI_ID = 0x5449  # "TI"; public code agrees, the datasheet value is unverified (power.md §9), so only noted
AVERAGES = (1, 4, 16, 64, 128, 256, 512, 1024)
CONVERSION_S = (140e-6, 204e-6, 332e-6, 588e-6, 1.1e-3, 2.116e-3, 4.156e-3, 8.244e-3)


def update_interval_s(config: int) -> float:
    """Seconds per fresh power value: averages x (bus + shunt conversion time)."""
    bus_s, shunt_s = CONVERSION_S[config >> 6 & 0b111], CONVERSION_S[config >> 3 & 0b111]
    return AVERAGES[config >> 9 & 0b111] * (bus_s + shunt_s)


class Ina260Sampler(PowerSampler):
    """Power through an INA260."""

    def __init__(self, bus: I2CBus, address: int = 0x40, bus_number: int | None = None) -> None:
        self.bus, self.address = bus, address
        self.config = read_register(bus, address, REG_CONFIG)
        if self.config & 0b111 != 0b111:
            raise DeviceError(f"INA260 at 0x{address:02x} is not converting continuously (config "
                              f"0x{self.config:04x}); power-cycle it")
        self.manufacturer = read_register(bus, address, REG_MANUFACTURER)
        self.update_interval_s = update_interval_s(self.config)
        where = f"{bus_number}-" if bus_number is not None else ""
        self.source = f"ina260:{where}0x{address:02x}"
        check_positive_power(self.source, self.read_w())

    def read_w(self) -> float:
        return read_register(self.bus, self.address, REG_POWER) * 10e-3

    def describe(self) -> dict[str, Any]:
        notes = [] if self.manufacturer == TI_ID else [
            f"manufacturer ID 0x{self.manufacturer:04x} is not TI's 0x{TI_ID:04x}: is this an INA260?"]
        return {"sensor": "ina260", "source": self.source, "address": self.address,
                "config": f"0x{self.config:04x}", "update_interval_s": self.update_interval_s,
                "bus_v": read_register(self.bus, self.address, REG_BUS) * 1.25e-3,
                "current_a": signed16(read_register(self.bus, self.address, REG_CURRENT)) * 1.25e-3,
                "power_w": self.read_w(), "notes": notes}

    def close(self) -> None:
        self.bus.close()


# Keys of its inventory `power:` mapping besides `sensor` and `root`; REQUIRED_KEYS must be given.
CONFIG_KEYS = {"i2c_bus", "address"}
REQUIRED_KEYS: tuple[str, ...] = ()


def from_config(config: Mapping[str, Any], root: str, bus: I2CBus | None = None) -> Ina260Sampler:
    """`{sensor: ina260, i2c_bus: 1, address: 0x40}`."""
    check_keys(config, CONFIG_KEYS, "ina260")
    number = get_opt(config, "i2c_bus", int, 1)
    address = get_opt(config, "address", int, 0x40)
    if not 0x40 <= address <= 0x4F:
        raise ConfigError("INA260 addresses are 0x40..0x4F", key="address")
    i2c = bus if bus is not None else open_bus(number)
    try:
        return Ina260Sampler(i2c, address, number)
    except Exception:
        i2c.close()
        raise
