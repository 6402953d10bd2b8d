"""Property-based fuzzing of the three input boundaries and the CLI: generated YAML, JSON and CSV, near-valid
and broken, must come out as a result or as a `HarnessError` (exit 0 or 2), never as another exception (a
traceback), and a refused import never writes.

Example counts are bounded so the module runs in well under a minute; the hostile corpus
(tests/test_hostile_inputs.py) holds the cases found worth keeping.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.inventory import parse_inventory
from helpers import REPO
from results.exchange import COLUMNS, prepare_import, read_rows
from workloads.errors import HarnessError
from workloads.matrix import parse_matrix
from workloads.yamlload import load_yaml

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
CLI = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])

MATRIX_WORDS = ["name", "defaults", "matrix", "exclude", "include", "measure", "variant", "precision", "backend",
                "seq_len", "batch", "heads", "head_dim", "window", "rank", "quant", "warmup_s", "timeout_s",
                "max_time_s", "min_samples", "dense", "fp32", "int8", "torch"]
INVENTORY_WORDS = ["devices", "known_hosts", "local", "rpi4", "host", "port", "user", "python", "workdir", "tags",
                   "power", "sensor", "rapl", "connect_timeout_s"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["dense", "fp32", "int8", "torch", "onnxruntime", "per_block", "local", "10.0.0.1", ".nan"]))


def documents(words: list[str]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.sampled_from(words), st.text(max_size=6))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=6)), max_leaves=30)


def yaml_texts(words: list[str]) -> st.SearchStrategy[str]:
    """YAML dumped from generated documents, sometimes cut, spliced with anchors and aliases or noise."""
    dumped = documents(words).map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    noise = st.sampled_from(["&a [x, *a]", "*nope", "a: &x [1, 2]\nb: [*x, *x]", "\x00", "\t", "{{", "- - -",
                             "key: value\nkey: again", "!!python/object:os.system", "<<: *a", ": :", "'", "\"\\",
                             "9" * 30, ".inf", "%YAML 9.9\n---"])

    def splice(parts: tuple[str, int, str]) -> str:
        text, at, extra = parts
        at = at % (len(text) + 1)
        return text[:at] + extra + text[at:]

    return st.one_of(dumped, st.tuples(dumped, st.integers(0, 10_000), noise).map(splice), st.text(max_size=200))


@FAST
@given(yaml_texts(MATRIX_WORDS))
def test_the_matrix_loader_returns_a_sweep_or_a_harness_error(text: str) -> None:
    try:
        sweep = parse_matrix(text, "fuzz.yaml")
    except HarnessError as exc:
        assert "fuzz.yaml" in str(exc)
    else:
        assert sweep.cases and all(isinstance(c, dict) for c in sweep.cases)


@FAST
@given(yaml_texts(INVENTORY_WORDS))
def test_the_inventory_loader_returns_an_inventory_or_a_harness_error(text: str) -> None:
    try:
        data, located = load_yaml(text, "devices.yaml")
        inv = parse_inventory(data, "devices.yaml", located)
    except HarnessError as exc:
        assert "devices.yaml" in str(exc)
    else:
        assert "local" in inv.devices


# -- import files ---------------------------------------------------------------------------------------
GOOD = {"run_id": "a1b2c3d4e5f6", "started_at": "2026-01-01T02:00:00+00:00", "run_status": "complete",
        "matrix": "m", "harness_version": "0.1.0", "device": "rpi4", "status": "ok", "variant": "dense",
        "precision": "fp32", "backend": "torch", "seq_len": 64, "samples_ms": [1.0, 1.1, 1.2]}
values = st.one_of(scalars, st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
                   st.dictionaries(st.text(max_size=4), scalars, max_size=3))
rows = st.lists(st.dictionaries(st.sampled_from(list(COLUMNS) + ["bogus"]), values, max_size=6)
                .map(lambda changes: {**GOOD, **changes}), min_size=1, max_size=4)


def _csv_text(data: list[dict[str, Any]]) -> str:
    columns = sorted({c for r in data for c in r})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in data:
        writer.writerow([json.dumps(r[c]) if isinstance(r.get(c), (list, dict)) else "" if r.get(c) is None
                         else str(r[c]) for c in columns])
    return out.getvalue()


files = st.one_of(
    rows.map(lambda d: ("json", json.dumps(d))),  # Python's json writes NaN and Infinity: they must be refused
    rows.map(lambda d: ("csv", _csv_text(d))),
    st.text(max_size=300).map(lambda t: ("json", t)), st.text(max_size=300).map(lambda t: ("csv", t)),
    st.binary(max_size=200).map(lambda b: ("csv", b.decode("latin-1"))))


@FAST
@given(files)
def test_the_import_reader_returns_rows_or_a_harness_error(file: tuple[str, str]) -> None:
    ext, text = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz.{ext}"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            prepared = prepare_import(read_rows(str(path)), str(path))
        except HarnessError as exc:
            assert "fuzz." in str(exc)
            return
    for row in prepared.rows:  # what passed is storable: finite, in range
        for value in row.values:
            assert not (isinstance(value, float) and not math.isfinite(value))


# -- the CLI ----------------------------------------------------------------------------------------------
def _cli(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DB", "HARNESS_INVENTORY")}
    env.update(PYTHONPATH=str(REPO), HOME=cwd)
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@CLI
@given(yaml_texts(MATRIX_WORDS))
def test_the_cli_exits_0_or_2_on_generated_matrices_and_writes_nothing(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "m.yaml").write_text(text)
        proc = _cli("run", "--devices", "local", "--matrix", "m.yaml", "--dry-run", "--db",
                    f"sqlite:///{tmp}/r.db", cwd=tmp)
        assert proc.returncode in (0, 2), proc.stderr
        assert "Traceback" not in proc.stderr
        assert not Path(tmp, "r.db").exists()


@CLI
@given(files)
def test_the_cli_exits_0_or_2_on_generated_imports_and_writes_nothing_on_2(file: tuple[str, str]) -> None:
    ext, text = file
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, f"in.{ext}").write_text(text, encoding="utf-8", errors="surrogateescape")
        proc = _cli("results", "import", f"in.{ext}", "--db", f"sqlite:///{tmp}/r.db", cwd=tmp)
        assert proc.returncode in (0, 2), proc.stderr
        assert "Traceback" not in proc.stderr
        if proc.returncode == 2:
            assert not Path(tmp, "r.db").exists()
