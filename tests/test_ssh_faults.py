"""Faults against real OpenSSH servers: a device down, sshd killed mid-sweep (then --resume), a dropped
connection, the agent killed mid-case, a hanging case, a silent agent. One device failing never stops the
other; nothing that finished on a device is lost."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import harness.controller
import harness.ssh
from sshd import TINY_MATRIX, Env, _descendants, ssh_env, ssh_lab  # noqa: F401 (fixtures)

from harness.controller import run_sweep
from results.exchange import export_rows
from workloads.matrix import parse_matrix

pytestmark = pytest.mark.slow

SIX_CASES = TINY_MATRIX.replace("seq_len: [32, 64, 128]", "seq_len: [32, 64, 128]\n  precision: [fp32, bf16]")


class Watch:
    """An events callback that runs `action(device, payload)` once, on the first matching event."""

    def __init__(self, device: str, kind: str, action: Any, index: int | None = None) -> None:
        self.device, self.kind, self.action, self.index = device, kind, action, index
        self.fired = False
        self.agent_pid: int | None = None
        self.results: list[dict[str, Any]] = []

    def __call__(self, device: str, kind: str, payload: Any) -> None:
        if device != self.device:
            return
        if kind == "hello":
            self.agent_pid = payload.get("agent_pid")
        if kind == "result":
            self.results.append(dict(payload))
        if self.fired or kind != self.kind or (self.index is not None and payload.get("index") != self.index):
            return
        self.fired = True
        self.action(device, payload)


def journal_results(workdir: Path) -> list[dict[str, Any]]:
    out = []
    for path in (workdir / "journal").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("type") == "result":
                out.append(record)
    return out


def wait_until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def quick_giveup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up a lost device after 1 s instead of a minute."""
    monkeypatch.setattr(harness.ssh, "RECONNECT_WINDOW_S", 1.0)


def test_device_down_before_the_run_other_device_finishes_and_run_is_partial(ssh_env: Env) -> None:
    free_port = ssh_env.lab.servers["jetson"].port + 1000  # nothing listens there
    inventory = ssh_env.inventory({"pi": ssh_env.device("pi"), "down": ssh_env.device("jetson", port=free_port)})
    store = ssh_env.store()
    outcome = run_sweep(inventory, store, devices=["pi", "down"], sweep=parse_matrix(TINY_MATRIX))
    assert outcome.devices["down"].status == "unreachable"
    assert "cannot connect" in (outcome.devices["down"].error or "")
    assert outcome.devices["pi"].status == "complete"
    assert outcome.status == "partial" and outcome.exit_code == 1
    assert sorted(r["device"] for r in export_rows(store, [outcome.run_id])) == ["pi"] * 3


@pytest.mark.parametrize("agent_state", ["finished", "still running"])
def test_sshd_killed_mid_sweep_other_finishes_then_resume_collects_exactly_the_missing_cases(
        ssh_env: Env, quick_giveup: None, agent_state: str) -> None:
    server = ssh_env.lab.servers["jetson"]
    store = ssh_env.store()
    sweep = parse_matrix(SIX_CASES)
    def cut(device: str, payload: Any) -> None:
        if agent_state == "still running":
            os.kill(watch.agent_pid, signal.SIGSTOP)  # held until the resume, so it is surely still running
        server.kill()
    watch = Watch("jetson", "result", cut)
    outcome = run_sweep(ssh_env.inventory(), store, devices=["pi", "jetson"], sweep=sweep, events=watch)
    assert watch.fired
    assert outcome.devices["pi"].status == "complete" and outcome.devices["jetson"].status == "unreachable"
    assert "--resume" in (outcome.devices["jetson"].error or "")
    assert outcome.status == "partial"
    stored_before = store.stored_hashes(outcome.run_id, "jetson")
    assert 1 <= len(stored_before) < 6
    # The detached agent went on without its connection; resume after it finished, or while it runs
    # (then the resumed session follows it rather than starting another).
    assert watch.agent_pid
    if agent_state == "finished":
        wait_until(lambda: pid_gone(watch.agent_pid), timeout=120)
    else:
        assert not pid_gone(watch.agent_pid)
        os.kill(watch.agent_pid, signal.SIGCONT)
    server.start()
    resumed = run_sweep(ssh_env.inventory(), store, devices=[], resume=outcome.run_id)
    assert resumed.status == "complete", resumed.devices["jetson"].error
    assert resumed.devices["pi"].planned == 0
    assert resumed.devices["jetson"].planned == 6 - len(stored_before)
    rows = [r for r in export_rows(store, [outcome.run_id]) if r["device"] == "jetson"]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    # Collected from the journal, not measured again: one result per case on the device.
    on_device = journal_results(ssh_env.tmp / "work-jetson")
    assert len(on_device) == 6 and len({r["case_hash"] for r in on_device}) == 6
    journal = next((ssh_env.tmp / "work-jetson" / "journal").glob("*.jsonl")).read_text()
    assert journal.count('"type": "hello"') == 1  # the resume started no second agent


