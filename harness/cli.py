"""The `harness` command: parses flags, calls the keyword API, formats what comes back.

`HarnessError` is caught once, in `main()`: its message is printed and the exit code is 2 (`--debug`
adds the traceback). A database failure the store did not translate is turned into the same kind of
message there. Anything else is a bug and keeps its traceback.

Everything printed that did not come from this file (device names, tags, errors, paths, case keys from
the database or an imported file) goes through `harness.safe_text.terminal`: control characters are
shown as escapes, never sent to the terminal. Table cells are rich `Text`, never markup.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, Mapping

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from harness.safe_text import mask_url, terminal
from workloads.errors import HarnessError

from harness import output
from harness.output import FORMATS, dumps

# Rebuilt by `--color` (see `_set_color`); functions look these names up when they print.
console = output.make_console()
err_console = output.make_console(stderr=True)

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


plugin_option = click.option(
    "--plugin", "plugins", multiple=True, metavar="PATH",
    help="A kernel plugin (a .py file or a package folder) to load; repeat for several. Plugins are code you "
         "choose to run: they run here and on the devices.")


wait_timeout_option = click.option(
    "--wait-timeout", "wait_timeout", default="3600", show_default=True, metavar="SECONDS", callback=_wait_timeout,
    help="How long to wait for a device another run is measuring on (0: do not wait; 'none': no limit). A device "
         "still busy after that ends 'busy' and the run can be resumed.")


DEBUG_ENV = "HARNESS_DEBUG"
_debug = False
# -1: --quiet (results and errors only), 0: normal, 1: -v (every note, every finding's runs).
_verbosity = 0


def _set_color(ctx: Any, param: Any, value: str | None) -> None:
    global console, err_console
    if value is not None:
        console = output.make_console(color=value)
        err_console = output.make_console(stderr=True, color=value)


def _set_quiet(ctx: Any, param: Any, value: bool) -> None:
    global _verbosity
    if value:
        _verbosity = -1


def _set_verbose(ctx: Any, param: Any, value: int) -> None:
    global _verbosity
    if value and _verbosity >= 0:
        _verbosity = max(_verbosity, value)


def output_options(f: Any) -> Any:
    """--quiet, -v and --color, taken before or after the subcommand's name (`harness -q run`, `harness run -q`)."""
    f = click.option("--color", type=click.Choice(output.COLORS), default=None, expose_value=False,
                     is_eager=True, callback=_set_color,
                     help="Colour: auto (a terminal without NO_COLOR set), always, never.")(f)
    f = click.option("-v", "--verbose", count=True, expose_value=False, callback=_set_verbose,
                     help="Say more: every note in full, the runs behind each finding.")(f)
    f = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                     help="Only results and errors: no progress, no notes.")(f)
    return f


format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
                             help="text (a table fitted to the terminal), json (for scripts; shapes in the README) "
                                  "or markdown (for a PR comment or $GITHUB_STEP_SUMMARY).")


def _emit(fmt: str, records: Any, cols: Any, table_records: Any = None, title: str | None = None) -> None:
    """Print records as JSON, or as a table (text fitted to the terminal, or markdown) of `table_records`."""
    if fmt == "json":
        print(dumps(records))
    elif fmt == "markdown":
        print(((f"### {output.md_cell(title)}\n\n") if title else "") +
              output.markdown_table(cols, records if table_records is None else table_records))
    else:
        output.print_table(console, title, cols, records if table_records is None else table_records)


def _e(x: Any) -> str:
    """Outside text for rich markup: control characters escaped, markup brackets escaped."""
    return escape(terminal(x))


def _cells(*values: Any) -> list[Text]:
    """Table cells from outside text: shown literally (no markup, no control characters)."""
    return [Text(terminal("" if v is None else v)) for v in values]


