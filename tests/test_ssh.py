"""Sweeps over real OpenSSH servers on 127.0.0.1: results, fingerprints, bundle, trust, probe, quoting.

Two sshd processes act as devices 'pi' and 'jetson' (tests/sshd.py); each test gets its own HOME,
known_hosts, inventory, device workdirs and SQLite file. Sweeps are tiny (seq_len 32-128).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from sshd import REPO, TINY_MATRIX, Env, keygen, ssh_env, ssh_lab  # noqa: F401 (fixtures)

from harness.bundle import build_bundle
from harness.controller import run_sweep
from harness.ssh import SSHTransport, probe_remote
from results.exchange import export_rows
from results.models import Device, RunDevice
from workloads.matrix import parse_matrix

pytestmark = pytest.mark.slow


def fingerprints(store: Any, run_id: str) -> dict[str, dict[str, Any] | None]:
    with store.Session() as s:
        rows = s.execute(select(Device.name, RunDevice.fingerprint).join(RunDevice, RunDevice.device_id == Device.id)
                         .where(RunDevice.run_id == run_id))
        return {name: fp for name, fp in rows}


def by_device(store: Any, run_id: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in export_rows(store, [run_id]):
        out.setdefault(row["device"], []).append(row)
    return out


def recording_factory(made: list[SSHTransport]):
    def factory(device, inventory):
        t = SSHTransport(device, inventory)
        made.append(t)
        return t
    return factory


def harness_cli(env: Env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, HOME=str(env.home))
    environ.pop("SSH_AUTH_SOCK", None)
    proc = subprocess.run([sys.executable, "-m", "harness", *args], cwd=env.tmp, env=environ, text=True,
                          capture_output=True, input=stdin if stdin is not None else "", timeout=300)
    # rich wraps long lines: compare words, not line breaks
    proc.stdout = " ".join(proc.stdout.split()) if not args[-1].startswith("sqlite") or args[0] != "results" else proc.stdout
    return proc


def test_sweep_over_ssh_stores_rows_and_fingerprints_for_both_devices(ssh_env: Env) -> None:
    store = ssh_env.store()
    made: list[SSHTransport] = []
    outcome = run_sweep(ssh_env.inventory(), store, devices=["pi", "jetson"], sweep=parse_matrix(TINY_MATRIX),
                        transport_factory=recording_factory(made))
    assert outcome.status == "complete", {n: d.error for n, d in outcome.devices.items()}
    rows = by_device(store, outcome.run_id)
    for name in ("pi", "jetson"):
        assert sorted(r["seq_len"] for r in rows[name]) == [32, 64, 128]
        assert all(r["status"] == "ok" and r["latency_ms_p50"] > 0 for r in rows[name])
    fps = fingerprints(store, outcome.run_id)
    for name in ("pi", "jetson"):
        fp = fps[name]
        assert fp is not None and fp["torch"] and fp["arch"]
        # The device's own python ran the agent, with the shipped bundle, not this checkout.
        assert fp["python"] == str(ssh_env.lab.python())
    digest = build_bundle().digest
    bundle_dir = ssh_env.tmp / "work-pi" / "bundles" / digest
    shipped = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert "harness/agent.py" in shipped and "kernels/registry.py" in shipped
    assert not any(p.startswith(("results/", "dashboard/")) or p == "harness/cli.py" for p in shipped)
    # Every remote call is recorded with what it was for, its duration and exit code.
    calls = [c for t in made for c in t.calls]
    whats = {c.what for c in calls}
    assert "connect" in whats and any(w.startswith("upload bundle") for w in whats)
    assert any(w.startswith("start the agent") for w in whats)
    assert all(c.duration_s >= 0 for c in calls)


def test_unchanged_bundle_is_not_sent_again(ssh_env: Env) -> None:
    inventory = ssh_env.inventory({"pi": ssh_env.device("pi")})
    sweep = parse_matrix(TINY_MATRIX.replace("[32, 64, 128]", "[32]"))
    uploads = []
    for _ in range(2):
        made: list[SSHTransport] = []
        outcome = run_sweep(inventory, ssh_env.store(), devices=["pi"], sweep=sweep,
                            transport_factory=recording_factory(made))
        assert outcome.status == "complete"
        uploads.append(sum(c.what.startswith("upload bundle") for t in made for c in t.calls))
    assert uploads == [1, 0]


def test_unknown_host_key_is_refused_with_fingerprint_and_nothing_runs(ssh_env: Env) -> None:
    store = ssh_env.store()
    outcome = run_sweep(ssh_env.inventory(trusted=("pi",)), store, devices=["pi", "jetson"],
                        sweep=parse_matrix(TINY_MATRIX))
    jetson = outcome.devices["jetson"]
    assert jetson.status == "unreachable"
    assert ssh_env.lab.servers["jetson"].fingerprint in (jetson.error or "")
    assert "harness devices trust jetson" in (jetson.error or "")
    assert outcome.devices["pi"].status == "complete"
    assert outcome.status == "partial" and outcome.exit_code == 1
    assert "jetson" not in by_device(store, outcome.run_id)
    assert not (ssh_env.tmp / "work-jetson").exists()  # not even the bundle went there


def test_changed_host_key_is_refused(ssh_env: Env) -> None:
    inventory = ssh_env.inventory({"jetson": ssh_env.device("jetson")}, trusted=())
    other = keygen(ssh_env.tmp / "impostor")
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    Path(str(ssh_env.tmp / "known_hosts")).write_text(f"[127.0.0.1]:{ssh_env.lab.servers['jetson'].port} {kind} {b64}\n")
    outcome = run_sweep(inventory, ssh_env.store(), devices=["jetson"], sweep=parse_matrix(TINY_MATRIX))
    error = outcome.devices["jetson"].error or ""
    assert outcome.devices["jetson"].status == "unreachable"
    assert "CHANGED" in error and ssh_env.lab.servers["jetson"].fingerprint in error
    assert not (ssh_env.tmp / "work-jetson").exists()


def test_trust_shows_fingerprint_and_pins_it_then_check_probes_the_device(ssh_env: Env) -> None:
    ssh_env.inventory({"jetson": ssh_env.device("jetson"), "down": ssh_env.device("pi", port=1)}, trusted=())
    known = ssh_env.tmp / "known_hosts"
    fp = ssh_env.lab.servers["jetson"].fingerprint
    refused = harness_cli(ssh_env, "devices", "check", "jetson", "--inventory", "inventory.yaml")
    assert refused.returncode == 1 and fp in refused.stdout and "devices trust jetson" in refused.stdout
    # Without a terminal and without --yes nothing is pinned.
    asked = harness_cli(ssh_env, "devices", "trust", "jetson", "--inventory", "inventory.yaml")
    assert asked.returncode == 2 and fp in asked.stdout and known.read_text() == ""
    pinned = harness_cli(ssh_env, "devices", "trust", "jetson", "--yes", "--inventory", "inventory.yaml")
    assert pinned.returncode == 0, pinned.stderr
    assert fp in pinned.stdout
    assert known.read_text().strip() == ssh_env.lab.servers["jetson"].known_hosts_line()
    again = harness_cli(ssh_env, "devices", "trust", "jetson", "--yes", "--inventory", "inventory.yaml")
    assert again.returncode == 0 and "already pinned" in again.stdout
    assert known.read_text().strip() == ssh_env.lab.servers["jetson"].known_hosts_line()
    check = harness_cli(ssh_env, "devices", "check", "jetson", "--inventory", "inventory.yaml")
    assert check.returncode == 0, check.stdout + check.stderr
    for field in ("arch", "torch", "governor", "disk free", "connection", "round trip", fp):
        assert field in check.stdout
    down = harness_cli(ssh_env, "devices", "check", "down", "--inventory", "inventory.yaml")
    assert down.returncode == 1 and "unreachable" in down.stdout


def test_ssh_config_alias_and_ssh_agent_are_used(ssh_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ssh_env.lab.servers["pi"]
    (ssh_env.home / ".ssh" / "config").write_text(
        f"Host board\n  HostName 127.0.0.1\n  Port {server.port}\n  User root\n")
    sock = ssh_env.tmp / "agent.sock"
    out = subprocess.run(["ssh-agent", "-a", str(sock)], check=True, capture_output=True, text=True).stdout
    agent_pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        subprocess.run(["ssh-add", "-q", str(ssh_env.lab.client_key)], check=True, capture_output=True,
                       env=dict(os.environ, SSH_AUTH_SOCK=str(sock)))
        # No port, user or key in the inventory: all from ~/.ssh/config and the agent.
        inventory = ssh_env.inventory({"board": {"host": "board", "python": str(ssh_env.lab.python()),
                                                 "workdir": str(ssh_env.tmp / "work-board")}}, trusted=("pi",))
        t = SSHTransport(inventory.devices["board"], inventory)
        assert (t.host, t.port, t.user) == ("127.0.0.1", server.port, "root")
        t.connect()
        assert t.run("echo connected", what="echo").stdout.strip() == "connected"
        t.close()
    finally:
        os.kill(agent_pid, 15)


def test_device_without_onnxruntime_skips_those_cases_with_the_reason(ssh_env: Env) -> None:
    from kernels.registry import all_kernels

    if not any(k.backend == "onnxruntime" and k.variant == "dense" and k.precision == "fp32"
               for k in all_kernels()):
        pytest.skip("no dense/fp32 onnxruntime kernel is registered yet")
    no_ort = ssh_env.lab.python("onnxruntime")
    store = ssh_env.store()
    sweep = parse_matrix(TINY_MATRIX.replace("seq_len: [32, 64, 128]",
                                             "seq_len: [32]\n  backend: [torch, onnxruntime]"))
    inventory = ssh_env.inventory({"pi": ssh_env.device("pi", python=str(no_ort)), "jetson": ssh_env.device("jetson")})
    outcome = run_sweep(inventory, store, devices=["pi", "jetson"], sweep=sweep)
    assert outcome.status == "complete"
    rows = {(r["device"], r["backend"]): r for r in export_rows(store, [outcome.run_id])}
    assert rows[("pi", "torch")]["status"] == "ok"
    assert rows[("pi", "onnxruntime")]["status"] == "skipped"
    assert "onnxruntime is not installed" in rows[("pi", "onnxruntime")]["error"]
    assert rows[("jetson", "onnxruntime")]["status"] == "ok"


def test_device_without_torch_or_memory_skips_cases_with_the_reason(ssh_env: Env) -> None:
    no_torch = ssh_env.lab.python("torch")
    store = ssh_env.store()
    sweep = parse_matrix(TINY_MATRIX.replace("[32, 64, 128]", "[32, 65536]"))
    inventory = ssh_env.inventory({"pi": ssh_env.device("pi", python=str(no_torch)), "jetson": ssh_env.device("jetson")})
    outcome = run_sweep(inventory, store, devices=["pi", "jetson"], sweep=sweep)
    assert outcome.status == "complete" and outcome.exit_code == 0
    rows = {(r["device"], r["seq_len"]): r for r in export_rows(store, [outcome.run_id])}
    for seq_len in (32, 65536):
        assert rows[("pi", seq_len)]["status"] == "skipped"
        assert "torch is not installed in the device's python" in rows[("pi", seq_len)]["error"]
    assert rows[("jetson", 32)]["status"] == "ok"
    # 8 heads x 65536^2 float64 scores cannot fit anywhere here: skipped before a worker starts.
    assert rows[("jetson", 65536)]["status"] == "skipped"
    assert "needs an estimated" in rows[("jetson", 65536)]["error"]


def test_shell_metacharacters_in_names_paths_and_values_run_nothing_extra(ssh_env: Env) -> None:
    token = uuid.uuid4().hex[:8]
    pwned = [Path(f"/tmp/pwned-{token}-{i}") for i in range(3)]
    marker = f"PWNED-{token}"  # relative: would land in the remote shell's cwd (home, bundle, journal dir)
    evil_name = f"pi; touch {pwned[0]}"
    evil_dir = ssh_env.tmp / f"py $(touch {marker}-a) `touch {marker}-b`;touch {marker}-c"
    evil_dir.mkdir()
    wrapper = evil_dir / "python"  # a venv's python must be started by its own path: wrap it
    wrapper.write_text(f'#!/bin/sh\nexec "{ssh_env.lab.python()}" "$@"\n')
    wrapper.chmod(0o755)
    # A device name with shell syntax never gets that far: names are letters, digits, '.', '_' and '-'.
    from workloads.errors import ConfigError

    with pytest.raises(ConfigError, match="device name .* is not allowed"):
        ssh_env.inventory({evil_name: ssh_env.device("pi")})
    inventory = ssh_env.inventory({"pi": ssh_env.device(
        "pi", python=str(evil_dir / "python"), workdir=str(ssh_env.tmp / f"w $(touch {marker}-d) x"))})
    sweep = parse_matrix(TINY_MATRIX.replace("[32, 64, 128]", "[32]").replace("name: tiny",
                                                                              f"name: 'x; touch {pwned[1]}'"))
    store = ssh_env.store()
    outcome = run_sweep(inventory, store, devices=["pi"], sweep=sweep)
    assert outcome.status == "complete", outcome.devices["pi"].error
    assert [r["status"] for r in export_rows(store, [outcome.run_id])] == ["ok"]
    assert (ssh_env.tmp / f"w $(touch {marker}-d) x" / "bundles").is_dir()  # the literal path was used
    # A case value with shell syntax never gets that far: it is not a valid value.
    with pytest.raises(ConfigError, match="variant"):
        parse_matrix(TINY_MATRIX.replace("backend: torch}", f"backend: torch, variant: 'dense; touch {pwned[2]}'}}"))
    assert not any(p.exists() for p in pwned)
    places = [Path("/root"), Path("/tmp"), Path.home(), *ssh_env.tmp.rglob("*")]
    assert not [p for place in places if place.is_dir() for p in place.glob(f"{marker}*")]


def test_probe_remote_reports_latency_and_the_device_python(ssh_env: Env) -> None:
    inventory = ssh_env.inventory({"pi": ssh_env.device("pi")})
    summary = probe_remote(inventory.devices["pi"], inventory)
    assert str(ssh_env.lab.python()) in summary["python"]
    assert "round trip" in summary["connection"] and summary["torch"] != "not installed"


def test_cli_run_over_ssh_prints_summary_and_exits_zero(ssh_env: Env) -> None:
    ssh_env.inventory()
    (ssh_env.tmp / "tiny.yaml").write_text(TINY_MATRIX.replace("[32, 64, 128]", "[32]"))
    proc = harness_cli(ssh_env, "run", "--devices", "pi,jetson", "--matrix", "tiny.yaml", "--db", ssh_env.db_url,
                       "--inventory", "inventory.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": complete; 2 ok" in proc.stdout
    exported = harness_cli(ssh_env, "results", "export", "--all", "--format", "json", "--db", ssh_env.db_url)
    rows = json.loads(exported.stdout)
    assert sorted(r["device"] for r in rows) == ["jetson", "pi"]
    text = exported.stdout + proc.stdout
    assert "client_ed25519" not in text and "BEGIN OPENSSH" not in text  # no key material or key paths
