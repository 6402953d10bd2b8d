"""The `harness` command: parses flags, calls the keyword API, formats what comes back.

`HarnessError` is caught once, in `main()`: its message is printed and the exit code is 2. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workloads.errors import HarnessError

# Piped output (CI logs, `| less`) gets a wide table rather than rich's 80-column default.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)

db_option = click.option("--db", "db", default=None, metavar="URL",
                         help="Results database URL (env HARNESS_DB; default sqlite:///harness.db).")
inventory_option = click.option("--inventory", "inventory", default=None, metavar="FILE",
                                help="Device inventory (env HARNESS_INVENTORY; default devices.yaml).")


def _wait_timeout(ctx: Any, param: Any, value: str) -> float | None:
    """Seconds to wait for a device another run holds: a number >= 0 (0: do not wait), or 'none' (no limit)."""
    import math

    if value.strip().lower() in ("none", "inf", "forever"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of seconds (or 'none' for no limit)") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise click.BadParameter(f"{value!r}: give seconds >= 0 (0: do not wait), or 'none' for no limit")
    return seconds


wait_timeout_option = click.option(
    "--wait-timeout", "wait_timeout", default="3600", show_default=True, metavar="SECONDS", callback=_wait_timeout,
    help="How long to wait for a device another run is measuring on (0: do not wait; 'none': no limit). A device "
         "still busy after that ends 'busy' and the run can be resumed.")


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:.2e}"
    return str(x)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attn-harness")
def cli() -> None:
    """Benchmark quantized attention kernels on edge devices and keep the results."""


# -- run -------------------------------------------------------------------------------------------------
@cli.command()
@click.option("--devices", "devices_opt", default="", help="Comma-separated device names (local always exists).")
@click.option("--matrix", "matrix", default=None, metavar="FILE", help="Sweep matrix YAML.")
@click.option("--tag", default=None, help="A label stored with the run.")
@click.option("--resume", default=None, metavar="RUN_ID", help="Run only the cases of RUN_ID not yet stored.")
@click.option("--dry-run", is_flag=True, help="Print the expanded cases per device and exit.")
@wait_timeout_option
@click.option("--stop-stale", is_flag=True,
              help="With --resume: stop agents of that run still measuring on its devices (their controller died) "
                   "instead of refusing.")
@db_option
@inventory_option
def run(devices_opt: str, matrix: str | None, tag: str | None, resume: str | None, dry_run: bool,
        wait_timeout: float | None, stop_stale: bool, db: str | None, inventory: str | None) -> None:
    """Expand a sweep matrix, run it on devices, store every result as it arrives."""
    from devices.inventory import load_inventory
    from harness.controller import run_sweep
    from harness.progress import ProgressView
    from results.store import open_store

    devices = [d.strip() for d in devices_opt.split(",") if d.strip()]
    inv = load_inventory(inventory)
    if not resume:
        # Validate the matrix and the devices before the database is opened (or created): bad input
        # writes nothing.
        outcome = run_sweep(inv, None, devices=devices, matrix_path=matrix, tag=tag, dry_run=True)
        if dry_run:
            _print_plan(outcome.plan)
            return
    if stop_stale and not resume:
        raise HarnessError("--stop-stale goes with --resume RUN_ID (it stops that run's leftover agents)")
    store = open_store(db)
    with ProgressView(console, err_console) as view:
        outcome = run_sweep(inv, store, devices=devices, matrix_path=matrix, tag=tag, resume=resume,
                            dry_run=dry_run, events=view.event, wait_timeout_s=wait_timeout, stop_stale=stop_stale)
    if outcome.dry_run:
        _print_plan(outcome.plan)
        return
    _print_summary(store, outcome, resume_hint=_resume_command(outcome.run_id, db, inventory))
    sys.exit(outcome.exit_code)


def _resume_command(run_id: str, db: str | None, inventory: str | None) -> str:
    """The command that resumes a run, with the --db and --inventory this one was given (pasteable)."""
    import shlex

    parts = ["harness", "run", "--resume", run_id]
    if db:
        parts += ["--db", db]
    if inventory:
        parts += ["--inventory", inventory]
    return " ".join(shlex.quote(p) for p in parts)


def _print_plan(plan: Mapping[str, list[dict[str, Any]]]) -> None:
    from workloads.spec import case_label

    for device, items in plan.items():
        console.print(f"[bold]{escape(device)}[/]: {len(items)} case(s)")
        for item in items:
            console.print(escape(f"  {item['hash']}  {case_label(item['case'])}"))


def _cpu_other(r: Mapping[str, Any]) -> str:
    """Other processes' share of the CPUs during the window; '!' marks a contended case."""
    if r.get("cpu_other") is None:
        return "-"
    return f"{r['cpu_other']:.0%}" + ("!" if r.get("contended") else "")


