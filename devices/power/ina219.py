"""TI INA219 current/power monitor on I2C, e.g. inline in a Raspberry Pi 4's supply (power.md §4.2).

Registers (16-bit, big-endian): 0x00 config, 0x01 shunt voltage (signed, 10 µV/LSB), 0x02 bus voltage
(`reg >> 3` x 4 mV; bit 1 CNVR, bit 0 OVF), 0x03 power (20 x current LSB), 0x04 current (signed), 0x05
calibration = trunc(0.04096 / (current_LSB x R_shunt)). Calibration is 0 after power-on, so it is written
at start; until then the power and current registers read 0.
"""

from __future__ import annotations

from typing import Any, Mapping

from workloads.errors import ConfigError, DeviceError

from .base import PowerSampler, check_keys, check_positive_power, get_opt
from .i2c import I2CBus, open_bus, read_register, signed16, write_register

REG_CONFIG, REG_SHUNT, REG_BUS, REG_POWER, REG_CURRENT, REG_CAL = range(6)
CONTINUOUS_SHUNT_AND_BUS = 0b111


def adc_time_s(setting: int) -> float:
    """Conversion time of a 4-bit BADC/SADC field: 9..12-bit single samples, or 2..128 12-bit averages."""
    if not setting & 0b1000:
        return (84e-6, 148e-6, 276e-6, 532e-6)[setting & 0b11]
    return 532e-6 * (1 << (setting & 0b111))


def calibration(shunt_ohms: float, current_lsb_a: float) -> int:
    """The calibration register for a shunt and current LSB (bit 0 is unused by the chip)."""
    cal = int(0.04096 / (current_lsb_a * shunt_ohms)) & 0xFFFE
    if not 0 < cal <= 0xFFFE:
        raise ConfigError(f"calibration {cal} out of range 2..65534 for shunt_ohms={shunt_ohms} and a "
                          f"current LSB of {current_lsb_a} A; change max_amps", key="max_amps")
    return cal


class Ina219Sampler(PowerSampler):
    """Power through an INA219 shunt monitor."""

    def __init__(self, bus: I2CBus, address: int = 0x40, shunt_ohms: float = 0.1,
                 max_amps: float | None = None, bus_number: int | None = None) -> None:
        self.bus, self.address, self.shunt_ohms = bus, address, shunt_ohms
        # 100 µA LSB covers ±3.2768 A, enough for a Pi 4 (3 A supply), with a round calibration value.
        lsb = 1e-4 if max_amps is None else max_amps / 32767
        self.cal = calibration(shunt_ohms, lsb)
        self.current_lsb_a = 0.04096 / (self.cal * shunt_ohms)  # what the chip really uses
        write_register(bus, address, REG_CAL, self.cal)
        self.config = read_register(bus, address, REG_CONFIG)
        if self.config & 0b111 != CONTINUOUS_SHUNT_AND_BUS:
            raise DeviceError(f"INA219 at 0x{address:02x} is not converting continuously (config "
                              f"0x{self.config:04x}); power-cycle it or write config 0x399F")
        self.update_interval_s = adc_time_s(self.config >> 7 & 0xF) + adc_time_s(self.config >> 3 & 0xF)
        where = f"{bus_number}-" if bus_number is not None else ""
        self.source = f"ina219:{where}0x{address:02x}"
        check_positive_power(self.source, self.read_w())

    def read_w(self) -> float:
        busreg = read_register(self.bus, self.address, REG_BUS)
        if busreg & 0b1:
            raise DeviceError(f"INA219 at 0x{self.address:02x} overflowed (current beyond its range): raise "
                              f"max_amps or check shunt_ohms")
        return read_register(self.bus, self.address, REG_POWER) * 20 * self.current_lsb_a

    def read_all(self) -> dict[str, float]:
        """Bus volts, shunt millivolts, amps and watts of one reading."""
        def reg(register: int) -> int:
            return read_register(self.bus, self.address, register)

        return {"bus_v": (reg(REG_BUS) >> 3) * 4e-3, "shunt_mv": signed16(reg(REG_SHUNT)) * 1e-2,
                "current_a": signed16(reg(REG_CURRENT)) * self.current_lsb_a, "power_w": self.read_w()}

    def describe(self) -> dict[str, Any]:
        return {"sensor": "ina219", "source": self.source, "address": self.address,
                "shunt_ohms": self.shunt_ohms, "calibration": self.cal, "current_lsb_a": self.current_lsb_a,
                "config": f"0x{self.config:04x}", "update_interval_s": self.update_interval_s,
                **self.read_all()}

    def close(self) -> None:
        self.bus.close()


# Keys of its inventory `power:` mapping besides `sensor` and `root`; REQUIRED_KEYS must be given.
CONFIG_KEYS = {"i2c_bus", "address", "shunt_ohms", "max_amps"}
REQUIRED_KEYS: tuple[str, ...] = ()


def from_config(config: Mapping[str, Any], root: str, bus: I2CBus | None = None) -> Ina219Sampler:
    """`{sensor: ina219, i2c_bus: 1, address: 0x40, shunt_ohms: 0.1[, max_amps: 3.2]}`."""
    check_keys(config, CONFIG_KEYS, "ina219")
    number = get_opt(config, "i2c_bus", int, 1)
    address = get_opt(config, "address", int, 0x40)
    shunt = float(get_opt(config, "shunt_ohms", (int, float), 0.1))
    max_amps = get_opt(config, "max_amps", (int, float), None)
    if not 0x40 <= address <= 0x4F:
        raise ConfigError("INA219 addresses are 0x40..0x4F", key="address")
    if shunt <= 0:
        raise ConfigError("must be > 0", key="shunt_ohms")
    if max_amps is not None and max_amps <= 0:
        raise ConfigError("must be > 0", key="max_amps")
    i2c = bus if bus is not None else open_bus(number)
    try:
        return Ina219Sampler(i2c, address, shunt, None if max_amps is None else float(max_amps), number)
    except Exception:
        i2c.close()
        raise
