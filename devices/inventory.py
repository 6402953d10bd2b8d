"""The device inventory (`devices.yaml`): which devices exist and how to reach them.

The device `local` always exists: the controller itself, reached without SSH. An entry named `local` with no
`host` configures it (its power sensor, say). Unknown keys and wrong types are errors naming the device
and the key.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from workloads.errors import ConfigError
from workloads.spec import suggest
from workloads.yamlload import YAML_MAX_BYTES, Located, load_yaml, read_text

DEFAULT_INVENTORY = "devices.yaml"
DEFAULT_WORKDIR = "~/.cache/attn-harness"
LOCAL = "local"

DEVICE_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str, "port": int, "user": str, "identity_file": str, "python": str, "workdir": str,
    "power": dict, "tags": list, "connect_timeout_s": (int, float), "description": str,
}
TOP_KEYS = ("known_hosts", "devices")
# Device names end up in file names (journals), `--devices a,b` lists and terminal tables.
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEVICE_NAME_HELP = "letters, digits, '.', '_' and '-' (not first), at most 64 characters"
MAX_TAGS = 64
MAX_TEXT = 1024
# Keys whose value is a host name, a user or a path handed to SSH or the device's shell.
_TRANSPORT_KEYS = ("host", "user", "identity_file", "python", "workdir")


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


def parse_inventory(data: Any, file: str, located: Located | None = None) -> Inventory:
    """Validate an inventory document (already parsed YAML); `located` gives lines for the messages."""
    where = located or Located()

    def err(message: str, *path: Any, key: str | None = None) -> ConfigError:
        return ConfigError(message, file=file, line=where.line(*path), key=key)

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping with 'devices:'", file=file, line=1)
    for key in data:
        if key not in TOP_KEYS:
            raise err(f"unknown top-level key{suggest(str(key), TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}",
                      key, key=str(key))
    raw_devices = data.get("devices") or {}
    if not isinstance(raw_devices, dict):
        raise err("'devices' must be a mapping of name to settings", "devices", key="devices")
    devices: dict[str, DeviceConfig] = {LOCAL: local_device()}
    for raw_name, entry in raw_devices.items():
        name = str(raw_name)
        at = ("devices", raw_name)
        if not isinstance(raw_name, str) or not DEVICE_NAME.fullmatch(name):
            raise err(f"device name {name!r} is not allowed: use {DEVICE_NAME_HELP}", *at, key=f"devices.{name}")
        entry = entry or {}
        if not isinstance(entry, dict):
            raise err(f"device '{name}' must be a mapping of settings", *at, key=name)
        for key, value in entry.items():
            if key not in DEVICE_KEYS:
                raise err(f"device '{name}': unknown key '{key}'{suggest(str(key), list(DEVICE_KEYS))}; "
                          f"allowed: {', '.join(DEVICE_KEYS)}", *at, key, key=f"devices.{name}.{key}")
            expected = DEVICE_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, expected):
                names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
                raise err(f"device '{name}': '{key}' must be {names}, got {value!r}", *at, key,
                          key=f"devices.{name}.{key}")
            problem = _value_problem(key, value)
            if problem:
                raise err(f"device '{name}': '{key}' {problem}", *at, key, key=f"devices.{name}.{key}")
        if "power" in entry:
            _check_power(entry["power"], name, file, where.line(*at, "power"))
        if "port" in entry and not 0 < entry["port"] < 65536:
            raise err(f"device '{name}': port {entry['port']} is not a TCP port", *at, "port",
                      key=f"devices.{name}.port")
        if name == LOCAL and "host" in entry:
            raise err("the device name 'local' is reserved for the controller itself (it takes no host); give "
                      "the remote device another name", *at, "host", key=f"devices.{name}.host")
        if name != LOCAL and not entry.get("host"):
            raise err(f"device '{name}': 'host' is required (an address or an alias from ~/.ssh/config)", *at,
                      key=f"devices.{name}.host")
        kwargs = dict(entry)
        kwargs["tags"] = tuple(str(t) for t in entry.get("tags", ()))
        if name == LOCAL:
            devices[LOCAL] = local_device(**kwargs)
        else:
            devices[name] = DeviceConfig(name=name, **kwargs)
    known_hosts = data.get("known_hosts")
    if known_hosts is not None and (not isinstance(known_hosts, str) or _value_problem("known_hosts", known_hosts)):
        raise err("'known_hosts' must be a path", "known_hosts", key="known_hosts")
    return Inventory(devices=devices, known_hosts=known_hosts, path=file)


def _value_problem(key: str, value: Any) -> str | None:
    """What is wrong with a well-typed device value, or None."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            return f"is longer than {MAX_TEXT} characters"
        if not value.isprintable():
            return "holds control characters"
        if key in _TRANSPORT_KEYS or key == "known_hosts":
            if not value.strip():
                return "is empty"
            if value.startswith("-"):
                return "must not start with '-' (it would read as an option)"
            if key in ("host", "user") and any(c.isspace() for c in value):
                return "must not contain spaces"
    if key == "connect_timeout_s" and not (math.isfinite(value) and 0 < value <= 3600):
        return f"must be a number of seconds in (0, 3600], got {value!r}"
    if key == "tags":
        if len(value) > MAX_TAGS:
            return f"has {len(value)} entries; at most {MAX_TAGS}"
        for tag in value:
            if isinstance(tag, bool) or not isinstance(tag, (str, int)) or not str(tag) or len(str(tag)) > 100 \
                    or not str(tag).isprintable():
                return f"entries must be short printable words, got {tag!r}"
    return None


