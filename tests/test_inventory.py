"""The device inventory: the shipped example, validation errors that name device and key, `devices list`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devices.inventory import LOCAL, load_inventory, parse_inventory
from workloads.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "devices.example.yaml"


def test_example_inventory_declares_a_pi_a_jetson_and_an_x86_box() -> None:
    inv = load_inventory(str(EXAMPLE))
    assert set(inv.devices) == {LOCAL, "rpi4", "jetson", "nuc"}
    assert inv.devices["rpi4"].power == {"sensor": "ina219", "i2c_bus": 1, "address": 0x40, "shunt_ohms": 0.1}
    assert inv.devices["jetson"].power == {"sensor": "jetson-ina3221"}
    assert "x86" in inv.devices["nuc"].tags and inv.devices["nuc"].user is None  # from ~/.ssh/config
    assert all(not d.is_local for name, d in inv.devices.items() if name != LOCAL)
    assert inv.known_hosts == "~/.ssh/known_hosts"


@pytest.mark.parametrize("entry, key, words", [
    ({"host": "h", "prot": 22}, "devices.pi.prot", ["unknown key 'prot'", "did you mean 'port'"]),
    ({"host": "h", "port": "22"}, "devices.pi.port", ["'port' must be int"]),
    ({"host": "h", "port": 70000}, "devices.pi.port", ["not a TCP port"]),
    ({"user": "pi"}, "devices.pi.host", ["'host' is required"]),
    ({"host": "h", "tags": "arm"}, "devices.pi.tags", ["'tags' must be list"]),
])
def test_invalid_entries_are_errors_naming_the_device_and_the_key(entry: dict, key: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_inventory({"devices": {"pi": entry}}, "devices.yaml")
    assert info.value.key == key and info.value.file == "devices.yaml"
    for word in words:
        assert word in str(info.value)


def test_unknown_device_name_lists_the_known_ones() -> None:
    inv = parse_inventory({"devices": {"rpi4": {"host": "h"}}}, "devices.yaml")
    with pytest.raises(ConfigError, match="did you mean 'rpi4'.*known: local, rpi4"):
        inv.resolve(["rpi"])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(cwd))
    env.pop("HARNESS_INVENTORY", None)
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=120)


def test_devices_list_shows_the_example_and_bad_inventory_exits_2(tmp_path: Path) -> None:
    listed = _cli("devices", "list", "--inventory", str(EXAMPLE), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for word in ("rpi4", "192.168.1.42:22", "jetson.local:22", "nuc", "ina219", "(this machine)"):
        assert word in listed.stdout
    bad = tmp_path / "devices.yaml"
    bad.write_text(yaml.safe_dump({"devices": {"pi": {"host": "h", "pyhton": "/usr/bin/python3"}}}))
    failed = _cli("devices", "list", cwd=tmp_path)  # ./devices.yaml is the default
    assert failed.returncode == 2
    err = " ".join(failed.stderr.split())
    assert "devices.pi.pyhton" in err and "did you mean 'python'" in err
