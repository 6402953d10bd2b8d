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
@db_option
@inventory_option
def run(devices_opt: str, matrix: str | None, tag: str | None, resume: str | None, dry_run: bool,
        db: str | None, inventory: str | None) -> None:
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
    store = open_store(db)
    with ProgressView(console) as view:
        outcome = run_sweep(inv, store, devices=devices, matrix_path=matrix, tag=tag, resume=resume,
                            dry_run=dry_run, events=view.event)
    if outcome.dry_run:
        _print_plan(outcome.plan)
        return
    _print_summary(store, outcome)
    sys.exit(outcome.exit_code)


def _print_plan(plan: Mapping[str, list[dict[str, Any]]]) -> None:
    from workloads.spec import case_label

    for device, items in plan.items():
        console.print(f"[bold]{escape(device)}[/]: {len(items)} case(s)")
        for item in items:
            console.print(escape(f"  {item['hash']}  {case_label(item['case'])}"))


def _print_summary(store: Any, outcome: Any) -> None:
    from results.exchange import export_rows

    rows = export_rows(store, [outcome.run_id])
    table = Table(title=f"run {outcome.run_id} ({outcome.status})")
    for col in ("device", "case", "status", "p50 ms", "p90 ms", "n", "peak MB", "cos_sim", "rel_err",
                "mJ/inf"):
        table.add_column(col, justify="right" if col not in ("device", "case", "status") else "left")
    from workloads.spec import case_label

    for r in rows:
        table.add_row(r["device"], case_label(r), r["status"], _fmt(r["latency_ms_p50"]), _fmt(r["latency_ms_p90"]),
                      _fmt(r["n_samples"]), _fmt(r["peak_mem_mb"], 0), _fmt(r["cos_sim"], 6), _fmt(r["rel_err"], 4),
                      _fmt(r["energy_mj_per_inf"]))
    console.print(table)
    for r in rows:
        if r["status"] in ("failed", "timeout", "skipped") and r["error"]:
            console.print(f"[yellow]{r['status']}[/] " + escape(f"{r['device']} {case_label(r)}: {r['error']}"))
    for name, d in outcome.devices.items():
        if d.status != "complete":
            console.print(f"[red]device {escape(name)}: {d.status}[/] " + escape(d.error or ""))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items())) or "nothing stored"
    console.print(f"run id [bold]{outcome.run_id}[/]: {outcome.status}; {counts}")
    if outcome.status in ("partial", "interrupted"):
        console.print(f"resume with: harness run --resume {outcome.run_id}")


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
@inventory_option
def devices_list(inventory: str | None) -> None:
    """List the devices in the inventory."""
    from devices.inventory import load_inventory

    inv = load_inventory(inventory)
    table = Table(title=inv.path or "built-in (no devices.yaml)")
    for col in ("name", "host", "user", "python", "power", "tags"):
        table.add_column(col)
    for d in inv.devices.values():
        host = "(this machine)" if d.is_local else f"{d.host}:{d.port or 22}"
        table.add_row(d.name, host, d.user or "-", d.python or "-", (d.power or {}).get("sensor", "-"),
                      ",".join(d.tags) or "-")
    console.print(table)


@devices.command("check")
@click.argument("names", nargs=-1, required=True)
@inventory_option
def devices_check(names: tuple[str, ...], inventory: str | None) -> None:
    """Probe devices: CPU, ISA features, memory, OS, Python, torch/onnxruntime, governor, sensors."""
    from devices.inventory import load_inventory
    from harness.checks import check_devices

    inv = load_inventory(inventory)
    configs = inv.resolve(list(names))
    unreachable = 0
    for name, result in check_devices(inv, configs).items():
        if isinstance(result, HarnessError):
            unreachable += 1
            console.print(f"[red]{escape(name)}: unreachable[/] " + escape(str(result)))
            continue
        console.print(f"[bold]{escape(name)}[/]")
        for key, value in result.items():
            console.print(escape(f"  {key:<16} {value}"))
    sys.exit(1 if unreachable else 0)


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
    for r in store.list_runs(limit):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(r["counts"].items()))
        table.add_row(r["run_id"], r["started_at"].strftime("%Y-%m-%d %H:%M:%S"), r["status"], r["matrix"],
                      r["tag"] or "-", ",".join(r["devices"]), counts or "-")
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
    outcome = RunOutcome(run_id=run_row.id, status=run_row.status,
                         devices={n: DeviceOutcome(n, status="complete") for n in store.run_devices(run_row.id)},
                         counts=store.status_counts(run_row.id))
    _print_summary(store, outcome)


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