def _print_summary(store: Any, outcome: Any, resume_hint: str | None = None) -> None:
    from harness.report import device_label, emulation_warning
    from results.exchange import export_rows
    from results.queries import emulated_devices

    rows = export_rows(store, [outcome.run_id])
    emulated = emulated_devices(store, [outcome.run_id]).get(outcome.run_id, [])
    table = Table(title=f"run {outcome.run_id} ({outcome.status})")
    for col in ("device", "case", "status", "p50 ms", "p90 ms", "n", "peak MB", "cos_sim", "rel_err",
                "mJ/inf", "cpu other"):
        table.add_column(col, justify="right" if col not in ("device", "case", "status") else "left")
    from workloads.spec import case_label

    for r in rows:
        table.add_row(escape(device_label(r["device"], r["device"] in emulated)), case_label(r), r["status"],
                      _fmt(r["latency_ms_p50"]), _fmt(r["latency_ms_p90"]),
                      _fmt(r["n_samples"]), _fmt(r["peak_mem_mb"], 0), _fmt(r["cos_sim"], 6), _fmt(r["rel_err"], 4),
                      _fmt(r["energy_mj_per_inf"]), _cpu_other(r))
    console.print(table)
    contended = [r for r in rows if r.get("contended")]
    if contended:
        worst = max(r["cpu_other"] for r in contended)
        err_console.print(f"[yellow]warning:[/] {len(contended)} case(s) were measured while other processes used "
                          f"the CPUs (up to {worst:.0%}; marked '!'): their latencies are not a quiet device's. "
                          "Stop the other load, or set measure.on_contention: wait (or retry), and re-run them.")
    warning = emulation_warning(emulated)
    if warning:
        console.print("[yellow bold]" + escape(warning) + "[/]")
    for r in rows:
        if r["status"] in ("failed", "timeout", "skipped") and r["error"]:
            console.print(f"[yellow]{r['status']}[/] " + escape(f"{r['device']} {case_label(r)}: {r['error']}"))
    for name, d in outcome.devices.items():
        if d.status != "complete":
            console.print(f"[red]device {escape(name)}: {d.status}[/] " + escape(d.error or ""))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items())) or "nothing stored"
    why = f" ({outcome.error})" if getattr(outcome, "error", None) else ""
    console.print(f"run id [bold]{outcome.run_id}[/]: {outcome.status}{escape(why)}; {counts}")
    if outcome.status in ("partial", "interrupted", "abandoned", "failed"):
        console.print("resume with: " + escape(resume_hint or f"harness run --resume {outcome.run_id}"))


# -- kernels ---------------------------------------------------------------------------------------------
@cli.command("kernels")
def kernels_cmd() -> None:
    """List the registered kernels and what each computes."""
    from kernels.registry import all_kernels

    table = Table()
    for col in ("variant", "precision", "backend", "scope", "needs", "computes"):
        table.add_column(col)
    for key, k in sorted(all_kernels().items(), key=lambda kv: str(kv[0])):
        needs = ", ".join(k.requires.modules + k.requires.torch_ops)
        table.add_row(key.variant, key.precision, key.backend, key.scope, needs, k.description)
    console.print(table)


# -- devices ---------------------------------------------------------------------------------------------
@cli.group()
def devices() -> None:
    """The device inventory: list, probe, trust."""


@devices.command("list")
@click.option("--offline", is_flag=True, help="Do not ask the devices who holds them (no SSH connections).")
@inventory_option
def devices_list(offline: bool, inventory: str | None) -> None:
    """List the devices in the inventory and which run holds each (the device lease)."""
    from devices.inventory import load_inventory

    inv = load_inventory(inventory)
    holders = {} if offline else _lease_holders(inv)
    table = Table(title=inv.path or "built-in (no devices.yaml)")
    for col in ("name", "host", "user", "python", "power", "tags", "held by"):
        table.add_column(col)
    for d in inv.devices.values():
        host = "(this machine)" if d.is_local else f"{d.host}:{d.port or 22}"
        table.add_row(escape(d.name), escape(host), escape(d.user or "-"), escape(d.python or "-"),
                      escape((d.power or {}).get("sensor", "-")), escape(",".join(d.tags) or "-"),
                      escape(holders.get(d.name, "not asked (--offline)")))
    console.print(table)


