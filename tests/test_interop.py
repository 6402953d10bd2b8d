"""The field's formats, checked against the real libraries: a run exported as pyperf JSON is read by pyperf
(`stats`, `hist`, `compare_to`), and files written by pyperf and by pytest-benchmark import as runs whose
benchmarks are cases of variant external, named as they were named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyperf
import pytest

from helpers import REPO, harness, write_matrix
from results.exchange import export_rows
from results.store import Store

MEASURE = "measure: {warmup_s: 0.02, min_time_s: 0.05, min_samples: 8, max_time_s: 5, timeout_s: 60}"


def pyperf_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyperf", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    home = tmp_path_factory.mktemp("interop")
    db = f"sqlite:///{home / 'r.db'}"
    matrix = write_matrix(home / "m.yaml", "defaults: {heads: 2, head_dim: 16, threads: 1}\nmatrix:\n"
                                           "  precision: [fp32, int8]\n  seq_len: [32]\n"
                                           "include:\n  - {precision: int4, seq_len: 32, group_size: 6}\n", MEASURE)
    for tag in ("a", "b"):
        harness("run", "--devices", "local", "--matrix", str(matrix), "--tag", tag, "--db", db, check=True)
    return db, home


def test_an_exported_run_is_a_pyperf_suite_pyperf_reads_and_compares(two_runs: tuple[str, Path]) -> None:
    db, home = two_runs
    for tag in ("a", "b"):
        proc = harness("results", "export", f"tag:{tag}", "--format", "pyperf", "-o", str(home / f"{tag}.json"),
                       "--db", db)
        assert proc.returncode == 0, proc.stderr
        assert "1 case(s) without raw samples" in proc.stderr  # the skipped int4 case has no values
    suite = pyperf.BenchmarkSuite.load(str(home / "a.json"))
    rows = [r for r in export_rows(Store(db, upgrade=False)) if r["tag"] == "a" and r["status"] == "ok"]
    by_name = {b.get_name(): b for b in suite.get_benchmarks()}
    assert set(by_name) == {"dense fp32 torch L=32 heads=2 head_dim=16 threads=1",
                            "dense int8 torch L=32 heads=2 head_dim=16 threads=1 quant=per_token"}
    for r in rows:
        bench = by_name[next(n for n in by_name if n.startswith(f"dense {r['precision']} "))]
        assert bench.get_unit() == "second"
        assert list(bench.get_values()) == pytest.approx([v / 1000 for v in r["samples_ms"]])
        assert bench.median() == pytest.approx(r["latency_ms_p50"] / 1000)
        assert bench.get_metadata()["loops"] == r["inner_loops"]
    for args in (("stats", str(home / "a.json")), ("hist", str(home / "a.json")),
                 ("compare_to", str(home / "a.json"), str(home / "b.json"))):
        proc = pyperf_cmd(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    compared = pyperf_cmd("compare_to", str(home / "a.json"), str(home / "b.json"), "--table")
    assert "dense fp32 torch L=32" in compared.stdout and "dense int8 torch L=32" in compared.stdout


def _pyperf_file(path: Path) -> dict[str, list[float]]:
    """A suite written by pyperf itself: two benchmarks, two runs each."""
    rng = np.random.default_rng(1)
    values = {"json_dumps": list(0.002 + 0.0001 * rng.random(10)), "regex compile": list(0.0005 + 1e-5 * rng.random(10))}
    benches = []
    for name, vals in values.items():
        runs = [pyperf.Run(vals[i:i + 5], metadata={"name": name, "unit": "second", "loops": 8, "hostname": "ci-box",
                                                    "date": f"2026-11-30 10:0{i // 5}:00.000000",
                                                    "cpu_model_name": "Test CPU"}, collect_metadata=False)
                for i in (0, 5)]
        benches.append(pyperf.Benchmark(runs))
    pyperf.BenchmarkSuite(benches).dump(str(path))
    return values


def test_a_pyperf_file_imports_as_a_run_of_external_cases_and_exports_back(tmp_path: Path) -> None:
    src = tmp_path / "suite.json"
    values = _pyperf_file(src)
    db = f"sqlite:///{tmp_path / 'i.db'}"
    proc = harness("results", "import", str(src), "--tag", "pyperf", "--db", db)
    assert proc.returncode == 0 and "imported 2 measurement(s) in 1 new run(s)" in proc.stdout, proc.stderr
    again = harness("results", "import", str(src), "--tag", "pyperf", "--db", db)
    assert "imported 0 measurement(s) in 0 new run(s); 2 already present" in again.stdout, again.stderr
    shown = json.loads(harness("results", "show", "tag:pyperf", "--format", "json", "--db", db).stdout)
    assert shown["devices"][0]["device"] == "ci-box"  # the file's host name
    results = {r["keys"]["name"]: r for r in shown["results"]}
    assert set(results) == set(values)
    for name, vals in values.items():
        r = results[name]
        assert r["keys"] == {"variant": "external", "name": name} and r["case"] == f"external {name}"
        assert r["latency_ms_p50"] == pytest.approx(float(np.median(vals)) * 1000)
        assert r["n_samples"] == 10
    out = tmp_path / "back.json"
    assert harness("results", "export", "tag:pyperf", "--format", "pyperf", "-o", str(out), "--db", db).returncode == 0
    back = {b.get_name(): b for b in pyperf.BenchmarkSuite.load(str(out)).get_benchmarks()}
    assert set(back) == set(values)
    for name, vals in values.items():
        assert list(back[name].get_values()) == pytest.approx(vals, rel=1e-12)
    proc = pyperf_cmd("compare_to", str(src), str(out))
    assert proc.returncode == 0 and "json_dumps" in proc.stdout, proc.stdout + proc.stderr
    text = harness("results", "show", "tag:pyperf", "--db", db).stdout
    assert "external json_dumps" in text and "external regex compile" in text


BENCH_TEST = """
def test_sort(benchmark):
    benchmark(sorted, list(range(200, 0, -1)))