def _read_store(db: str | None) -> Any:
    """The results database for a command that only reads: never created, opened read-only."""
    from results.store import open_store

    return open_store(db, read_only=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attn-harness")
@click.option("--debug", is_flag=True, help="Show the traceback of an error (also HARNESS_DEBUG=1).")
@output_options
def cli(debug: bool) -> None:
    """Benchmark quantized attention kernels on edge devices and keep the results."""
    global _debug
    _debug = _debug or debug


# -- run -------------------------------------------------------------------------------------------------
@cli.command()
@click.option("--devices", "devices_opt", default="", help="Comma-separated device names (local always exists).")
@click.option("--matrix", "matrix", default=None, metavar="FILE", help="Sweep matrix YAML.")
@click.option("--tag", default=None, help="A label stored with the run.")
@click.option("--resume", default=None, metavar="RUN",
              help="Run only the cases of RUN not yet stored (a run id, a unique prefix, tag:NAME, latest...).")
@click.option("--dry-run", is_flag=True, help="Print the expanded cases per device and exit.")
@wait_timeout_option
@click.option("--stop-stale", is_flag=True,
              help="With --resume: stop agents of that run still measuring on its devices (their controller died) "
                   "instead of refusing.")
@click.option("--strict", is_flag=True,
              help="Refuse the matrix when a combination has no kernel (default: store it as skipped).")
@click.option("--max-cases", type=click.IntRange(1, 10_000_000), default=None, metavar="N",
              help="Refuse a matrix that expands to more cases than this (default 5000).")
@format_option
@plugin_option
@db_option
@inventory_option
@output_options
def run(devices_opt: str, matrix: str | None, tag: str | None, resume: str | None, dry_run: bool,
        wait_timeout: float | None, stop_stale: bool, strict: bool, max_cases: int | None, plugins: tuple[str, ...],
        fmt: str, db: str | None, inventory: str | None) -> None:
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
        outcome = run_sweep(inv, None, devices=devices, matrix_path=matrix, tag=tag, dry_run=True, strict=strict,
                            plugins=plugins, **_max_cases(max_cases))
        if dry_run:
            _print_plan(outcome.plan, outcome.not_implemented, outcome.plugin_failed)
            _print_plugin_problems(outcome.plugin_problems)
            return
    if stop_stale and not resume:
        raise HarnessError("--stop-stale goes with --resume RUN_ID (it stops that run's leftover agents)")
    store = open_store(db)
    with _progress(fmt) as view:
        outcome = run_sweep(inv, store, devices=devices, matrix_path=matrix, tag=tag, resume=resume,
                            dry_run=dry_run, events=view.event, wait_timeout_s=wait_timeout, stop_stale=stop_stale,
                            strict=strict, plugins=plugins, **_max_cases(max_cases))
    if outcome.dry_run:
        _print_plan(outcome.plan, outcome.not_implemented, outcome.plugin_failed)
        return
    _print_summary(store, outcome, resume_hint=_resume_command(outcome.run_id, db, inventory, plugins), fmt=fmt)
    _print_plugin_problems(outcome.plugin_problems)
    sys.exit(outcome.exit_code)


def _progress(fmt: str) -> Any:
    """The progress display: bars on stdout for text output, on stderr when stdout carries JSON or
    markdown; none with --quiet."""
    from harness.progress import ProgressView

    return ProgressView(console if fmt == "text" else err_console, err_console, verbosity=_verbosity)


def _print_plugin_problems(problems: list[str]) -> None:
    for line in problems:  # plain and unwrapped, as errors are: scripts grep them
        print(f"plugin error: {terminal(line)}", file=sys.stderr)


def _resume_command(run_id: str, db: str | None, inventory: str | None, plugins: tuple[str, ...] = ()) -> str:
    """The command that resumes a run, with the --db, --inventory and --plugin this one was given (pasteable,
    but for a password in the database URL, which is masked)."""
    import shlex

    parts = ["harness", "run", "--resume", run_id]
    for path in plugins:
        parts += ["--plugin", path]
    if db:
        parts += ["--db", mask_url(db)]  # a password never reaches the terminal or a log
    if inventory:
        parts += ["--inventory", inventory]
    return " ".join(shlex.quote(p) for p in parts)


def _max_cases(max_cases: int | None) -> dict[str, int]:
    return {} if max_cases is None else {"max_cases": max_cases}


def _print_plan(plan: Mapping[str, list[dict[str, Any]]], not_implemented: Mapping[str, str] | None = None,
                plugin_failed: Mapping[str, str] | None = None) -> None:
    from workloads.spec import case_label

    missing = not_implemented or {}
    failing = plugin_failed or {}
    for device, items in plan.items():
        skipped = sum(1 for item in items if item["hash"] in missing)
        failed = sum(1 for item in items if item["hash"] in failing)
        console.print(f"[bold]{_e(device)}[/]: {len(items)} case(s)" + (f", {skipped} to be stored as skipped "
                                                                          "(no kernel)" if skipped else "")
                      + (f", {failed} to be stored as failed (a plugin did not load)" if failed else ""))
        for item in items:
            reason = missing.get(item["hash"])
            console.print(_e(f"  {item['hash']}  {case_label(item['case'])}") + (
                f"  [yellow]skipped:[/] {_e(reason)}" if reason else "") + (
                f"  [red]failed:[/] {_e(failing[item['hash']])}" if item["hash"] in failing else ""))


def _print_summary(store: Any, outcome: Any, resume_hint: str | None = None, fmt: str = "text") -> None:
    """A run's results (`harness.views.RESULT_COLS`; JSON: `views.run_record`), then what went wrong and
    how to resume. In JSON and markdown the notes go to stderr, so stdout stays one document."""
    from harness import views
    from harness.report import emulation_warning
    from results.exchange import export_rows
    from results.queries import emulated_devices
    from workloads.spec import case_label

    rows = export_rows(store, [outcome.run_id])
    emulated = emulated_devices(store, [outcome.run_id]).get(outcome.run_id, [])
    notes = console if fmt == "text" else err_console
    if fmt == "json":
        run = store.get_run(outcome.run_id)
        states = {n: (d.status, d.error) for n, d in outcome.devices.items()}
        record = views.run_record(run, outcome.status, states, emulated, rows)
        print(dumps(record))
    else:
        records = views.result_records(rows, emulated)
        _emit(fmt, records, views.RESULT_COLS, title=f"run {outcome.run_id} ({outcome.status})")
    contended = [r for r in rows if r.get("contended")]
    if contended:
        worst = max(r["cpu_other"] for r in contended)
        err_console.print(f"[yellow]warning:[/] {len(contended)} case(s) were measured while other processes used "
                          f"the CPUs (up to {worst:.0%}; marked '!'): their latencies are not a quiet device's. "
                          "Stop the other load, or set measure.on_contention: wait (or retry), and re-run them.")
    warning = emulation_warning(emulated)
    if warning:
        notes.print("[yellow bold]" + escape(warning) + "[/]")
    for r in rows:
        if r["status"] in ("failed", "timeout", "skipped") and r["error"] and _verbosity >= 0:
            error = r["error"] if _verbosity > 0 or len(r["error"]) <= 300 else r["error"][:300] + "... (-v: all of it)"
            notes.print(f"[yellow]{_e(r['status'])}[/] " + _e(f"{r['device']} {case_label(r)}: {error}"))
    for name, d in outcome.devices.items():
        if d.status != "complete":
            notes.print(f"[red]device {_e(name)}: {_e(d.status)}[/] " + _e(d.error or ""))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items())) or "nothing stored"
    why = f" ({outcome.error})" if getattr(outcome, "error", None) else ""
    notes.print(f"run id [bold]{_e(outcome.run_id)}[/]: {_e(outcome.status)}{_e(why)}; {_e(counts)}")
    if outcome.status in ("partial", "interrupted", "abandoned", "failed"):
        # One line, never wrapped at the terminal's width: it is meant to be copied and pasted.
        notes.print("resume with: " + _e(resume_hint or f"harness run --resume {outcome.run_id}"), soft_wrap=True)