def _lease_holders(inv: Any) -> dict[str, str]:
    """Per device: 'free', 'run X since T (...)', or why it could not be asked; devices asked in parallel,
    each bounded by its connect timeout and the transport's command deadline."""
    import threading
    import time

    from harness.controller import transport_for

    out: dict[str, str] = {}

    def ask(device: Any) -> None:
        transport = None
        try:
            transport = transport_for(device, inv)
            holder = transport.lease_status().get("holder")  # type: ignore[attr-defined]
            if not holder:
                out[device.name] = "free"
            else:
                since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["since"]))
                out[device.name] = f"run {holder['run_id']} since {since} (agent pid {holder['pid']})"
        except HarnessError as exc:
            out[device.name] = f"unknown: {str(exc)[:120]}"
        finally:
            close = getattr(transport, "close", None)
            if close is not None:
                close()

    threads = [threading.Thread(target=ask, args=(d,), daemon=True) for d in inv.devices.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


@devices.command("check")
@click.argument("names", nargs=-1, required=True)
@inventory_option
def devices_check(names: tuple[str, ...], inventory: str | None) -> None:
    """Probe devices: CPU, ISA features, memory, OS, Python, torch/onnxruntime, governor, sensors."""
    from devices.inventory import load_inventory
    from harness.checks import check_devices, power_failed

    inv = load_inventory(inventory)
    configs = inv.resolve(list(names))
    unreachable = 0
    for name, result in check_devices(inv, configs).items():
        if isinstance(result, HarnessError):
            unreachable += 1
            console.print(f"[red]{escape(name)}: unreachable[/] " + escape(str(result)))
            continue
        emulated = str(result.get("emulated", "no")) != "no"
        console.print(f"[bold]{escape(name)}[/]" + (" [yellow bold](EMULATED)[/]" if emulated else ""))
        for key, value in result.items():
            line = escape(f"  {key:<16} {value}")
            console.print(f"[yellow bold]{line}[/]" if key == "emulated" and emulated else line)
        if power_failed(result):
            unreachable += 1
    sys.exit(1 if unreachable else 0)


@devices.command("trust")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Pin without asking (for scripts); the fingerprint is still printed.")
@inventory_option
def devices_trust(name: str, yes: bool, inventory: str | None) -> None:
    """Show a device's SSH host key fingerprint and pin it in known_hosts."""
    from devices.inventory import load_inventory
    from harness.ssh import pin_host_key, scan_host_key
    from workloads.errors import DeviceError

    inv = load_inventory(inventory)
    [device] = inv.resolve([name])
    if device.is_local:
        raise HarnessError(f"'{name}' is this machine; it is reached without SSH and needs no host key")
    try:
        scan = scan_host_key(device, inv)
    except DeviceError as exc:
        console.print(f"[red]{name}: unreachable[/] {exc}")
        sys.exit(1)
    console.print(f"{name} ({scan.host_id}) presents {scan.key.get_name()} key {scan.fingerprint}")
    if scan.state == "trusted":
        console.print(f"already pinned in {scan.known_hosts}; nothing to do")
        return
    if scan.state == "changed":
        assert scan.pinned is not None
        from harness.ssh import fingerprint

        console.print(f"[red]WARNING: this is not the key pinned in {scan.known_hosts}[/] "
                      f"({fingerprint(scan.pinned)}). A reinstalled device explains this; so would someone in "
                      "the middle. Check the new fingerprint on the device itself: ssh-keygen -lf "
                      "/etc/ssh/ssh_host_*_key.pub")
    if not yes:
        if not sys.stdin.isatty():
            raise HarnessError("no terminal to confirm on: check the fingerprint above on the device, then rerun "
                               f"with --yes; nothing was written to {scan.known_hosts}")
        if not click.confirm(f"Trust this key for {name}?", default=False):
            raise HarnessError(f"not trusted; nothing was written to {scan.known_hosts}")
    path = pin_host_key(scan)
    console.print(f"pinned {scan.host_id} {scan.key.get_name()} {scan.fingerprint} in {path}")


# -- results ---------------------------------------------------------------------------------------------
@cli.group()
def results() -> None:
    """Browse, export and import stored results."""


@results.command("list")
@click.option("--limit", default=50, show_default=True)
@db_option
def results_list(limit: int, db: str | None) -> None:
    """List runs, newest first."""
    from results.store import open_store

    store = open_store(db)
    table = Table()
    for col in ("run id", "started (UTC)", "status", "matrix", "tag", "devices", "results"):
        table.add_column(col)
    from harness.report import device_label

    for r in store.list_runs(limit):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(r["counts"].items()))
        devices = ",".join(device_label(d, d in r["emulated"]) for d in r["devices"])
        table.add_row(r["run_id"], r["started_at"].strftime("%Y-%m-%d %H:%M:%S"), r["status"], r["matrix"],
                      r["tag"] or "-", escape(devices), counts or "-")
    console.print(table)