def _check_power(power: Any, device: str, file: str, line: int | None = None) -> None:
    """A wrong `power:` mapping is an inventory error (exit 2), not a failure of every case at run time."""
    from devices.power import validate_config

    try:
        validate_config(power)
    except ConfigError as exc:
        raise ConfigError(f"device '{device}': power: {exc.detail}", file=file, line=line,
                          key=f"devices.{device}.power.{exc.key}") from None


def load_inventory(path: str | None = None) -> Inventory:
    """--inventory / HARNESS_INVENTORY / ./devices.yaml; a missing default file means just `local`."""
    explicit = path or os.environ.get("HARNESS_INVENTORY")
    file = explicit or DEFAULT_INVENTORY
    p = Path(file)
    if not os.path.lexists(p):
        if explicit:
            raise ConfigError("no such inventory file; create it (see devices.example.yaml) or drop --inventory",
                              file=file)
        return Inventory(devices={LOCAL: local_device()}, path=None)
    text = read_text(file, max_bytes=YAML_MAX_BYTES, what="device inventory")
    data, located = load_yaml(text, file)
    return parse_inventory(data, file, located)


def inventory_schema() -> dict[str, Any]:
    """The JSON Schema of the inventory format, from the definitions `parse_inventory` checks against
    (published as schemas/inventory.schema.json for editors; a test keeps the two in agreement)."""
    from devices.power import SENSORS, _MODULES

    json_type = {str: "string", int: "integer", dict: "object", list: "array"}
    text = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": "^[^-\\s]"}
    props: dict[str, Any] = {}
    for key, expected in DEVICE_KEYS.items():
        types = expected if isinstance(expected, tuple) else (expected,)
        schema: dict[str, Any] = {"type": "number" if float in types else json_type[types[0]]}
        if key in ("host", "user"):
            schema = dict(text, pattern="^[^-\\s][^\\s]*$")
        elif key in _TRANSPORT_KEYS:
            schema = dict(text)
        elif key == "port":
            schema.update(minimum=1, maximum=65535)
        elif key == "connect_timeout_s":
            schema.update(exclusiveMinimum=0, maximum=3600)
        elif key == "tags":
            schema.update(maxItems=MAX_TAGS, items={"type": ["string", "integer"], "minLength": 1, "maxLength": 100})
        elif key == "description":
            schema.update(maxLength=MAX_TEXT)
        props[key] = schema
    branches = []
    for sensor in SENSORS:
        module = _MODULES.get(sensor)
        keys = sorted(set(getattr(module, "CONFIG_KEYS", ())) | {"sensor", "root"}) if module else ["sensor", "root"]
        branches.append({"if": {"properties": {"sensor": {"const": sensor}}},
                         "then": {"propertyNames": {"enum": keys},
                                  "required": ["sensor", *getattr(module, "REQUIRED_KEYS", ())]}})
    props["power"] = {"type": "object", "required": ["sensor"], "properties": {"sensor": {"enum": list(SENSORS)}},
                      "allOf": branches}
    device = {"type": ["object", "null"], "additionalProperties": False, "properties": props}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/attn-harness/attn-harness/schemas/inventory.schema.json",
        "title": "attn-harness device inventory (devices.yaml)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "known_hosts": dict(text),
            "devices": {
                "type": ["object", "null"],
                "propertyNames": {"pattern": "^" + DEVICE_NAME.pattern + "$"},
                "properties": {LOCAL: {"type": ["object", "null"], "additionalProperties": False,
                                       "properties": {k: v for k, v in props.items() if k != "host"}}},
                "additionalProperties": dict(device, required=["host"]),
            },
        },
    }
