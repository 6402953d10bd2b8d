"""Harness overhead per case: wall time of a local sweep of 20 small cases minus the time spent measuring.

Measured time per case is the warm-up plus the sampling window the timing protocol reports; everything
else (agent and worker start, probing, input generation, the float64 reference, storing) is overhead.
Target: under 0.3 s per case on a 2-core machine. Prints medians of --repeat sweeps.

    python benchmarks/overhead.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devices.inventory import load_inventory  # noqa: E402
from harness.controller import run_sweep  # noqa: E402
from results.exchange import export_rows  # noqa: E402
from results.store import Store  # noqa: E402
from workloads.matrix import parse_matrix  # noqa: E402

MATRIX = """
name: overhead
defaults: {heads: 4, head_dim: 32}
matrix:
  precision: [fp32, bf16]
  seq_len: [16, 32, 48, 64, 80, 96, 112, 128, 144, 160]
measure: {warmup_s: 0.05, min_time_s: 0.1, min_samples: 5, max_time_s: 5, timeout_s: 60}
"""


def one_sweep(tmp: Path, i: int) -> dict[str, float]:
    store = Store(f"sqlite:///{tmp / f'overhead-{i}.db'}")
    sweep = parse_matrix(MATRIX, "overhead.yaml")
    t0 = time.perf_counter()
    outcome = run_sweep(load_inventory(), store, devices=["local"], sweep=sweep)
    wall = time.perf_counter() - t0
    rows = export_rows(store, [outcome.run_id])
    assert len(rows) == 20 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    measured = sum(r["details"]["warmup_s"] + r["details"]["window_end"] - r["details"]["window_start"] for r in rows)
    return {"wall": wall, "measured": measured, "overhead_per_case": (wall - measured) / len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [one_sweep(Path(tmp), i) for i in range(args.repeat)]
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"sweep of 20 small cases on local, median of {args.repeat}:")
    print(f"  wall time            {med['wall']:.2f} s")
    print(f"  measured (warm-up + window) {med['measured']:.2f} s")
    print(f"  overhead per case    {med['overhead_per_case']:.3f} s  (target < 0.3 s)")
    print("  per sweep:", ", ".join(f"{r['overhead_per_case']:.3f}" for r in results))


if __name__ == "__main__":
    main()