# -- kernels ---------------------------------------------------------------------------------------------
@cli.command("kernels")
@format_option
@output_options
@plugin_option
def kernels_cmd(fmt: str, plugins: tuple[str, ...]) -> None:
    """List the registered kernels and what each computes (with --plugin, what plugins register)."""
    from harness import views
    from harness.plugins import installed_plugins_present, kernel_listing
    from kernels.catalog import builtin_kernels

    problems: list[str] = []
    notes: list[str] = []
    if plugins or installed_plugins_present():
        # Plugins are code: listing what they register means importing them (and torch).
        rows, notes, problems = kernel_listing(plugins)
        keys = ("variant", "precision", "backend", "scope", "needs", "from", "computes")
        records = [dict(zip(keys, row)) for row in rows]
        for r in records:
            r["needs"] = [n for n in r["needs"].split(", ") if n]
    else:
        records = [dict(r, **{"from": "bundled"}) for r in builtin_kernels()]
    _emit(fmt, records, views.KERNEL_COLS, views.kernel_rows(records))
    for line in notes:  # beside a JSON or markdown document, notes go to stderr
        (console if fmt == "text" else err_console).print(_e(line))
    _print_plugin_problems(problems)
    if problems:
        sys.exit(2)


# -- devices ---------------------------------------------------------------------------------------------
@cli.group()
def devices() -> None:
    """The device inventory: list, probe, trust."""


@devices.command("list")
@click.option("--offline", is_flag=True, help="Do not ask the devices who holds them (no SSH connections).")
@format_option
@inventory_option
@output_options
def devices_list(offline: bool, fmt: str, inventory: str | None) -> None:
    """List the devices in the inventory and which run holds each (the device lease)."""
    from devices.inventory import load_inventory
    from harness import views

    inv = load_inventory(inventory)
    holders = {} if offline else _lease_holders(inv)
    records = [{"name": d.name, "host": "(this machine)" if d.is_local else f"{d.host}:{d.port or 22}",
                "user": d.user, "python": d.python, "power": (d.power or {}).get("sensor"), "tags": list(d.tags),
                "held_by": holders.get(d.name, "not asked (--offline)")} for d in inv.devices.values()]
    shown = [dict(r, tags=",".join(r["tags"]) or "-") for r in records]
    _emit(fmt, records, views.DEVICE_LIST_COLS, shown, title=inv.path or "built-in (no devices.yaml)")


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
@format_option
@inventory_option
@output_options
def devices_check(names: tuple[str, ...], fmt: str, inventory: str | None) -> None:
    """Probe devices: CPU, ISA features, memory, OS, Python, torch/onnxruntime, governor, sensors."""
    from devices.inventory import load_inventory
    from harness import views
    from harness.checks import check_devices, power_failed

    inv = load_inventory(inventory)
    configs = inv.resolve(list(names))
    unreachable = 0
    records = []
    for name, result in check_devices(inv, configs).items():
        failed_power = not isinstance(result, HarnessError) and power_failed(result)
        unreachable += isinstance(result, HarnessError) or failed_power
        records.append(views.device_check_record(name, result, failed_power))
    if fmt == "json":
        print(dumps(records))
    elif fmt == "markdown":
        for r in records:
            print(f"### {output.md_cell(r['device'])}\n")
            if not r["reachable"]:
                print(f"unreachable: {output.md_cell(r['error'])}\n")
                continue
            print(output.markdown_table((output.Col("field", "field"), output.Col("value", "value")),
                                        [{"field": k, "value": v} for k, v in r["probe"].items()]) + "\n")
    else:
        for r in records:
            if not r["reachable"]:
                console.print(f"[red]{_e(r['device'])}: unreachable[/] " + _e(r["error"]))
                continue
            emulated = str(r["probe"].get("emulated", "no")) != "no"
            console.print(f"[bold]{_e(r['device'])}[/]" + (" [yellow bold](EMULATED)[/]" if emulated else ""))
            for key, value in r["probe"].items():
                line = _e(f"  {key:<16} {value}")
                console.print(f"[yellow bold]{line}[/]" if key == "emulated" and emulated else line)
    sys.exit(1 if unreachable else 0)


