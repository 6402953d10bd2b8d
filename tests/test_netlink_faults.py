"""Faults on real links: the device is an sshd in its own network namespace, reached over a link that the test
slows, makes lossy, and cuts (tests/netlink.py: tc netem, or a TUN forwarder where the kernel lacks netem).
Devices run the controller's x86 python so the tests stay fast; the network is what is under test.

- A sweep over an 80 ms / 2% loss link (each direction) completes, every case ok.
- A link cut for 20 s mid-sweep, then restored, ends with every case stored exactly once: after the
  transport's own reconnect, or, when the reconnect window is shorter than the cut, after `--resume`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import harness.ssh
from netlink import Link, NetlinkUnavailable
from sshd import SSHServer, TINY_MATRIX, Env, free_port, have_sshd, ssh_env, ssh_lab  # noqa: F401 (fixtures)
from test_ssh_faults import Watch, journal_results

from harness.controller import run_sweep
from results.exchange import export_rows
from workloads.matrix import parse_matrix

pytestmark = pytest.mark.slow

SIX_CASES = TINY_MATRIX.replace("seq_len: [32, 64, 128]", "seq_len: [32, 64, 128]\n  precision: [fp32, bf16]")
CUT_S = 20.0


@pytest.fixture
def linked(ssh_env: Env, tmp_path: Path) -> Iterator[tuple[Link, SSHServer]]:
    """An sshd in a fresh network namespace behind a Link; both torn down after the test."""
    if not have_sshd() or shutil.which("ip") is None:
        pytest.skip("openssh-server and iproute2 are needed (`make test` installs them)")
    try:
        link = Link.create()
    except NetlinkUnavailable as exc:
        pytest.skip(str(exc))
    try:
        server = SSHServer(tmp_path / "sshd-netns", free_port(), ssh_env.lab.client_key.with_suffix(".pub"),
                           address=link.device_ip, netns=link.netns).start()
        yield link, server
    finally:
        link.delete()


def inventory_for(env: Env, server: SSHServer, **overrides: Any):
    import yaml

    from devices.inventory import parse_inventory

    known = env.tmp / "known_hosts"
    known.write_text(server.known_hosts_line() + "\n")
    device = {"host": server.address, "port": server.port, "user": "root", "identity_file": str(env.lab.client_key),
              "python": str(env.lab.python()), "workdir": str(env.tmp / "work-far"), **overrides}
    data = {"known_hosts": str(known), "devices": {"far": device}}
    path = env.tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_inventory(data, str(path))


def test_a_sweep_over_an_80ms_2pct_loss_link_completes(ssh_env: Env, linked: tuple[Link, SSHServer]) -> None:
    link, server = linked
    link.shape(delay_ms=80, loss_pct=2)
    store = ssh_env.store()
    outcome = run_sweep(inventory_for(ssh_env, server), store, devices=["far"], sweep=parse_matrix(SIX_CASES))
    assert outcome.status == "complete", (link.kind, outcome.devices["far"].error)
    rows = export_rows(store, [outcome.run_id])
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    if link.wire is not None:  # the forwarder really dropped packets (netem keeps no such count)
        assert link.wire.dropped > 0 and link.wire.forwarded > 0


@pytest.mark.parametrize("recovery", ["reconnect", "resume"])
def test_a_link_cut_for_20s_mid_sweep_ends_with_every_case_stored_exactly_once(
        ssh_env: Env, linked: tuple[Link, SSHServer], monkeypatch: pytest.MonkeyPatch, recovery: str) -> None:
    link, server = linked
    link.shape(delay_ms=5, loss_pct=0)
    if recovery == "resume":
        monkeypatch.setattr(harness.ssh, "RECONNECT_WINDOW_S", 5.0)  # gives up while the link is still cut
    matrix = SIX_CASES.replace("min_time_s: 0.05", "min_time_s: 0.5")  # the agent is mid-sweep when it is cut
    store = ssh_env.store()
    inventory = inventory_for(ssh_env, server)
    # Reconnect: restored after 20 s, inside the transport's reconnect window. Resume: the window (5 s) runs out
    # while the link is still cut, and the link comes back only after the run has given the device up.
    watch = Watch("far", "result", lambda device, payload: link.cut(CUT_S if recovery == "reconnect" else None))
    t0 = time.monotonic()
    outcome = run_sweep(inventory, store, devices=["far"], sweep=parse_matrix(matrix), events=watch)
    assert watch.fired
    assert time.monotonic() - t0 >= CUT_S  # the cut really held the sweep up (no byte crosses a cut link)
    if recovery == "reconnect":
        assert outcome.status == "complete", (link.kind, outcome.devices["far"].error)
    else:
        assert outcome.devices["far"].status == "unreachable" and "--resume" in (outcome.devices["far"].error or "")
        link.restore()
        resumed = run_sweep(inventory, store, devices=[], resume=outcome.run_id)
        assert resumed.status == "complete", (link.kind, resumed.devices["far"].error)
    rows = export_rows(store, [outcome.run_id])
    assert len(rows) == 6 and len({r["case_hash"] for r in rows}) == 6
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    on_device = journal_results(ssh_env.tmp / "work-far")
    assert len(on_device) == 6 and len({r["case_hash"] for r in on_device}) == 6  # measured once each
    journal = next((ssh_env.tmp / "work-far" / "journal").glob("*.jsonl")).read_text()
    assert journal.count('"type": "hello"') == 1  # one agent: nothing was started twice