def test_board_lost_with_its_agent_resume_runs_only_the_missing_cases(ssh_env: Env, quick_giveup: None) -> None:
    server = ssh_env.lab.servers["jetson"]
    store = ssh_env.store()
    sweep = parse_matrix(SIX_CASES)

    def power_cut(device: str, payload: Any) -> None:
        server.kill()  # the board went down with its agent mid-sweep
        os.kill(watch.agent_pid, signal.SIGKILL)
    watch = Watch("jetson", "result", power_cut)
    outcome = run_sweep(ssh_env.inventory(), store, devices=["pi", "jetson"], sweep=sweep, events=watch)
    assert outcome.status == "partial" and outcome.devices["jetson"].status == "unreachable"
    before = store.stored_hashes(outcome.run_id, "jetson")
    journaled_before = {r["case_hash"] for r in journal_results(ssh_env.tmp / "work-jetson")}
    assert before <= journaled_before and len(journaled_before) < 6
    server.start()
    resumed = run_sweep(ssh_env.inventory(), store, devices=["jetson"], resume=outcome.run_id)
    assert resumed.status == "complete", resumed.devices["jetson"].error
    rows = [r for r in export_rows(store, [outcome.run_id]) if r["device"] == "jetson"]
    # The case the agent died in was not seen dying by any session: it simply runs again.
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    on_device = journal_results(ssh_env.tmp / "work-jetson")
    assert len(on_device) == 6 and len({r["case_hash"] for r in on_device}) == 6


def test_dropped_connection_mid_sweep_reconnects_and_loses_nothing(ssh_env: Env) -> None:
    server = ssh_env.lab.servers["pi"]
    store = ssh_env.store()

    def drop_sessions(device: str, payload: Any) -> None:
        for pid in _descendants(server.pid):  # sessions die, the listener stays: a network blip
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    watch = Watch("pi", "result", drop_sessions)
    outcome = run_sweep(ssh_env.inventory({"pi": ssh_env.device("pi")}), store, devices=["pi"],
                        sweep=parse_matrix(SIX_CASES), events=watch)
    assert watch.fired
    assert outcome.status == "complete", outcome.devices["pi"].error
    rows = export_rows(store, [outcome.run_id])
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)


def test_agent_killed_mid_case_records_that_case_failed_and_the_rest_run(ssh_env: Env) -> None:
    store = ssh_env.store()
    watch = Watch("pi", "start", lambda device, payload: os.kill(watch.agent_pid, signal.SIGKILL), index=1)
    outcome = run_sweep(ssh_env.inventory({"pi": ssh_env.device("pi")}), store, devices=["pi"],
                        sweep=parse_matrix(SIX_CASES), events=watch)
    assert watch.fired
    assert outcome.devices["pi"].status == "complete"
    rows = sorted(export_rows(store, [outcome.run_id]), key=lambda r: (r["precision"], r["seq_len"]))
    statuses = [r["status"] for r in rows]
    assert len(rows) == 6 and statuses.count("failed") == 1 and statuses.count("ok") == 5
    failed = next(r for r in rows if r["status"] == "failed")
    assert "died while running this case" in failed["error"]
    assert outcome.exit_code == 1


def test_hanging_case_times_out_is_recorded_and_the_sweep_goes_on(ssh_env: Env) -> None:
    matrix = TINY_MATRIX.replace("timeout_s: 30", "timeout_s: 3").replace(
        "seq_len: [32, 64, 128]", "seq_len: [32, 64]\ninclude:\n  - {seq_len: 64, slowdown: 1000000}")
    store = ssh_env.store()
    outcome = run_sweep(ssh_env.inventory(), store, devices=["pi", "jetson"], sweep=parse_matrix(matrix))
    assert outcome.status == "complete"
    rows = {(r["device"], r["seq_len"]): r for r in export_rows(store, [outcome.run_id])}
    for device in ("pi", "jetson"):
        assert rows[(device, 32)]["status"] == "ok"
        assert rows[(device, 64)]["status"] == "timeout"
        assert "timeout_s = 3" in rows[(device, 64)]["error"]


def test_silent_agent_is_cut_off_after_case_timeout_plus_grace(ssh_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.controller, "AGENT_SILENCE_GRACE_S", 2.0)
    matrix = SIX_CASES.replace("timeout_s: 30", "timeout_s: 3")
    store = ssh_env.store()
    stopped: list[int] = []

    def freeze(device: str, payload: Any) -> None:
        os.kill(watch.agent_pid, signal.SIGSTOP)  # alive but making no progress
        stopped.append(watch.agent_pid)
    watch = Watch("pi", "start", freeze, index=1)
    t0 = time.monotonic()
    try:
        outcome = run_sweep(ssh_env.inventory({"pi": ssh_env.device("pi")}), store, devices=["pi"],
                            sweep=parse_matrix(matrix), events=watch)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert outcome.devices["pi"].status == "complete", outcome.devices["pi"].error
    rows = export_rows(store, [outcome.run_id])
    timed_out = [r for r in rows if r["status"] == "timeout"]
    assert len(rows) == 6 and len(timed_out) == 1 and sum(r["status"] == "ok" for r in rows) == 5
    assert "wrote nothing for" in timed_out[0]["error"]
    assert pid_gone(stopped[0])  # the frozen agent was killed, not left behind
    assert time.monotonic() - t0 < 120