@devices.command("trust")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Pin without asking (for scripts); the fingerprint is still printed.")
@inventory_option
@output_options
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
        console.print(f"[red]{_e(name)}: unreachable[/] {_e(exc)}")
        sys.exit(1)
    console.print(_e(f"{name} ({scan.host_id}) presents {scan.key.get_name()} key {scan.fingerprint}"))
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


def _when(ctx: Any, param: Any, value: str | None) -> datetime | None:
    """--since/--until: a UTC date or time (2026-12-01, 2026-12-01T02:30) or an age back from now (7d, 12h)."""
    if value is None:
        return None
    from results.prune import parse_duration

    text = value.strip()
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        try:
            return datetime.now(timezone.utc).replace(tzinfo=None) - parse_duration(text, key=param.opts[0])
        except HarnessError:
            raise click.BadParameter(f"{value!r} is neither a UTC date or time (2026-12-01, 2026-12-01T02:30) nor "
                                     "an age (7d, 12h, 2w)") from None
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


RUN_STATUSES = ("running", "abandoned", "complete", "partial", "interrupted", "failed")


@results.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--tag", default=None, help="Only runs with this tag.")
@click.option("--device", default=None, help="Only runs this device took part in.")
@click.option("--status", type=click.Choice(RUN_STATUSES), default=None, help="Only runs that ended so.")
@click.option("--since", default=None, callback=_when, metavar="WHEN",
              help="Only runs started at or after WHEN: a UTC date or time (2026-12-01, 2026-12-01T02:30) or an age "
                   "(7d, 12h).")
@click.option("--until", default=None, callback=_when, metavar="WHEN", help="Only runs started before WHEN.")
@format_option
@db_option
@output_options
def results_list(limit: int, tag: str | None, device: str | None, status: str | None, since: datetime | None,
                 until: datetime | None, fmt: str, db: str | None) -> None:
    """List runs, newest first."""
    from harness import views

    store = _read_store(db)
    records = views.run_list_records(store.list_runs(limit, tag=tag, device=device, status=status, since=since,
                                                     until=until))
    if records or fmt != "text":
        _emit(fmt, records, views.RUN_LIST_COLS, views.run_list_rows(records))
    elif _verbosity >= 0:
        err_console.print("no runs" + (" match these filters" if any((tag, device, status, since, until)) else
                                       " stored yet"))


@results.command("show")
@click.argument("run_ref", metavar="RUN")
@format_option
@db_option
@output_options
def results_show(run_ref: str, fmt: str, db: str | None) -> None:
    """Show one run's results (RUN: an id or unique prefix, tag:NAME, latest, latest~N, latest@DEVICE)."""
    from harness.controller import DeviceOutcome, RunOutcome

    store = _read_store(db)
    run_row = store.get_run(run_ref)
    outcome = RunOutcome(run_id=run_row.id, status=store.run_state(run_row),
                         devices={n: DeviceOutcome(n, status=st, error=err)
                                  for n, (st, err) in store.run_device_states(run_row.id).items()},
                         counts=store.status_counts(run_row.id), error=run_row.error)
    _print_summary(store, outcome, resume_hint=_resume_command(run_row.id, db, None), fmt=fmt)


@results.command("export")
@click.argument("run_id", metavar="[RUN]", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Export every run.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "pyperf"]), default="csv", show_default=True,
              help="csv or json (every column; `results import` reads them back), or pyperf (a pyperf benchmark "
                   "suite: `pyperf stats`, `hist` and `compare_to` read it).")
