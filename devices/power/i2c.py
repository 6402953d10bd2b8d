"""I2C register access for the INA2xx readers: big-endian 16-bit registers over SMBus.

SMBus word transfers are little-endian while INA2xx registers are sent MSB first, so `read_word_data`
returns the two bytes swapped (register bytes 27 12 read back as 0x1227) and every word is swapped here, in
both directions. smbus2 is imported only when a real bus is opened: it is not needed anywhere else, and
tests inject a fake bus that replays recorded register bytes.
"""

from __future__ import annotations

from typing import Protocol

from workloads.errors import DeviceError


class I2CBus(Protocol):
    """The subset of `smbus2.SMBus` the readers use."""

    def read_word_data(self, i2c_addr: int, register: int) -> int: ...
    def write_word_data(self, i2c_addr: int, register: int, value: int) -> None: ...
    def close(self) -> None: ...


def open_bus(bus: int) -> I2CBus:
    """`smbus2.SMBus(bus)`, with errors that say what to install or which group to join."""
    try:
        from smbus2 import SMBus
    except ImportError as exc:
        raise DeviceError("the INA219/INA260 readers need smbus2 on the device: pip install smbus2") from exc
    try:
        return SMBus(bus)
    except PermissionError as exc:
        raise DeviceError(f"no access to /dev/i2c-{bus}: add the user to the i2c group") from exc
    except OSError as exc:
        raise DeviceError(f"cannot open /dev/i2c-{bus} (is I2C enabled, e.g. raspi-config?): {exc}") from exc


def swap16(word: int) -> int:
    """Swap the two bytes of a 16-bit SMBus word."""
    return ((word & 0xFF) << 8) | (word >> 8 & 0xFF)


def signed16(value: int) -> int:
    """Two's-complement value of a 16-bit register (shunt and current registers are signed)."""
    return value - 0x10000 if value & 0x8000 else value


def read_register(bus: I2CBus, address: int, register: int) -> int:
    """The register's 16-bit value, MSB first as the chip sends it."""
    try:
        return swap16(bus.read_word_data(address, register))
    except OSError as exc:
        raise DeviceError(f"I2C read of register 0x{register:02x} at address 0x{address:02x} failed "
                          f"(wiring, address or bus number): {exc}") from exc


def write_register(bus: I2CBus, address: int, register: int, value: int) -> None:
    """Write a 16-bit register, MSB first."""
    try:
        bus.write_word_data(address, register, swap16(value))
    except OSError as exc:
        raise DeviceError(f"I2C write of register 0x{register:02x} at address 0x{address:02x} failed: "
                          f"{exc}") from exc