def test_sum(benchmark):
    benchmark(sum, range(300))
"""


def _pytest_benchmark(tmp_path: Path, save_data: bool) -> dict:
    (tmp_path / "test_bench.py").write_text(BENCH_TEST)
    out = tmp_path / ("with.json" if save_data else "without.json")
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_bench.py", f"--benchmark-json={out}",
            "--benchmark-min-rounds=7", "--benchmark-max-time=0.05", "--benchmark-disable-gc"]
    if save_data:
        args.append("--benchmark-save-data")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"path": out, "data": json.loads(out.read_text())}


def test_a_pytest_benchmark_file_imports_with_its_raw_rounds_or_its_summaries(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    with_data = _pytest_benchmark(tmp_path, save_data=True)
    proc = harness("results", "import", str(with_data["path"]), "--device", "laptop", "--tag", "pb", "--db", db)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(harness("results", "show", "tag:pb", "--format", "json", "--db", db).stdout)
    assert shown["devices"][0]["device"] == "laptop"
    results = {r["keys"]["name"]: r for r in shown["results"]}
    for b in with_data["data"]["benchmarks"]:
        r = results[b["fullname"]]
        assert r["n_samples"] == len(b["stats"]["data"]) == b["stats"]["rounds"]
        assert r["latency_ms_p50"] == pytest.approx(b["stats"]["median"] * 1000)
        assert r["latency_ms_p90"] is not None  # from the raw rounds
    without = _pytest_benchmark(tmp_path, save_data=False)
    # files saved by `--benchmark-autosave` (and older versions' --benchmark-json) hold no raw rounds
    for b in without["data"]["benchmarks"]:
        b["stats"].pop("data", None)
    without["path"].write_text(json.dumps(without["data"]))
    proc = harness("results", "import", str(without["path"]), "--tag", "pb2", "--db", db)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(harness("results", "show", "tag:pb2", "--format", "json", "--db", db).stdout)
    for b in without["data"]["benchmarks"]:
        (r,) = [x for x in shown["results"] if x["keys"]["name"] == b["fullname"]]
        assert r["latency_ms_p50"] == pytest.approx(b["stats"]["median"] * 1000)
        assert r["latency_ms_mean"] == pytest.approx(b["stats"]["mean"] * 1000)
        assert r["latency_ms_p90"] is None and r["latency_ms_p99"] is None  # never made up
    compare = harness("compare", "tag:pb", "tag:pb2", "--db", db, "--force")
    assert compare.returncode == 0 and "external test_bench.py::test_sort" in compare.stdout, compare.stderr


@pytest.mark.parametrize("doc, words", [
    ({"version": "1.0", "benchmarks": [{"metadata": {"name": "x"}, "runs": [{"values": ["fast"]}]}]},
     "benchmarks[0].runs[0].values[0]"),
    ({"version": "1.0", "benchmarks": [{"metadata": {"name": "x", "unit": "byte"}, "runs": [{"values": [1]}]}]},
     "only timings"),
    ({"version": "1.0", "benchmarks": [{"runs": [{"values": [0.1]}]}]}, "every pyperf benchmark has a name"),
    ({"machine_info": {}, "benchmarks": [{"fullname": "t", "stats": {"median": -1}}]}, "latency_ms_p50"),
    ({"something": "else"}, "none of them"),
])
def test_a_malformed_foreign_file_is_refused_naming_where(tmp_path: Path, doc: dict, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    proc = harness("results", "import", str(path), "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "x.db").exists()
