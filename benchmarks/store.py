"""How fast is the results store at team scale, on SQLite and on PostgreSQL?

1. Import: 100,000 measurements with 20 raw samples each (4 devices x 100 nightly runs x 250 cases, each
   device's night its own run), as `harness results import` gets them (the rows `export` writes), through
   `results.exchange.import_rows`: validation, case canonicalization, dedupe by (run, device, case), one
   transaction. Compared with a plain bulk insert of the same rows by the engine's own driver into an
   identical empty schema: `sqlite3` executemany, psycopg `COPY`. The baseline is timed twice: its driver
   calls alone (tuples built beforehand), and with the minimal conversion a hand-written loader needs
   (tuples built from the same row dicts: samples packed, JSON dumped, times formatted). Target: under 3x.
2. Reads over the imported database: the dashboard's heaviest queries (every device's newest run with
   counts by status; the runs list with counts; one case's series over all runs), `regress` (latest) and
   `regress --history` (every (device, case) series with its raw samples, then change-point detection),
   and `export --all`.

    .venv/bin/python benchmarks/store.py [--measurements 100000] [--samples 20] [--skip-postgres]

PostgreSQL is a throwaway cluster from tests/pg.py (the distribution's binaries; fsync off, as for tests).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from results import queries, regress  # noqa: E402
from results.exchange import export_rows, import_rows  # noqa: E402
from results.models import Measurement  # noqa: E402
from results.store import Store, env_key  # noqa: E402
from workloads.spec import CASE_COLUMNS, canonical_case, case_hash  # noqa: E402

DEVICES = {"rpi4": (180.0, True), "rpi5": (70.0, True), "jetson-orin": (25.0, True), "nuc": (12.0, False)}
PRECISION = {"fp32": 1.0, "fp16": 1.6, "bf16": 0.9, "int8": 0.55, "int4": 0.8}
VARIANT = {"dense": 1.0, "sliding_window": 0.45, "block_sparse": 0.4, "topk": 0.6, "lowrank": 0.3}
SEQ_LENS = (256, 512, 1024, 2048, 4096)


def all_cases() -> list[dict[str, Any]]:
    return [canonical_case({"variant": v, "precision": p, "seq_len": n, "head_dim": d})
            for v in VARIANT for p in PRECISION for n in SEQ_LENS for d in (64, 128)]


def fingerprint(device: str, torch: str) -> dict[str, Any]:
    return {"hostname": device, "arch": "x86_64" if device == "nuc" else "aarch64", "cpu_model": device,
            "board": device, "cores": 4, "isa": ["asimd"], "mem_total_mb": 8000, "os": "Debian 12",
            "kernel": "6.6.31", "python_version": "3.11.2", "torch": torch, "onnxruntime": "1.19.2",
            "numpy": "1.26.4", "governor": "performance"}


def make_rows(n_measurements: int, n_samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows as `harness results export` writes them (and `import` reads them)."""
    rng = np.random.default_rng(seed)
    cases = all_cases()
    per_night = len(DEVICES) * len(cases)
    nights = max(1, n_measurements // per_night)
    t0 = datetime(2026, 1, 1, 2, 0, 0, tzinfo=timezone.utc)
    measure = {"warmup_s": 0.5, "min_time_s": 1.0, "min_samples": n_samples}
    base_ms = {device: np.array([base * (c["seq_len"] / 1024) ** 1.5 * PRECISION[c["precision"]]
                                 * VARIANT[c["variant"]] * c["head_dim"] / 64 for c in cases])
               for device, (base, _) in DEVICES.items()}
    rows = []
    for night in range(nights):
        for device, (base, sensor) in DEVICES.items():
            started = t0 + timedelta(days=night, minutes=7 * len(rows) % 60)
            run_id = uuid.UUID(int=int(rng.integers(2**62)) << 64 | night).hex[:12]
            torch = "2.5.1" if device == "rpi5" and night >= nights * 0.6 else "2.4.1"
            fp = fingerprint(device, torch)
            run = {"run_id": run_id, "started_at": started.isoformat(),
                   "finished_at": (started + timedelta(hours=1)).isoformat(), "run_status": "complete",
                   "matrix": "nightly", "tag": "nightly", "harness_version": "0.1.0", "git_revision": f"{night:040x}",
                   "matrix_text": "name: nightly\n", "measure": measure, "fingerprint": fp,
                   "idle_power_w": 2.1 if sensor else None}
            noise = rng.standard_normal((len(cases), n_samples))
            values_all = np.abs(base_ms[device][:, None] * (1 + 0.02 * noise))
            pcts = np.percentile(values_all, [50, 90, 99], axis=1).T
            means, stds = values_all.mean(axis=1), values_all.std(axis=1, ddof=1)
            for i, case in enumerate(cases):
                row = dict(run, device=device, case_hash=case_hash(case), **{k: case.get(k) for k in CASE_COLUMNS})
                if rng.random() < 0.02:
                    row.update(status="failed", error="RuntimeError: out of memory")
                    rows.append(row)
                    continue
                p50, p90, p99 = pcts[i].tolist()
                err = 1e-3 * (1 + 0.1 * float(noise[i, 0]))
                at = started + timedelta(seconds=2 * i)
                row.update(status="ok", error=None, latency_ms_p50=float(p50), latency_ms_p90=float(p90),
                           latency_ms_p99=float(p99), latency_ms_mean=float(means[i]),
                           latency_ms_std=float(stds[i]), n_samples=n_samples, inner_loops=1,
                           threads_used=4, peak_mem_mb=180.0 + case["seq_len"] / 100, kv_bytes=case["seq_len"] * 512,
                           input_bytes=case["seq_len"] * 1024,
                           energy_mj_per_inf=4.5 * float(p50) if sensor else None,
                           power_w_avg=4.5 if sensor else None, power_source="ina219" if sensor else None,
                           is_estimate=False if sensor else None, cos_sim=1 - err * err / 2, rel_err=abs(err),
                           max_abs_err=abs(err) * 8, rmse=abs(err) / 3, throttled=False,
                           measured_at=at.isoformat(), measured_until=(at + timedelta(seconds=2)).isoformat(),
                           samples_ms=values_all[i].tolist(),
                           details={"calls": n_samples, "stopped_by": "min_samples",
                                    "thermal": {"before": {"max_c": 48.0}, "after": {"max_c": 55.0}}})
                rows.append(row)
    return rows


# -- the baseline: the same rows by the driver alone ----------------------------------------------------
MEAS_COLS = [c.name for c in Measurement.__table__.columns]
RUN_COLS = ["id", "started_at", "finished_at", "status", "matrix_name", "matrix_text", "measure", "tag",
            "harness_version", "git_revision"]


def _t(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).astimezone(timezone.utc).replace(tzinfo=None) if text else None


def baseline_tuples(rows: list[dict[str, Any]], sqlite: bool) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows as plain tuples, the least a hand-written loader does: ids assigned, samples
    packed, JSON dumped, times parsed (and formatted as SQLAlchemy stores them on SQLite)."""
    fmt = (lambda t: t.isoformat(" ", "microseconds") if t else None) if sqlite else (lambda t: t)
    dumps = json.dumps
    devices: dict[str, int] = {}
    cases: dict[str, int] = {}
    runs: dict[str, int] = {}
    parts: dict[tuple[str, str], int] = {}
    out: dict[str, list[tuple[Any, ...]]] = {k: [] for k in ("runs", "devices", "cases", "run_devices",
                                                             "measurements", "samples")}
    for mid, r in enumerate(rows, start=1):
        rid, dev, h = r["run_id"], r["device"], r["case_hash"]
        if rid not in runs:
            runs[rid] = 1
            out["runs"].append((rid, fmt(_t(r["started_at"])), fmt(_t(r["finished_at"])), r["run_status"],
                                r["matrix"], r["matrix_text"], dumps(r["measure"]), r["tag"], r["harness_version"],
                                r["git_revision"]))
        if dev not in devices:
            devices[dev] = len(devices) + 1
            out["devices"].append((devices[dev], dev))
        if h not in cases:
            cases[h] = len(cases) + 1
            params = {k: r[k] for k in CASE_COLUMNS if r.get(k) is not None}
            out["cases"].append((cases[h], h, *[r.get(k) for k in CASE_COLUMNS], dumps(params)))
        if (rid, dev) not in parts:
            parts[(rid, dev)] = len(parts) + 1
            fp = r["fingerprint"]
            out["run_devices"].append((parts[(rid, dev)], rid, devices[dev], "complete", None, dumps(fp),
                                       env_key(fp), r.get("idle_power_w"), r.get("power_source")))
        g = r.get
        details = g("details")
        out["measurements"].append((
            mid, rid, devices[dev], cases[h], r["status"], g("error"), fmt(_t(g("measured_at"))),
            fmt(_t(g("measured_until"))), g("latency_ms_p50"), g("latency_ms_p90"), g("latency_ms_p99"),
            g("latency_ms_mean"), g("latency_ms_std"), g("n_samples"), g("inner_loops"), g("threads_used"),
            g("peak_mem_mb"), g("kv_bytes"), g("input_bytes"), g("energy_mj_per_inf"), g("power_w_avg"),
            g("power_source"), g("is_estimate"), g("cos_sim"), g("rel_err"), g("max_abs_err"), g("rmse"),
            g("throttled"), dumps(details) if details is not None else None))
        s = g("samples_ms")
        if s:
            out["samples"].append((mid, len(s), struct.pack(f"<{len(s)}d", *s)))
    return out


CASE_TABLE_COLS = ["id", "hash", *CASE_COLUMNS, "params"]
RD_COLS = ["id", "run_id", "device_id", "status", "error", "fingerprint", "env_key", "idle_power_w", "power_source"]
TABLE_COLS = {"runs": RUN_COLS, "devices": ["id", "name"], "cases": CASE_TABLE_COLS, "run_devices": RD_COLS,
              "measurements": MEAS_COLS, "samples": ["measurement_id", "n", "values"]}


def _quoted(cols: list[str]) -> str:
    return ", ".join(f'"{c}"' for c in cols)


def sqlite_baseline(path: str, tables: dict[str, list[tuple[Any, ...]]]) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    for table, cols in TABLE_COLS.items():
        conn.executemany(f"INSERT INTO {table} ({_quoted(cols)}) VALUES ({', '.join('?' * len(cols))})",
                         tables[table])
    conn.execute("COMMIT")
    conn.close()


def pg_baseline(dsn: str, tables: dict[str, list[tuple[Any, ...]]]) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            for table, cols in TABLE_COLS.items():
                # Raw samples in binary COPY (bytea as text doubles in size and costs an escape per byte).
                binary = table == "samples"
                with cur.copy(f"COPY {table} ({_quoted(cols)}) FROM STDIN" + (" (FORMAT BINARY)" if binary
                                                                              else "")) as copy:
                    if binary:
                        copy.set_types(["int4", "int4", "bytea"])
                    for row in tables[table]:
                        copy.write_row(row)
        conn.commit()


# -- timing ----------------------------------------------------------------------------------------------
CPU: dict[str, float] = {}  # process CPU seconds of the last `timed` call (SQLite works in-process)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    CPU["last"] = time.process_time() - c
    return time.perf_counter() - t, out


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    return statistics.median(timed(fn)[0] for _ in range(repeat))


def bench_engine(name: str, make_url: Callable[[], str], rows: list[dict[str, Any]], repeat: int,
                 history: bool) -> None:
    sqlite = name == "SQLite"
    n = len(rows)
    # Import through the harness into a fresh database at the current schema.
    url = make_url()
    store = Store(url)
    import_s, counts = timed(lambda: import_rows(store, rows))
    import_cpu = CPU["last"]
    assert counts["measurements_added"] == n, counts
    again_s, again = timed(lambda: import_rows(store, rows[: n // 10]))
    assert again["measurements_added"] == 0, again
    # The baseline into another fresh database at the same schema.
    base_url = make_url()
    Store(base_url).engine.dispose()
    convert_s, tables = timed(lambda: baseline_tuples(rows, sqlite))
    convert_cpu = CPU["last"]
    if sqlite:
        target, load = base_url.split("///", 1)[1], sqlite_baseline
    else:
        from sqlalchemy.engine import make_url as parse

        u = parse(base_url)
        target, load = f"host={u.host} port={u.port} user={u.username} dbname={u.database}", pg_baseline
    driver_s, _ = timed(lambda: load(target, tables))
    driver_cpu = CPU["last"]
    tables.clear()
    how = "sqlite3 executemany" if sqlite else "psycopg COPY"
    print(f"\n{name}: import of {n:,} measurements with samples")
    print(f"  harness import_rows:            {import_s:7.2f} s  ({n / import_s:,.0f} rows/s)")
    print(f"  baseline {how + ':':<22} {driver_s:7.2f} s driver calls + {convert_s:.2f} s building tuples "
          f"= {driver_s + convert_s:.2f} s")
    print(f"  ratio: {import_s / (driver_s + convert_s):.2f}x the plain bulk insert with its conversion, "
          f"{import_s / driver_s:.2f}x its driver calls alone (target < 3x)")
    if sqlite:  # all of SQLite's work is in this process: CPU time is immune to other load on the machine
        print(f"  same in CPU seconds: {import_cpu:.2f} s vs {convert_cpu:.2f} + {driver_cpu:.2f} s: "
              f"{import_cpu / (convert_cpu + driver_cpu):.2f}x, {import_cpu / driver_cpu:.2f}x driver calls alone")
    print(f"  re-import of {n // 10:,} rows already stored (all skipped): {again_s:.2f} s")

    engine = store.engine
    status = queries.device_status(engine)
    device = status["device"].iloc[0]
    chash = rows[len(rows) // 2]["case_hash"]
    print(f"  reads over {n:,} measurements (median of {repeat}):")
    reads: list[tuple[str, Callable[[], Any]]] = [
        ("device status (newest run per device, counts)", lambda: queries.device_status(engine)),
        ("runs list with counts by status", lambda: queries.runs(engine)),
        ("one case's series over all runs (trends)", lambda: queries.series(engine, device, chash)),
        ("noise floor (10 newest runs per device)", lambda: queries.noise_floor(engine)),
        ("regress latest (queries.latest_regressions)", lambda: queries.latest_regressions(engine)),
    ]
    for label, query in reads:
        print(f"    {label + ':':<50} {median_time(query, repeat) * 1000:8.1f} ms")
    load_s, series = timed(lambda: regress.load_series(store))
    points = sum(len(s.points) for s in series)
    print(f"    {'regress --history, loading every series:':<50} {load_s * 1000:8.1f} ms "
          f"({len(series):,} series, {points:,} runs with samples)")
    if history:
        hist_s, found = timed(lambda: regress.history(store))
        print(f"    {'regress --history, load + change points:':<50} {hist_s * 1000:8.1f} ms ({len(found)} found)")
    export_s, exported = timed(lambda: export_rows(store))
    print(f"    {'export --all (rows in memory):':<50} {export_s * 1000:8.1f} ms ({len(exported):,} rows)")
    store.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measurements", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=20, help="raw samples per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per read query (median printed)")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--no-history", action="store_true", help="skip change-point detection (slowest read)")
    args = parser.parse_args()
    # Killed (timeout, Ctrl-C from a wrapper): exit normally so the PostgreSQL cluster is stopped at exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    gen_s, rows = timed(lambda: make_rows(args.measurements, args.samples))
    # The rows live all run long: keep the cyclic GC from rescanning their millions of objects on every
    # collection (it would bill whichever step happened to trigger it).
    gc.collect()
    gc.freeze()
    print(f"{len(rows):,} rows ({len(DEVICES)} devices, {len({r['run_id'] for r in rows})} runs, "
          f"{len(all_cases())} cases, {args.samples} samples each) generated in {gen_s:.1f} s; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    atexit.register(shutil.rmtree, tmp, True)
    counter = iter(range(100))
    bench_engine("SQLite", lambda: f"sqlite:///{tmp / f'bench{next(counter)}.db'}", rows, args.repeat,
                 not args.no_history)
    if not args.skip_postgres:
        import pg

        t = time.perf_counter()
        cluster = pg.shared_cluster()
        print(f"\nPostgreSQL {cluster.bin.parent.name}: throwaway cluster on port {cluster.port} "
              f"(started in {time.perf_counter() - t:.1f} s; fsync off)")
        bench_engine("PostgreSQL", cluster.create_database, rows, args.repeat, not args.no_history)


if __name__ == "__main__":
    main()
