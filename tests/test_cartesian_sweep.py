"""A cartesian sweep without holes: every combination of known values is planned; those without a kernel are
stored as `skipped` with "not implemented: no kernel for ...; nearest: ...", shown by --dry-run; --strict
restores the refusal; a value no kernel knows stays an error listing the known values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO
from results.exchange import export_rows
from results.store import Store

VARIANTS = ["dense", "sliding_window", "block_sparse", "topk", "lowrank", "differential"]
PRECISIONS = ["fp32", "int8", "int4"]
BACKENDS = ["torch", "onnxruntime"]
# Small shapes and short measurement: the point is that every combination is accounted for.
MATRIX = f"""\
name: cartesian
defaults: {{batch: 1, heads: 2, head_dim: 32, threads: 1, window: 64, block_size: 32, topk: 4, rank: 32}}
matrix:
  variant: [{", ".join(VARIANTS)}]
  precision: [{", ".join(PRECISIONS)}]
  backend: [{", ".join(BACKENDS)}]
  seq_len: [200]
measure: {{warmup_s: 0.01, min_time_s: 0.02, min_samples: 3, max_time_s: 2, timeout_s: 120}}
"""


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DB", "HARNESS_INVENTORY")}
    env.update(PYTHONPATH=str(REPO), HOME=str(cwd), COLUMNS="300")
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def test_a_cartesian_matrix_stores_every_combination_as_ok_or_skipped_with_the_reason(tmp_path: Path) -> None:
    matrix = tmp_path / "cartesian.yaml"
    matrix.write_text(MATRIX)
    db = tmp_path / "results.db"
    plan = harness("run", "--devices", "local", "--matrix", str(matrix), "--dry-run", "--db", f"sqlite:///{db}",
                   cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "local: 36 case(s)" in plan.stdout and "skipped: not implemented: no kernel for" in plan.stdout
    assert not db.exists()
    strict = harness("run", "--devices", "local", "--matrix", str(matrix), "--strict", "--db", f"sqlite:///{db}",
                     cwd=tmp_path)
    assert strict.returncode == 2 and "not implemented: no kernel for" in strict.stderr and not db.exists()

    done = harness("run", "--devices", "local", "--matrix", str(matrix), "--db", f"sqlite:///{db}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = export_rows(Store(f"sqlite:///{db}", upgrade=False))
    assert len(rows) == 36
    combos = {(r["variant"], r["precision"], r["backend"]) for r in rows}
    assert combos == {(v, p, b) for v in VARIANTS for p in PRECISIONS for b in BACKENDS}
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        assert r["status"] in ("ok", "skipped"), (r["variant"], r["precision"], r["backend"], r["error"])
        if r["status"] == "skipped":
            assert r["error"], r
        if r["status"] == "ok":
            assert r["latency_ms_p50"] > 0 and r["cos_sim"] is not None
    unimplemented = [r for r in rows if r["status"] == "skipped" and r["error"].startswith("not implemented")]
    assert unimplemented and all("nearest: " in r["error"] for r in unimplemented)
    assert by_status.get("ok", 0) >= 6  # at least fp32 torch of every variant


def test_a_value_no_kernel_knows_is_refused_with_the_known_values(tmp_path: Path) -> None:
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX.replace("[fp32, int8, int4]", "[fp32, int3]"))
    proc = harness("run", "--devices", "local", "--matrix", str(matrix), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown value 'int3'; allowed: fp32, fp16, bf16, int8, int4, mixed" in proc.stderr