@results.command("show")
@click.argument("run_id")
@db_option
def results_show(run_id: str, db: str | None) -> None:
    """Show one run's results."""
    from harness.controller import DeviceOutcome, RunOutcome
    from results.store import open_store

    store = open_store(db)
    run_row = store.get_run(run_id)
    outcome = RunOutcome(run_id=run_row.id, status=store.run_state(run_row),
                         devices={n: DeviceOutcome(n, status=st, error=err)
                                  for n, (st, err) in store.run_device_states(run_row.id).items()},
                         counts=store.status_counts(run_row.id), error=run_row.error)
    _print_summary(store, outcome, resume_hint=_resume_command(run_row.id, db, None))


@results.command("export")
@click.argument("run_id", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Export every run.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("-o", "--output", default="-", metavar="FILE", help="Write here (default stdout).")
@db_option
def results_export(run_id: str | None, all_runs: bool, fmt: str, output: str, db: str | None) -> None:
    """Export one run (or --all) as CSV or JSON: one row per (run, device, case)."""
    from results.exchange import export_rows, write_csv, write_json
    from results.store import open_store

    if bool(run_id) == all_runs:
        raise HarnessError("give a RUN_ID or --all (not both)")
    store = open_store(db)
    ids = None if all_runs else [store.get_run(run_id).id]  # type: ignore[arg-type]
    rows = export_rows(store, ids)
    writer = write_csv if fmt == "csv" else write_json
    if output == "-":
        writer(rows, sys.stdout)
    else:
        with open(output, "w", newline="") as fh:
            writer(rows, fh)
        err_console.print(f"wrote {len(rows)} row(s) to {output}")


@results.command("import")
@click.argument("file")
@db_option
def results_import(file: str, db: str | None) -> None:
    """Import what `results export` wrote; rows already present are skipped."""
    from results.exchange import import_rows, read_rows
    from results.store import open_store

    rows = read_rows(file)
    store = open_store(db)
    counts = import_rows(store, rows, file)
    console.print(f"imported {counts['measurements_added']} measurement(s) in {counts['runs_added']} new run(s); "
                  f"{counts['measurements_skipped']} already present")


@results.command("prune")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Drop raw samples of runs started longer ago than this: 180d, 26w, 12h.")
@db_option
def results_prune(older_than: str, db: str | None) -> None:
    """Drop the raw samples of old runs; every summary (p50, p90, ...) is kept."""
    from results.prune import describe, parse_duration, prune_samples
    from results.store import open_store

    age = parse_duration(older_than)  # a bad age exits 2 before the database is opened
    store = open_store(db)
    console.print(describe(prune_samples(store, age), store.backend))


# -- compare, regress, nightly ---------------------------------------------------------------------------
@cli.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--devices", "devices_opt", default="", help="Only these devices (comma-separated).")
@click.option("--force", is_flag=True, help="Compare runs whose environments differ (the fields are listed).")
@click.option("--min-effect", default=0.05, show_default=True, help="Smallest speedup change that counts.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@db_option
def compare(run_a: str, run_b: str, devices_opt: str, force: bool, min_effect: float, fmt: str,
            db: str | None) -> None:
    """Per case: both medians, speedup A/B with a bootstrap interval, and a verdict."""
    from dataclasses import asdict

    from harness.report import comparison_rows
    from results.compare import compare_runs
    from results.store import open_store

    devices = [d.strip() for d in devices_opt.split(",") if d.strip()] or None
    result = compare_runs(open_store(db), run_a, run_b, devices=devices, min_effect=min_effect, force=force)
    if fmt == "json":
        print(json.dumps(asdict(result), indent=1, default=str))
        return
    for d in result.stable_diffs:
        console.print(f"[red bold]NOT COMPARABLE[/] " + escape(f"{d.device}: {d.field} {d.a!r} -> {d.b!r}"))
    from harness.report import emulation_warning

    warning = emulation_warning(result.emulated_devices)
    if warning:
        console.print("[yellow bold]" + escape(warning) + "[/]")
    table = Table(title=f"A = {result.run_a}, B = {result.run_b} (speedup = A/B, > 1 means B is faster)")
    for col in ("device", "case", "A p50 ms", "B p50 ms", "speedup", "95% CI", "verdict"):
        table.add_column(col, justify="right" if "ms" in col or col in ("speedup", "95% CI") else "left")
    for row in comparison_rows(result):
        table.add_row(*(escape(c) for c in row))
    console.print(table)
    counts = ", ".join(f"{n} {v}" for v, n in sorted(result.counts.items()))
    geo = f"{result.geomean:.3f}" if result.geomean else "-"
    console.print(f"geometric mean speedup {geo}; {counts}")
    busy = [c for c in result.cases if c.contended]
    if busy:
        err_console.print(f"[yellow]warning:[/] {len(busy)} case(s) were measured under contention on one side "
                          "(marked 'contended!'): other processes used the device's CPUs, so their speedups say "
                          "little. Re-measure them on a quiet device.")


def _regress(store: Any, devices: list[str] | None, history: bool, min_effect: float, alpha: float,
             metrics: list[str]) -> list[Any]:
    from results import regress as rg

    if history:
        return rg.history(store, devices=devices, metrics=metrics, min_effect=min_effect, alpha=alpha)
    return rg.latest(store, devices=devices, metrics=metrics, min_effect=min_effect, alpha=alpha)


def _confirmed(store: Any, findings: list[Any], rounds: int, min_effect: float, inventory: str | None) -> list[Any]:
    """Keep improvements, and the regressions that reproduce (or that could not be re-measured, said so)."""
    from devices.inventory import load_inventory
    from harness.confirm import confirm

    suspects = [f for f in findings if f.direction == "regression"]
    revisions = {}
    for f in suspects:
        for run_id in (f.run_id, *f.runs_before[-1:]):
            revisions[run_id] = store.get_run(run_id).git_revision
    kept = [f for f in findings if f.direction != "regression"]
    for c in confirm(suspects, load_inventory(inventory), revisions, rounds=rounds, min_effect=min_effect):
        err_console.print(("confirmed: " if c.confirmed else "not confirmed: " if c.confirmed is False
                           else "unconfirmed: ") + f"{c.finding.device} {c.finding.case_hash}: {c.reason}",
                          markup=False)
        if c.confirmed is not False:
            c.finding.cause = (c.finding.cause + "; " if c.finding.cause else "") + (
                f"confirmed by re-measurement: {c.reason}" if c.confirmed else f"not re-measured: {c.reason}")
            kept.append(c.finding)
    return kept


metric_option = click.option("--metric", "metrics", multiple=True, default=("latency_ms",), show_default=True,
                             type=click.Choice(["latency_ms", "energy_mj_per_inf", "cos_sim"]))


@cli.command()
@click.option("--devices", "devices_opt", default="", help="Only these devices (comma-separated).")
@click.option("--history", is_flag=True, help="List every change point in the stored history.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option("--min-effect", default=0.05, show_default=True, help="Smallest relative change reported.")
@click.option("--alpha", default=0.001, show_default=True, help="Significance level.")
@click.option("--confirm", "confirm_rounds", type=int, default=0, metavar="ROUNDS",
              help="Re-measure each suspected regression ROUNDS times, old and new code alternated, and report "
                   "only those that reproduce.")
@metric_option
@db_option
@inventory_option
def regress(devices_opt: str, history: bool, fmt: str, min_effect: float, alpha: float, confirm_rounds: int,
            metrics: tuple[str, ...], db: str | None, inventory: str | None) -> None:
    """The newest run per device against its history (exit 1 on regressions), or --history."""
    from harness.report import findings_json, findings_markdown, findings_text
    from results.store import open_store

    devices = [d.strip() for d in devices_opt.split(",") if d.strip()] or None
    store = open_store(db)
    findings = _regress(store, devices, history, min_effect, alpha, list(metrics))
    if confirm_rounds and not history:
        findings = _confirmed(store, findings, confirm_rounds, min_effect, inventory)
    mode = "history" if history else "latest"
    if fmt == "json":
        print(findings_json(findings))
    elif fmt == "markdown":
        print(findings_markdown(findings, title="attn-harness regressions", mode=mode))
    else:
        print(findings_text(findings, mode=mode))
    if not history and any(f.direction == "regression" for f in findings):
        sys.exit(1)


@cli.command()
@click.option("--devices", "devices_opt", required=True, help="Comma-separated device names.")
@click.option("--matrix", "matrix", required=True, metavar="FILE", help="Sweep matrix YAML.")
@click.option("--tag", default="nightly", show_default=True)
@click.option("--report", "report_path", default=None, metavar="FILE",
              help="Markdown report (default nightly-<run id>.md).")
@click.option("--min-effect", default=0.05, show_default=True)
@click.option("--alpha", default=0.001, show_default=True)
@wait_timeout_option
@db_option
@inventory_option
def nightly(devices_opt: str, matrix: str, tag: str, report_path: str | None, min_effect: float, alpha: float,
            wait_timeout: float | None, db: str | None, inventory: str | None) -> None:
    """Run the sweep, then regress the newest run against history, then write the markdown report."""
    from devices.inventory import load_inventory
    from harness.controller import run_sweep
    from harness.progress import ProgressView
    from harness.report import findings_markdown, findings_text
    from results.store import open_store

    devices = [d.strip() for d in devices_opt.split(",") if d.strip()]
    inv = load_inventory(inventory)
    run_sweep(inv, None, devices=devices, matrix_path=matrix, dry_run=True)  # validate before writing
    store = open_store(db)
    with ProgressView(console, err_console) as view:
        outcome = run_sweep(inv, store, devices=devices, matrix_path=matrix, tag=tag, events=view.event,
                            wait_timeout_s=wait_timeout)
    _print_summary(store, outcome, resume_hint=_resume_command(outcome.run_id, db, inventory))
    if outcome.status == "interrupted":
        # Stopped (systemd's SIGTERM, say): no regression verdict from a half-measured night.
        sys.exit(outcome.exit_code)
    findings = _regress(store, devices, False, min_effect, alpha, ["latency_ms"])
    path = report_path or f"nightly-{outcome.run_id}.md"
    text = findings_markdown(findings, title=f"attn-harness nightly, run {outcome.run_id} ({outcome.status})",
                             mode="latest")
    with open(path, "w") as fh:
        fh.write(text + "\n")
    print(findings_text(findings, mode="latest"))
    console.print(f"report written to {escape(path)}")
    regressed = any(f.direction == "regression" for f in findings)
    sys.exit(1 if regressed or outcome.exit_code else 0)


@cli.command()
@click.option("--port", default=8501, show_default=True, help="Port on 127.0.0.1.")
@db_option
def dashboard(port: int, db: str | None) -> None:
    """Start the Streamlit dashboard on 127.0.0.1 against the results database (read-only)."""
    import os

    from dashboard.launch import launch
    from results.store import DEFAULT_DB

    sys.exit(launch(db or os.environ.get("HARNESS_DB") or DEFAULT_DB, port))


# -- db --------------------------------------------------------------------------------------------------
@cli.group("db")
def db_group() -> None:
    """The results database schema."""


@db_group.command("upgrade")
@db_option
def db_upgrade(db: str | None) -> None:
    """Migrate the schema in place to this harness's revision."""
    import os

    from results.store import DEFAULT_DB, Store

    url = db or os.environ.get("HARNESS_DB") or DEFAULT_DB
    store = Store(url, upgrade=False)
    before, after = store.upgrade(announce=console.print)
    console.print(f"{url}: schema at revision {after}" + ("" if before == after else f" (was {before or 'empty'})"))


def main() -> None:
    """Entry point: one place turns a HarnessError into its message and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except HarnessError as exc:
        # Plain text, unwrapped: scripts grep this, and paths may hold characters rich reads as markup.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
