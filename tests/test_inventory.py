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


@pytest.mark.parametrize("power, key, words", [
    ({"sensor": "rapl", "inclde_dram": True}, "devices.pi.power.inclde_dram", "allowed: include_dram"),
    ({"sensor": "estimate"}, "devices.pi.power.tdp_w", "needs this key"),
    ({"sensor": "ina999"}, "devices.pi.power.sensor", "known: jetson-ina3221"),
    ("rapl", "devices.pi.power", "must be dict"),
])
def test_a_wrong_power_mapping_is_an_inventory_error_naming_device_and_key(power, key, words) -> None:
    with pytest.raises(ConfigError) as info:
        parse_inventory({"devices": {"pi": {"host": "10.0.0.2", "power": power}}}, "devices.yaml")
    assert info.value.key == key and words in str(info.value) and "device 'pi'" in str(info.value)


def test_every_example_power_mapping_validates() -> None:
    repo = Path(__file__).resolve().parent.parent
    inventory = load_inventory(str(repo / "devices.example.yaml"))
    assert all(d.power for name, d in inventory.devices.items() if name != LOCAL)


def test_run_with_a_wrong_power_mapping_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "devices.yaml").write_text("devices:\n  local:\n    power: {sensor: rapl, shunt_ohms: 0.1}\n")
    (tmp_path / "m.yaml").write_text("matrix:\n  seq_len: [32]\n")
    env = dict(os.environ, HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--devices", "local", "--matrix", "m.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "devices.local.power.shunt_ohms" in proc.stderr
    assert not (tmp_path / "harness.db").exists()
