"""Fan-out overhead: N loopback OpenSSH "devices" run the same tiny sweep in parallel.

    python benchmarks/fanout.py [--devices 3] [--runs 2]

Prints, per run, the wall time of `run_sweep` over the slowest device's own time (its agent's start to its
`done`, measured on the device: what the sweep costs there whatever the transport), target under 1.2, and
the transport's cost per case: (wall - slowest device's own time) / cases per device, plus how long a
result took from its `finished_at` on the device to the controller. The first run pays the bundle upload;
later runs find it there. The controller imports its kernel registry (torch) and fabric before
timing starts: one-time costs of the controller process, not of fan-out.

FANOUT_TIMELINE=1 also prints each device's remote calls and agent milestones, relative to the run's start.

Needs openssh-server (sshd) and runs as a user who may start it (the tests' setup, tests/sshd.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

MATRIX = """\
name: fanout
defaults: {batch: 1, heads: 2, head_dim: 16, backend: torch}
matrix:
  precision: [fp32, bf16]
  seq_len: [32, 64, 128]
measure: {warmup_s: 0.02, min_time_s: 0.1, min_samples: 5, max_time_s: 2, timeout_s: 60}
"""


class Recorder:
    """A transport factory that keeps each SSH transport and the records its session yields, with the
    controller's receive time."""

    def __init__(self) -> None:
        self.transports: dict[str, Any] = {}
        self.records: dict[str, list[tuple[float, dict[str, Any]]]] = {}

    def __call__(self, device: Any, inventory: Any) -> Any:
        from harness.ssh import SSHTransport

        transport = SSHTransport(device, inventory)
        self.transports[device.name] = transport
        recorder = self

        class Wrapped:
            def start(self, plan: dict[str, Any]) -> Any:
                session = transport.start(plan)

                class Session:
                    def lines(self, silence: float) -> Any:
                        for record in session.lines(silence):
                            recorder.records.setdefault(device.name, []).append((time.time(), record))
                            yield record

                    def stop(self) -> None:
                        session.stop()
                return Session()
        return Wrapped()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    from sshd import SSHServer, free_port, have_sshd, keygen, make_device_python

    if not have_sshd():
        print("sshd is not installed: apt-get install openssh-server", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fanout-"))
    os.environ["HOME"] = str(tmp)  # nothing from the real ~/.ssh
    os.environ.pop("SSH_AUTH_SOCK", None)
    key = keygen(tmp / "client_ed25519")
    servers = [SSHServer(tmp / f"sshd{i}", free_port(), key.with_suffix(".pub")).start() for i in range(args.devices)]
    try:
        python = make_device_python(tmp / "device-python")
        from devices.inventory import parse_inventory
        from harness.controller import check_registered, run_sweep
        from results.store import Store
        from workloads.matrix import parse_matrix

        known = tmp / "known_hosts"
        known.write_text("".join(s.known_hosts_line() + "\n" for s in servers))
        names = [f"dev{i}" for i in range(args.devices)]
        inventory = parse_inventory({"known_hosts": str(known), "devices": {
            name: {"host": "127.0.0.1", "port": s.port, "user": "root", "identity_file": str(key),
                   "python": str(python), "workdir": str(tmp / f"work-{name}")}
            for name, s in zip(names, servers)}}, str(tmp / "devices.yaml"))
        sweep = parse_matrix(MATRIX)
        check_registered(sweep, "<fanout>")  # the controller's one torch import, outside the timing
        import harness.ssh  # noqa: F401 (and its fabric import)
        store = Store(f"sqlite:///{tmp / 'fanout.db'}")
        cases = len(sweep.cases)
        print(f"{args.devices} loopback devices x {cases} cases ({os.cpu_count()} CPU cores shared by all)")
        for run in range(1, args.runs + 1):
            rec = Recorder()
            t0 = time.time()
            outcome = run_sweep(inventory, store, devices=names, sweep=sweep, transport_factory=rec)
            wall = time.time() - t0
            if outcome.status != "complete":
                print(f"run {run}: {outcome.status}: {[(n, d.error) for n, d in outcome.devices.items()]}")
                return 1
            own: dict[str, float] = {}
            latency: list[float] = []
            for name in names:
                records = rec.records[name]
                hello = next(r for _, r in records if r.get("type") == "hello")
                done = next(r for _, r in records if r.get("type") == "done")
                own[name] = done["at"] - hello["agent_started_at"]
                latency += [got - r["finished_at"] for got, r in records if r.get("type") == "result"]
            slowest = max(own.values())
            setup = {what: statistics.mean(c.duration_s for t in rec.transports.values() for c in t.calls
                                           if c.what.startswith(what)) * 1000
                     for what in ("connect", "upload bundle", "start the agent")
                     if any(c.what.startswith(what) for t in rec.transports.values() for c in t.calls)}
            label = "cold: bundle uploaded" if "upload bundle" in setup else "warm: bundle already there"
            print(f"run {run} ({label})")
            print(f"  wall {wall:.2f} s; slowest device's own time {slowest:.2f} s "
                  f"(devices {min(own.values()):.2f}-{slowest:.2f} s); wall / slowest = {wall / slowest:.3f} "
                  f"(target < 1.2)")
            print(f"  transport overhead per case: {(wall - slowest) / cases * 1000:.0f} ms "
                  f"((wall - slowest) / {cases} cases); result delivery device -> controller: "
                  f"median {statistics.median(latency) * 1000:.0f} ms, max {max(latency) * 1000:.0f} ms")
            print("  per device setup (mean ms): " + ", ".join(f"{k} {v:.0f}" for k, v in setup.items()))
            if os.environ.get("FANOUT_TIMELINE"):
                for name in names:
                    marks = [(c.started_at - t0, c.started_at + c.duration_s - t0, c.what[:30])
                             for c in rec.transports[name].calls]
                    records = rec.records[name]
                    hello = next(r for _, r in records if r.get("type") == "hello")
                    done = next((got, r) for got, r in records if r.get("type") == "done")
                    print(f"  {name}: " + "; ".join(f"{w} {a:.2f}-{b:.2f}" for a, b, w in marks) +
                          f"; agent up {hello['agent_started_at'] - t0:.2f} hello {hello['at'] - t0:.2f} "
                          f"done {done[1]['at'] - t0:.2f} received {done[0] - t0:.2f}")
    finally:
        for server in servers:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
