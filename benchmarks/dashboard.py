"""How fast does each dashboard page render the first time, with 100,000 stored measurements?

Fills a SQLite database (schema by the harness's migrations) with realistic nightly history, inserted in
bulk with SQLAlchemy Core: 4 devices x 100 nightly runs x 250 cases = 100,000 measurements, each with
20-60 raw samples, accuracy, peak memory, energy on the devices that have a sensor, ~2% failed or
skipped cases, a torch upgrade on one device, and planted 12% slowdowns in the newest runs of 1% of the
series. Then it renders every page with Streamlit's AppTest, clearing Streamlit's caches before each
render (a first render: nothing cached, every query runs), and prints the median, min and max per page.

    .venv/bin/python benchmarks/dashboard.py [--measurements 100000] [--repeat 5] [--db PATH [--reuse]] [--keep]

The Python modules are imported once by a warm-up render that is not counted (a server has them loaded
after its first page); that cold-process time is printed separately. Each new AppTest also scans every
installed package's metadata for Streamlit components (about 2 s here); a server does that once at start,
so after the warm-up the benchmark skips the scan and times the page script itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from results.models import Case, Device, Measurement, Run, RunDevice, SampleSet  # noqa: E402
from results.store import Store, env_key, pack_samples  # noqa: E402
from workloads.spec import canonical_case, case_hash  # noqa: E402

PAGES = ("overview", "compare", "scaling", "tradeoffs", "trends", "run_detail")
DEVICES = {  # name: (cpu model, base ms at L=1024 dense fp32, has a power sensor)
    "rpi4": ("Cortex-A72", 180.0, True), "rpi5": ("Cortex-A76", 70.0, True),
    "jetson-orin": ("Cortex-A78AE", 25.0, True), "nuc": ("Intel N100", 12.0, False),
}
PRECISION_FACTOR = {"fp32": 1.0, "fp16": 1.6, "bf16": 0.9, "int8": 0.55, "int4": 0.8}
PRECISION_ERR = {"fp32": 2e-7, "fp16": 4e-4, "bf16": 3e-3, "int8": 9e-3, "int4": 4e-2}
VARIANT_FACTOR = {"dense": 1.0, "sliding_window": 0.45, "block_sparse": 0.4, "topk": 0.6, "lowrank": 0.3}
SEQ_LENS = (256, 512, 1024, 2048, 4096)


def cases() -> list[dict]:
    out = []
    for variant in VARIANT_FACTOR:
        for precision in PRECISION_FACTOR:
            for seq_len in SEQ_LENS:
                for head_dim in (64, 128):
                    out.append(canonical_case({"variant": variant, "precision": precision, "seq_len": seq_len,
                                               "head_dim": head_dim}))
    return out


def fingerprint(device: str, torch: str) -> dict:
    cpu, _, _ = DEVICES[device]
    return {"hostname": device, "arch": "x86_64" if device == "nuc" else "aarch64", "cpu_model": cpu,
            "board": device, "cores": 4, "isa": ["asimd", "asimddp"], "mem_total_mb": 8000,
            "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.6.31", "python_version": "3.11.2", "torch": torch,
            "onnxruntime": "1.19.2", "numpy": "1.26.4", "cuda_device": None, "governor": "performance"}


def fill(url: str, n_measurements: int, seed: int = 0) -> dict[str, int]:
    """Bulk-insert the synthetic history; returns row counts."""
    store = Store(url)  # creates the schema through the migrations
    rng = np.random.default_rng(seed)
    all_cases = cases()
    per_run = len(DEVICES) * len(all_cases)
    n_runs = max(1, n_measurements // per_run)
    regressed = {(d, i) for d in DEVICES for i in range(len(all_cases)) if rng.random() < 0.01}
    t0 = datetime(2026, 1, 1, 2, 0, 0)
    engine = store.engine
    m_tab, s_tab = Measurement.__table__, SampleSet.__table__
    blank = {c.name: None for c in m_tab.columns}  # executemany needs the same keys in every row
    with engine.begin() as conn:
        conn.execute(Device.__table__.insert(), [{"id": i + 1, "name": d} for i, d in enumerate(DEVICES)])
        conn.execute(Case.__table__.insert(), [
            {"id": i + 1, "hash": case_hash(c), "variant": c["variant"], "precision": c["precision"],
             "backend": c["backend"], "scope": c["scope"], "seq_len": c["seq_len"], "batch": c["batch"],
             "heads": c["heads"], "head_dim": c["head_dim"], "inputs": c["inputs"], "window": c.get("window"),
             "block_size": c.get("block_size"), "density": c.get("density"), "topk": c.get("topk"),
             "rank": c.get("rank"), "quant": c.get("quant"), "group_size": c.get("group_size"), "params": c}
            for i, c in enumerate(all_cases)])
    mid = 0
    for r in range(n_runs):
        started = t0 + timedelta(days=r)
        run_id = uuid.uuid4().hex[:12]
        rows, samples, rds = [], [], []
        for d_index, (device, (_, base, sensor)) in enumerate(DEVICES.items()):
            torch = "2.5.1" if device == "rpi5" and r >= n_runs * 0.6 else "2.4.1"
            fp = fingerprint(device, torch)
            stable = {k: fp.get(k) for k in ("arch", "cpu_model", "board", "cores", "isa", "mem_total_mb", "os",
                                             "kernel", "python_version", "torch", "onnxruntime", "numpy",
                                             "cuda_device")}
            rds.append({"run_id": run_id, "device_id": d_index + 1, "status": "complete", "fingerprint": fp,
                        "env_key": env_key(stable), "idle_power_w": 2.1 if sensor else None,
                        "power_source": "ina219" if sensor else None})
            for c_index, case in enumerate(all_cases):
                mid += 1
                status = "ok"
                u = rng.random()
                if u < 0.01:
                    status = "failed"
                elif u < 0.02:
                    status = "skipped"
                row = dict(blank, id=mid, run_id=run_id, device_id=d_index + 1, case_id=c_index + 1, status=status,
                           started_at=started, finished_at=started + timedelta(seconds=2))
                if status != "ok":
                    row["error"] = ("RuntimeError: out of memory while allocating the attention matrix"
                                    if status == "failed" else "dense/int4/torch: needs torch._int_mm")
                    rows.append(row)
                    continue
                scale = (case["seq_len"] / 1024) ** (2 if case["variant"] == "dense" else 1.2)
                median = (base * scale * PRECISION_FACTOR[case["precision"]] * VARIANT_FACTOR[case["variant"]]
                          * case["head_dim"] / 64)
                if torch == "2.5.1":
                    median *= 0.97
                if (device, c_index) in regressed and r >= n_runs - 3:
                    median *= 1.12
                n = int(rng.integers(20, 61))
                values = median * (1 + 0.02 * rng.standard_normal(n)) * (1 + 0.01 * rng.standard_normal())
                values = np.abs(values)
                p50, p90, p99 = np.percentile(values, [50, 90, 99])
                err = PRECISION_ERR[case["precision"]] * (1 + 0.1 * rng.standard_normal())
                power = 4.5 + rng.random() if sensor else None
                row.update(latency_ms_p50=float(p50), latency_ms_p90=float(p90), latency_ms_p99=float(p99),
                           latency_ms_mean=float(values.mean()), latency_ms_std=float(values.std(ddof=1)),
                           n_samples=n, inner_loops=1, threads=4,
                           peak_mem_mb=180 + 4e-5 * case["seq_len"] ** 2 * case["head_dim"] / 64,
                           energy_mj_per_inf=power * p50 if sensor else None, power_w_avg=power,
                           power_source="ina219" if sensor else None, is_estimate=False if sensor else None,
                           cos_sim=1 - err ** 2 / 2, rel_err=abs(err), max_abs_err=abs(err) * 8, rmse=abs(err) / 3,
                           throttled=False,
                           details={"power": {"rail": "5V", "samples": 400} if sensor else None,
                                    "thermal": {"before": {"max_c": 48.0}, "after": {"max_c": 55.0}}})
                rows.append(row)
                samples.append({"measurement_id": mid, "n": n, "values": pack_samples([float(v) for v in values])})
        with engine.begin() as conn:
            conn.execute(Run.__table__.insert(), [{
                "id": run_id, "started_at": started, "finished_at": started + timedelta(hours=1),
                "status": "complete", "matrix_name": "nightly", "matrix_text": "", "measure": {}, "tag": "nightly",
                "harness_version": "0.1.0", "git_revision": f"{r:040x}"}])
            conn.execute(RunDevice.__table__.insert(), rds)
            conn.execute(m_tab.insert(), rows)
            conn.execute(s_tab.insert(), samples)
    engine.dispose()
    return {"runs": n_runs, "devices": len(DEVICES), "cases": len(all_cases), "measurements": mid}


def render(page: str, timeout: float = 120.0) -> float:
    """Seconds for one first render of a page (Streamlit caches cleared first)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / f"{page}.py"), default_timeout=timeout)
    t = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - t
    if at.exception:
        raise SystemExit(f"{page} raised: {at.exception[0].value}")
    if not at.metric:
        raise SystemExit(f"{page} showed no metrics: {[e.value for e in at.error]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measurements", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5, help="first renders per page (median reported)")
    parser.add_argument("--db", default=None, help="SQLite file to fill (default: a temp file)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="render against --db as it is, without refilling")
    args = parser.parse_args()
    logging.getLogger("streamlit").setLevel(logging.ERROR)

    tmp = tempfile.mkdtemp(prefix="dash-bench-")
    path = Path(args.db or Path(tmp) / "bench.db")
    url = f"sqlite:///{path}"
    if args.reuse and path.exists():
        print(f"reusing {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    else:
        path.unlink(missing_ok=True)
        t = time.perf_counter()
        counts = fill(url, args.measurements)
        print(f"filled {path} in {time.perf_counter() - t:.1f} s: {counts['measurements']:,} measurements "
              f"({counts['runs']} runs x {counts['devices']} devices x {counts['cases']} cases), "
              f"{path.stat().st_size / 2**20:.0f} MiB")
    os.environ["HARNESS_DB"] = url
    t = time.perf_counter()
    cold = render("overview")
    print(f"cold process (imports + first overview render): {time.perf_counter() - t:.2f} s (render {cold:.2f} s)")
    from streamlit.components.v2.component_manager import BidiComponentManager

    # A server scans for components once at start; AppTest would rescan for every page (see the docstring).
    BidiComponentManager.discover_and_register_components = lambda self, *a, **k: None  # type: ignore[method-assign]
    print(f"first render per page, {args.repeat} repetitions, caches cleared before each, on {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f}):")
    print(f"{'page':<12} {'median s':>9} {'min s':>7} {'max s':>7}  target < 2 s")
    for page in PAGES:
        times = [render(page) for _ in range(args.repeat)]
        med = statistics.median(times)
        print(f"{page:<12} {med:>9.2f} {min(times):>7.2f} {max(times):>7.2f}  {'ok' if med < 2 else 'OVER'}")
    if args.keep or args.db:
        print(f"database kept at {path}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