@click.option("-o", "--output", "out_path", default="-", metavar="FILE", help="Write here (default stdout).")
@db_option
@output_options
def results_export(run_id: str | None, all_runs: bool, fmt: str, out_path: str, db: str | None) -> None:
    """Export one run (or --all) as CSV or JSON (one row per run, device and case), or as pyperf JSON."""
    from results.exchange import export_rows, write_csv, write_json

    if bool(run_id) == all_runs:
        raise HarnessError("give a RUN or --all (not both)")
    if fmt == "pyperf" and all_runs:
        raise HarnessError("--format pyperf writes one run (a pyperf suite is one run's benchmarks); give a RUN")
    store = _read_store(db)
    ids = None if all_runs else [store.get_run(run_id).id]  # type: ignore[arg-type]
    rows = export_rows(store, ids)
    if fmt == "pyperf":
        from results.interop import pyperf_suite

        suite, left_out = pyperf_suite(rows)
        if left_out and _verbosity >= 0:
            err_console.print(f"{left_out} case(s) without raw samples (failed, skipped, timed out or pruned) are not "
                              "in the pyperf file")

        def writer(_rows: Any, fh: Any) -> None:
            fh.write(json.dumps(suite, allow_nan=False) + "\n")
    else:
        writer = write_csv if fmt == "csv" else write_json  # type: ignore[assignment]
    if out_path == "-":
        writer(rows, sys.stdout)
    else:
        try:
            with open(out_path, "w", newline="") as fh:
                writer(rows, fh)
        except OSError as exc:
            raise HarnessError(f"{terminal(out_path)}: cannot write the export: {exc.strerror}; check that the "
                               "folder exists and is writable") from None
        if _verbosity >= 0:
            err_console.print(f"wrote {len(rows)} row(s) to {_e(out_path)}")


def _size(text: str) -> int:
    """'500M', '2G', '100k', '123' (bytes) -> bytes."""
    units = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}
    t = text.strip().lower().removesuffix("b")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(num) * units[unit]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 500M or 2G") from None
    if not 0 < value < 2 ** 62:
        raise click.BadParameter(f"{text!r} is not a size such as 500M or 2G")
    return int(value)


@results.command("import")
@click.argument("file")
@click.option("--merge", is_flag=True, help="Let the file add devices or cases to a run already stored (only where "
                                            "the devices' fingerprints agree).")
@click.option("--max-size", "max_size", default="1G", show_default=True, metavar="SIZE",
              callback=lambda _ctx, _param, value: _size(value), help="Refuse a file larger than this (500M, 2G).")
@click.option("--device", default=None, metavar="NAME",
              help="pyperf and pytest-benchmark files: the device that ran them (default: the file's host name).")
@click.option("--tag", default=None, help="pyperf and pytest-benchmark files: a tag for the new run.")
@db_option
@output_options
def results_import(file: str, merge: bool, max_size: int, device: str | None, tag: str | None,
                   db: str | None) -> None:
    """Import what `results export` wrote, or a pyperf or pytest-benchmark JSON file (its benchmarks become
    cases of variant external); rows already present are skipped."""
    from results.exchange import import_rows, prepare_import, read_rows
    from results.store import open_store

    # The whole file is read and validated before the database is opened (or created).
    prepared = prepare_import(read_rows(file, max_bytes=max_size, device=device, tag=tag), file)
    store = open_store(db)
    counts = import_rows(store, prepared, merge=merge)
    runs = ", ".join(sorted(prepared.runs)) if len(prepared.runs) <= 3 else f"{len(prepared.runs)} runs"
    console.print(f"imported {counts['measurements_added']} measurement(s) in {counts['runs_added']} new run(s); "
                  f"{counts['measurements_skipped']} already present ({_e(runs)})")


@results.command("prune")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Drop raw samples of runs started longer ago than this: 180d, 26w, 12h.")
@db_option
@output_options
def results_prune(older_than: str, db: str | None) -> None:
    """Drop the raw samples of old runs; every summary (p50, p90, ...) is kept."""
    from results.prune import describe, parse_duration, prune_samples
    from results.store import open_store

    age = parse_duration(older_than)  # a bad age exits 2 before the database is opened
    store = open_store(db)
    console.print(describe(prune_samples(store, age), store.backend))


# -- compare, regress, nightly ---------------------------------------------------------------------------
FAIL_ON = {"slower": ("slower",), "failing": ("newly failing",)}


