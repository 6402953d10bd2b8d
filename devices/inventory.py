"""The device inventory (`devices.yaml`): which devices exist and how to reach them.

The device `local` always exists: the controller itself, reached without SSH. An entry named `local` with no
`host` configures it (its power sensor, say). Unknown keys and wrong types are errors naming the device
and the key.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from workloads.errors import ConfigError
from workloads.spec import suggest

DEFAULT_INVENTORY = "devices.yaml"
DEFAULT_WORKDIR = "~/.cache/attn-harness"
LOCAL = "local"

DEVICE_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str, "port": int, "user": str, "identity_file": str, "python": str, "workdir": str,
    "power": dict, "tags": list, "connect_timeout_s": (int, float), "description": str,
}
TOP_KEYS = ("known_hosts", "devices")


@dataclass(frozen=True)
class DeviceConfig:
    """One device as declared. `host` None means the local device."""

    name: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    python: str | None = None
    workdir: str = DEFAULT_WORKDIR
    power: Mapping[str, Any] | None = None
    tags: tuple[str, ...] = ()
    connect_timeout_s: float = 10.0
    description: str | None = None

    @property
    def is_local(self) -> bool:
        return self.host is None


@dataclass(frozen=True)
class Inventory:
    devices: Mapping[str, DeviceConfig]
    known_hosts: str | None = None
    path: str | None = None

    def resolve(self, names: list[str]) -> list[DeviceConfig]:
        """The named devices in order; ConfigError naming an unknown one and listing what exists."""
        out = []
        for name in names:
            if name not in self.devices:
                raise ConfigError(f"unknown device '{name}'{suggest(name, list(self.devices))}; known: "
                                  f"{', '.join(self.devices)}. Add it to {self.path or DEFAULT_INVENTORY}.",
                                  file=self.path, key=name)
            out.append(self.devices[name])
        return out


def local_device(**overrides: Any) -> DeviceConfig:
    return DeviceConfig(name=LOCAL, python=overrides.pop("python", None) or sys.executable, **overrides)


def parse_inventory(data: Any, file: str) -> Inventory:
    """Validate an inventory document (already parsed YAML)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping with 'devices:'", file=file, line=1)
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"unknown top-level key{suggest(str(key), TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}",
                              file=file, key=str(key))
    raw_devices = data.get("devices") or {}
    if not isinstance(raw_devices, dict):
        raise ConfigError("'devices' must be a mapping of name to settings", file=file, key="devices")
    devices: dict[str, DeviceConfig] = {LOCAL: local_device()}
    for name, entry in raw_devices.items():
        name = str(name)
        entry = entry or {}
        if not isinstance(entry, dict):
            raise ConfigError(f"device '{name}' must be a mapping of settings", file=file, key=name)
        for key, value in entry.items():
            if key not in DEVICE_KEYS:
                raise ConfigError(f"device '{name}': unknown key '{key}'{suggest(str(key), list(DEVICE_KEYS))}; "
                                  f"allowed: {', '.join(DEVICE_KEYS)}", file=file, key=f"devices.{name}.{key}")
            expected = DEVICE_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, expected):
                names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
                raise ConfigError(f"device '{name}': '{key}' must be {names}, got {value!r}", file=file,
                                  key=f"devices.{name}.{key}")
        if "power" in entry:
            _check_power(entry["power"], name, file)
        if "port" in entry and not 0 < entry["port"] < 65536:
            raise ConfigError(f"device '{name}': port {entry['port']} is not a TCP port", file=file,
                              key=f"devices.{name}.port")
        if name == LOCAL and entry.get("host"):
            raise ConfigError("the device name 'local' is reserved for the controller itself; give the remote "
                              "device another name", file=file, key=f"devices.{name}.host")
        if name != LOCAL and not entry.get("host"):
            raise ConfigError(f"device '{name}': 'host' is required (an address or an alias from "
                              "~/.ssh/config)", file=file, key=f"devices.{name}.host")
        kwargs = dict(entry)
        kwargs["tags"] = tuple(str(t) for t in entry.get("tags", ()))
        if name == LOCAL:
            devices[LOCAL] = local_device(**kwargs)
        else:
            devices[name] = DeviceConfig(name=name, **kwargs)
    known_hosts = data.get("known_hosts")
    if known_hosts is not None and not isinstance(known_hosts, str):
        raise ConfigError("'known_hosts' must be a path", file=file, key="known_hosts")
    return Inventory(devices=devices, known_hosts=known_hosts, path=file)


def _check_power(power: Any, device: str, file: str) -> None:
    """A wrong `power:` mapping is an inventory error (exit 2), not a failure of every case at run time."""
    from devices.power import validate_config

    try:
        validate_config(power)
    except ConfigError as exc:
        raise ConfigError(f"device '{device}': power: {exc.detail}", file=file,
                          key=f"devices.{device}.power.{exc.key}") from None


def load_inventory(path: str | None = None) -> Inventory:
    """--inventory / HARNESS_INVENTORY / ./devices.yaml; a missing default file means just `local`."""
    explicit = path or os.environ.get("HARNESS_INVENTORY")
    file = explicit or DEFAULT_INVENTORY
    p = Path(file)
    if not p.exists():
        if explicit:
            raise ConfigError("no such inventory file; create it (see devices.example.yaml) or drop --inventory",
                              file=file)
        return Inventory(devices={LOCAL: local_device()}, path=None)
    import yaml

    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=file,
                          line=mark.line + 1 if mark else None) from None
    return parse_inventory(data, file)