@cli.command()
@click.argument("run_a", metavar="RUN_A")
@click.argument("run_b", metavar="RUN_B")
@click.option("--devices", "devices_opt", default="", help="Only these devices (comma-separated).")
@click.option("--force", is_flag=True, help="Compare runs whose environments differ (the fields are listed).")
@click.option("--min-effect", default=0.05, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Smallest speedup change that counts (a fraction: 0.05 is 5%).")
@click.option("--fail-on", "fail_on", default=None, metavar="WHAT",
              help="Exit 1 when a case got slower (slower), started failing (failing), or either (slower,failing): "
                   "for CI.")
@format_option
@db_option
@output_options
def compare(run_a: str, run_b: str, devices_opt: str, force: bool, min_effect: float, fail_on: str | None, fmt: str,
            db: str | None) -> None:
    """Per case: both medians, speedup A/B with a bootstrap interval, and a verdict.

    RUN_A and RUN_B: a run id or unique prefix, tag:NAME (or a bare tag), latest, latest~N, latest@DEVICE."""
    from harness import views
    from harness.report import emulation_warning
    from results.compare import compare_runs

    failing_verdicts: tuple[str, ...] = ()
    for word in (fail_on or "").split(","):
        if word.strip():
            if word.strip() not in FAIL_ON:
                raise click.BadParameter(f"{word.strip()!r}; give slower, failing or slower,failing",
                                         param_hint="--fail-on")
            failing_verdicts += FAIL_ON[word.strip()]
    devices = [d.strip() for d in devices_opt.split(",") if d.strip()] or None
    result = compare_runs(_read_store(db), run_a, run_b, devices=devices, min_effect=min_effect, force=force)
    rows = views.compare_rows(result)
    notes = console if fmt == "text" else err_console
    if fmt == "json":
        print(dumps(views.compare_record(result)))
    elif fmt == "markdown":
        print(views.compare_markdown(result, rows, output.markdown_table(views.COMPARE_COLS, rows)))
    else:
        for d in result.stable_diffs:
            console.print("[red bold]NOT COMPARABLE[/] " + _e(f"{d.device}: {d.field} {d.a!r} -> {d.b!r}"))
        warning = emulation_warning(result.emulated_devices)
        if warning:
            console.print("[yellow bold]" + _e(warning) + "[/]")
        output.print_table(console, f"A = {result.run_a}, B = {result.run_b} (speedup = A/B, > 1 means B is faster)",
                           views.COMPARE_COLS, rows)
        counts = ", ".join(f"{n} {v}" for v, n in result.counts.items())
        geo = f"{result.geomean:.3f}" if result.geomean else "-"
        console.print(f"geometric mean speedup {geo}; {_e(counts)}")
    if result.bad_values:
        from results.validate import summarize_bad

        err_console.print(_e("warning: " + summarize_bad(result.bad_values)))
    busy = [c for c in result.cases if c.contended]
    if busy:
        err_console.print(f"[yellow]warning:[/] {len(busy)} case(s) were measured under contention on one side "
                          "(marked 'contended!'): other processes used the device's CPUs, so their speedups say "
                          "little. Re-measure them on a quiet device.")
    failing = [c for c in result.cases if c.verdict in failing_verdicts]
    if failing:
        if _verbosity >= 0:
            notes.print(_e(f"--fail-on {fail_on}: {len(failing)} case(s) " +
                           " or ".join(sorted({c.verdict for c in failing})) + " in B"))
        sys.exit(1)


def _regress(store: Any, devices: list[str] | None, history: bool, min_effect: float, alpha: float,
             metrics: list[str], skipped: list[Any] | None = None) -> list[Any]:
    from results import regress as rg

    if history:
        return rg.history(store, devices=devices, metrics=metrics, min_effect=min_effect, alpha=alpha,
                          skipped=skipped)
    return rg.latest(store, devices=devices, metrics=metrics, min_effect=min_effect, alpha=alpha, skipped=skipped)


def _warn_skipped(skipped: list[Any]) -> None:
    """Say on stderr how many stored values a reader left out, and where."""
    if skipped:
        from results.validate import summarize_bad

        err_console.print(_e("warning: " + summarize_bad(skipped)))


def _confirmed(store: Any, findings: list[Any], rounds: int, min_effect: float, inventory: str | None,
               plugins: tuple[str, ...] = ()) -> list[Any]:
    """Keep improvements, and the regressions that reproduce (or that could not be re-measured, said so)."""
    from devices.inventory import load_inventory
    from harness.confirm import confirm, plugin_records_of
    from harness.plugins import read_plugin

    suspects = [f for f in findings if f.direction == "regression"]
    revisions = {}
    for f in suspects:
        for run_id in (f.run_id, *f.runs_before[-1:]):
            revisions[run_id] = store.get_run(run_id).git_revision
    kept = [f for f in findings if f.direction != "regression"]
    given = [read_plugin(path, "--plugin", key="--plugin") for path in plugins]
    for c in confirm(suspects, load_inventory(inventory), revisions, rounds=rounds, min_effect=min_effect,
                     plugin_records=plugin_records_of(store, suspects), plugins=given):
        err_console.print(("confirmed: " if c.confirmed else "not confirmed: " if c.confirmed is False
                           else "unconfirmed: ") + terminal(f"{c.finding.device} {c.finding.case_hash}: {c.reason}"),
                          markup=False)
        if c.confirmed is not False:
            c.finding.cause = (c.finding.cause + "; " if c.finding.cause else "") + (
                f"confirmed by re-measurement: {c.reason}" if c.confirmed else f"not re-measured: {c.reason}")
            kept.append(c.finding)
    return kept


def _confirm_rounds(value: int) -> int:
    from results.regress import CONFIRM_MIN_ROUNDS

    if 0 < value < CONFIRM_MIN_ROUNDS:
        raise click.BadParameter(f"{value} is too few: a confirmation needs at least {CONFIRM_MIN_ROUNDS} rounds "
                                 "(one process's median can land 20-40% from the next one's on the same code, so "
                                 "fewer prove nothing); 4 suits most", param_hint="'--confirm'")
    return value


metric_option = click.option("--metric", "metrics", multiple=True, default=("latency_ms",), show_default=True,
                             type=click.Choice(["latency_ms", "energy_mj_per_inf", "cos_sim"]))


@cli.command()
@click.option("--devices", "devices_opt", default="", help="Only these devices (comma-separated).")
@click.option("--history", is_flag=True, help="List every change point in the stored history.")
@format_option
@click.option("--min-effect", default=0.05, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Smallest relative change reported (a fraction: 0.05 is 5%).")
@click.option("--alpha", default=0.001, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Significance level.")
@click.option("--confirm", "confirm_rounds", type=click.IntRange(0, 1000), default=0, metavar="ROUNDS",
              callback=lambda ctx, param, value: _confirm_rounds(value),
              help="Re-measure each suspected regression in ROUNDS worker processes per side (at least 3; 4 "
                   "suits most), old and new code alternated, and report only those that reproduce.")
@metric_option
@click.option("--plugin", "plugins", multiple=True, metavar="PATH",
              help="With --confirm: a plugin whose old and new revisions are taken from its own git repository "
                   "(never from a path stored in the database); repeat for several.")
@db_option
@inventory_option
@output_options
def regress(devices_opt: str, history: bool, fmt: str, min_effect: float, alpha: float, confirm_rounds: int,
            metrics: tuple[str, ...], plugins: tuple[str, ...], db: str | None, inventory: str | None) -> None:
    """The newest run per device against its history (exit 1 on regressions), or --history."""
    from harness.report import findings_json, findings_markdown, findings_text

    devices = [d.strip() for d in devices_opt.split(",") if d.strip()] or None
    store = _read_store(db)
    skipped: list[Any] = []
    findings = _regress(store, devices, history, min_effect, alpha, list(metrics), skipped)
    _warn_skipped(skipped)
    if confirm_rounds and not history:
        findings = _confirmed(store, findings, confirm_rounds, min_effect, inventory, plugins)
    mode = "history" if history else "latest"
    if fmt == "json":
        print(findings_json(findings))
    elif fmt == "markdown":
        print(findings_markdown(findings, title="attn-harness regressions", mode=mode))
    else:
        print(terminal(findings_text(findings, mode=mode, verbose=_verbosity > 0), keep_newlines=True))
    if not history and any(f.direction == "regression" for f in findings):
        sys.exit(1)


NIGHTLY_COULD_NOT_CHECK = 3
_NIGHTLY_MEANING = {0: "checked; no regression, every case produced a result or was skipped",
                    1: "regression found, or cases failed or timed out (listed below)",
                    NIGHTLY_COULD_NOT_CHECK: "could not check (see 'Could not check'); no regression was found in "
                                             "what could be checked",
                    130: "interrupted by SIGINT", 143: "interrupted by SIGTERM", 129: "interrupted by SIGHUP"}


@cli.command()
@click.option("--devices", "devices_opt", required=True, help="Comma-separated device names.")
@click.option("--matrix", "matrix", required=True, metavar="FILE", help="Sweep matrix YAML.")
@click.option("--tag", default="nightly", show_default=True)
@click.option("--report", "report_path", default=None, metavar="FILE",
              help="Markdown report (default nightly-<run id>.md).")
@click.option("--min-effect", default=0.05, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--alpha", default=0.001, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True))
@wait_timeout_option
@format_option
@plugin_option
@db_option
@inventory_option
@output_options
def nightly(devices_opt: str, matrix: str, tag: str, report_path: str | None, min_effect: float, alpha: float,
            wait_timeout: float | None, plugins: tuple[str, ...], fmt: str, db: str | None,
            inventory: str | None) -> None:
    """Run the sweep, then regress the newest run against history, then write the markdown report.

    Exit 0: no regression; 1: regression found, or cases failed or timed out; 3: could not check (a device
    could not finish, the database or the check failed); 2: bad input, nothing written. The report is
    written in every case but 2."""
    import os
    import traceback

    from devices.inventory import load_inventory
    from harness.controller import run_sweep
    from harness.report import findings_json, findings_text, nightly_markdown
    from results.exchange import export_rows
    from results.store import open_store

    from workloads.spec import case_label

    devices = [d.strip() for d in devices_opt.split(",") if d.strip()]
    inv = load_inventory(inventory)
    run_sweep(inv, None, devices=devices, matrix_path=matrix, dry_run=True, plugins=plugins)  # validate first
    if report_path and not os.path.isdir(os.path.dirname(os.path.abspath(report_path))):
        raise HarnessError(f"{terminal(report_path)}: the report's folder does not exist; create it or pick another "
                           "--report path")
    could_not_check: list[str] = []
    outcome = None
    findings: list[Any] | None = None
    skipped: list[Any] = []
    problem_rows: list[dict[str, Any]] = []

    def failed(what: str, exc: BaseException) -> None:
        if not isinstance(exc, HarnessError):  # a bug: keep its traceback where a human can find it
            detail = "".join(traceback.format_exception(exc)) if _debug else "rerun with --debug for the traceback"
            err_console.print(_e(f"error: {what} failed unexpectedly: {type(exc).__name__}: {exc}; {detail}"))
        could_not_check.append(f"{what}: {terminal(exc)}")

    store = open_store(db)
    try:
        with _progress(fmt) as view:
            outcome = run_sweep(inv, store, devices=devices, matrix_path=matrix, tag=tag, events=view.event,
                                wait_timeout_s=wait_timeout, plugins=plugins)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 (the nightly job reports instead of dying without a report)
        failed("the sweep", exc)
    if outcome is not None:
        try:
            if fmt == "text":
                _print_summary(store, outcome, resume_hint=_resume_command(outcome.run_id, db, inventory, plugins))
            problem_rows = [r for r in export_rows(store, [outcome.run_id]) if r["status"] != "ok"]
        except Exception as exc:  # noqa: BLE001
            failed("reading the run back", exc)
        for name, d in outcome.devices.items():
            if d.status != "complete":
                could_not_check.append(f"device {terminal(name)} did not finish ({terminal(d.status)}): "
                                       f"{terminal(d.error or 'no error recorded')}")
        could_not_check += [terminal(line) for line in outcome.plugin_problems]
        try:
            findings = _regress(store, devices, False, min_effect, alpha, ["latency_ms"], skipped)
        except Exception as exc:  # noqa: BLE001
            failed("the regression check", exc)
    _warn_skipped(skipped)
    regressed = any(f.direction == "regression" for f in findings or [])
    cases_failed = any(r["status"] in ("failed", "timeout") for r in problem_rows)
    if outcome is not None and outcome.status == "interrupted":
        code = outcome.exit_code  # 130, 143 or 129: the signal that stopped it (systemd sends SIGTERM)
    elif regressed or cases_failed:
        code = 1
    elif could_not_check:
        code = NIGHTLY_COULD_NOT_CHECK
    else:
        code = 0
    run_id = outcome.run_id if outcome is not None else None
    path = report_path or f"nightly-{run_id or datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.md"
    text = nightly_markdown(run_id=run_id, run_status=outcome.status if outcome else None,
                            devices=outcome.devices if outcome else {}, problem_rows=problem_rows,
                            findings=findings, skipped=skipped, could_not_check=could_not_check, exit_code=code,
                            exit_meaning=_NIGHTLY_MEANING[code])
    try:
        with open(path, "w") as fh:
            fh.write(text + "\n")
    except OSError as exc:
        err_console.print(_e(f"error: cannot write the report {path}: {exc.strerror}"))
        code = code if code else NIGHTLY_COULD_NOT_CHECK
    else:
        if _verbosity >= 0:
            (console if fmt == "text" else err_console).print(f"report written to {_e(path)}")
    if fmt == "json":
        print(dumps({"run_id": run_id, "status": outcome.status if outcome else None, "exit_code": code,
                     "exit_meaning": _NIGHTLY_MEANING[code], "report": path,
                     "problems": [{k: r.get(k) for k in ("device", "status", "error", "case_hash")}
                                  | {"case": case_label(r)} for r in problem_rows],
                     "findings": json.loads(findings_json(findings)) if findings is not None else None,
                     "could_not_check": could_not_check}))
    elif fmt == "markdown":
        print(text)
    elif findings is not None:
        print(terminal(findings_text(findings, mode="latest", verbose=_verbosity > 0), keep_newlines=True))
    for line in could_not_check:
        err_console.print(_e(f"could not check: {line}"))
    sys.exit(code)


@cli.command()
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535), help="Port on 127.0.0.1.")
@db_option
@output_options
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
@output_options
def db_upgrade(db: str | None) -> None:
    """Migrate the schema in place to this harness's revision."""
    import os

    from results.store import DEFAULT_DB, Store

    from results.store import database_error
    from sqlalchemy.exc import DBAPIError

    url = db or os.environ.get("HARNESS_DB") or DEFAULT_DB
    try:
        store = Store(url, upgrade=False)
        before, after = store.upgrade(announce=lambda m: console.print(_e(m)))
    except DBAPIError as exc:
        raise database_error(exc, url) from None
    console.print(_e(f"{store.safe_url}: schema at revision {after}" + ("" if before == after else
                                                                       f" (was {before or 'empty'})")))


def main() -> None:
    """Entry point: one place turns a HarnessError (or a database failure) into its message and exit code 2;
    `--debug` or HARNESS_DEBUG=1 adds the traceback."""
    import os

    global _debug
    _debug = "--debug" in sys.argv[1:] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        cli.main(standalone_mode=False)
    except HarnessError as exc:
        _show_traceback()
        # Plain text, unwrapped: scripts grep this, and paths may hold characters rich reads as markup.
        print(f"error: {terminal(exc, keep_newlines=True)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.message = terminal(exc.message, keep_newlines=True)
        exc.show()
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        from sqlalchemy.exc import DBAPIError

        if not isinstance(exc, DBAPIError):
            raise  # a bug: it keeps its traceback
        from results.store import database_error

        _show_traceback()
        url = _db_from_argv() or os.environ.get("HARNESS_DB") or ""
        print(f"error: {terminal(database_error(exc, url), keep_newlines=True)}", file=sys.stderr)
        sys.exit(2)


def _db_from_argv() -> str | None:
    args = sys.argv[1:]
    for i, a in enumerate(args):
        if a == "--db" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--db="):
            return a[5:]
    return None


def _show_traceback() -> None:
    if _debug:
        import traceback

        traceback.print_exc()


if __name__ == "__main__":
    main()
