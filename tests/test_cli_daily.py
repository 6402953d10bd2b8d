"""Everyday use of the CLI, through the real command in a subprocess, against two real runs on `local`:
run references, `results list` filters, `--format text|json|markdown`, `compare --fail-on`, tables that fit
80 columns, colour, --quiet/-v, the test-only key kept out of sight, a fast `harness kernels`, readable
regress findings."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from helpers import HARNESS, REPO, harness, write_matrix
from harness.numfmt import cosine, num

BODY = "defaults: {heads: 2, head_dim: 16, threads: 1}\nmatrix:\n  precision: [fp32, int8]\n  seq_len: [32, 64]\n"
MEASURE = "measure: {warmup_s: 0.02, min_time_s: 0.1, min_samples: 10, max_time_s: 5, timeout_s: 60}"


class Runs:
    def __init__(self, db: str, base: str, cand: str, home: Path) -> None:
        self.db, self.base, self.cand, self.home = db, base, cand, home


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    home = tmp_path_factory.mktemp("daily")
    db = f"sqlite:///{home / 'daily.db'}"
    matrix = write_matrix(home / "m.yaml", BODY, MEASURE)
    base = harness("run", "--devices", "local", "--matrix", str(matrix), "--tag", "base", "--db", db,
                   "--format", "json", check=True)
    # fp32 kernels do 6x the work in the candidate: a planted slowdown the comparison must find
    cand = harness("run", "--devices", "local", "--matrix", str(matrix), "--tag", "cand", "--db", db,
                   "--format", "json", env={"HARNESS_TEST_SLOWDOWN": "fp32=6"}, check=True)
    return Runs(db, json.loads(base.stdout)["run"]["run_id"], json.loads(cand.stdout)["run"]["run_id"], home)


def h(runs: Runs, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return harness(*args, "--db", runs.db, env=env)


# -- run references ---------------------------------------------------------------------------------------
def test_every_kind_of_run_reference_names_the_run_it_should(runs: Runs) -> None:
    for ref, want in (("latest", runs.cand), ("latest~1", runs.base), ("previous", runs.base),
                      ("latest@local", runs.cand), ("latest@local~1", runs.base), ("tag:base", runs.base),
                      ("base", runs.base), ("cand", runs.cand), (runs.base[:7], runs.base), (runs.cand, runs.cand)):
        shown = h(runs, "results", "show", ref, "--format", "json")
        assert shown.returncode == 0, (ref, shown.stderr)
        assert json.loads(shown.stdout)["run"]["run_id"] == want, ref


@pytest.mark.parametrize("ref, words", [("tag:nope", "no run tagged 'nope'"), ("latest~9", "there are not 10 run(s)"),
                                        ("latest@pi4", "with device pi4"), ("zzz", "does not exist"),
                                        ("latest~x", "is not latest, latest~N or latest@DEVICE")])
def test_a_reference_that_names_no_run_says_why_and_exits_2(runs: Runs, ref: str, words: str) -> None:
    proc = h(runs, "results", "show", ref)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_compare_takes_tags_and_resume_takes_references(runs: Runs) -> None:
    proc = h(runs, "compare", "tag:base", "tag:cand", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["run_a"], got["run_b"]) == (runs.base, runs.cand) and got["comparable"] is True
    resumed = h(runs, "run", "--resume", "tag:base")
    assert resumed.returncode == 2 and f"run {runs.base} is complete" in resumed.stderr


# -- results list ------------------------------------------------------------------------------------------
def test_results_list_filters_by_tag_device_status_and_date(runs: Runs) -> None:
    def ids(*args: str) -> list[str]:
        proc = h(runs, "results", "list", "--format", "json", *args)
        assert proc.returncode == 0, proc.stderr
        return [r["run_id"] for r in json.loads(proc.stdout)]

    assert ids() == [runs.cand, runs.base]
    assert ids("--tag", "base") == [runs.base]
    assert ids("--device", "local") == [runs.cand, runs.base] and ids("--device", "pi4") == []
    assert ids("--status", "complete") == [runs.cand, runs.base] and ids("--status", "failed") == []
    assert ids("--since", "1d") == [runs.cand, runs.base] and ids("--until", "2000-01-01") == []
    assert ids("--since", "2999-01-01T00:00") == []
    bad = h(runs, "results", "list", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "neither a UTC date or time" in bad.stderr
    listed = json.loads(h(runs, "results", "list", "--format", "json", "--tag", "cand").stdout)[0]
    assert set(listed) == {"run_id", "started_at", "status", "matrix", "tag", "devices", "emulated", "counts", "error"}
    assert listed["counts"] == {"ok": 4} and listed["devices"] == ["local"]


# -- formats ----------------------------------------------------------------------------------------------
def _md_tables(text: str) -> list[list[list[str]]]:
    """The tables a markdown viewer renders from `text`: rows of cell texts, header row first."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables: list[list[list[str]]] = []
    row: list[str] | None = None
    for t in tokens:
        if t.type == "table_open":
            tables.append([])
        elif t.type == "tr_open":
            row = []
        elif t.type == "inline" and row is not None:
            row.append(t.content)
        elif t.type == "tr_close" and row is not None:
            tables[-1].append(row)
            row = None
    return tables


def test_compare_markdown_renders_as_a_table_and_fail_on_slower_exits_1(runs: Runs) -> None:
    proc = h(runs, "compare", "tag:base", "tag:cand", "--format", "markdown", "--fail-on", "slower")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (table,) = _md_tables(proc.stdout)
    assert table[0] == ["device", "case", "A p50 ms", "B p50 ms", "speedup", "95% CI", "verdict"]
    verdicts = {row[1]: row[6].split(" (")[0] for row in table[1:]}
    assert len(verdicts) == 4
    assert all(v == "slower" for c, v in verdicts.items() if " fp32 " in c), verdicts  # 6x the work
    assert "--fail-on slower" in proc.stderr and "slower in B" in proc.stderr
    ok = h(runs, "compare", "tag:base", "tag:cand", "--format", "markdown")
    assert ok.returncode == 0  # without --fail-on a slower case is reported, not an error
    # The other way round the planted fp32 cases got faster; the exit code follows whatever the unplanted
    # (int8) cases' verdicts are, since two runs minutes apart may honestly differ by more than 5%.
    faster = h(runs, "compare", "tag:cand", "tag:base", "--fail-on", "slower")
    reverse = json.loads(h(runs, "compare", "tag:cand", "tag:base", "--format", "json").stdout)
    verdicts = {c["label"]: c["verdict"] for c in reverse["cases"]}
    assert all(v == "faster" for c, v in verdicts.items() if " fp32 " in c), verdicts
    assert faster.returncode == (1 if "slower" in verdicts.values() else 0), faster.stdout
    bad = h(runs, "compare", "tag:base", "tag:cand", "--fail-on", "slowish")
    assert bad.returncode == 2 and "slowish" in bad.stderr


def test_every_results_command_prints_json_and_markdown(runs: Runs) -> None:
    show = json.loads(h(runs, "results", "show", "tag:base", "--format", "json").stdout)
    assert set(show) == {"run", "devices", "results"} and len(show["results"]) == 4
    first = show["results"][0]
    assert {"device", "case", "keys", "status", "latency_ms_p50", "cos_sim", "cpu_other"} <= set(first)
    assert show["devices"] == [{"device": "local", "status": "complete", "error": None, "emulated": False}]
    (table,) = _md_tables(h(runs, "results", "show", "tag:base", "--format", "markdown").stdout)
    assert table[0][:4] == ["device", "case", "status", "p50 ms"] and len(table) == 5
    (listed,) = _md_tables(h(runs, "results", "list", "--format", "markdown").stdout)
    assert [r[0] for r in listed[1:]] == [runs.cand, runs.base]
    kernels = harness("kernels", "--format", "json")
    assert {"variant": "dense", "precision": "int8", "backend": "torch", "scope": "core"}.items() <= \
        [k for k in json.loads(kernels.stdout) if (k["variant"], k["precision"], k["backend"], k["scope"]) ==
         ("dense", "int8", "torch", "core")][0].items()
    (ktable,) = _md_tables(harness("kernels", "--format", "markdown").stdout)
    assert ktable[0] == ["variant", "precision", "backend", "scope", "needs", "from", "computes"]
    check = harness("devices", "check", "local", "--format", "json")
    (local,) = json.loads(check.stdout)
    assert check.returncode == 0 and local["device"] == "local" and local["reachable"] is True
    assert "arch" in local["probe"]
    listed_devices = json.loads(harness("devices", "list", "--offline", "--format", "json").stdout)
    assert listed_devices[0]["name"] == "local"


# -- tables that fit ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("columns", ["80", "60"])
def test_a_narrow_terminal_shows_every_number_whole(runs: Runs, columns: str) -> None:
    proc = h(runs, "results", "show", "tag:base", env={"COLUMNS": columns})
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("(left out")[0]
    assert "…" not in proc.stdout
    assert all(len(line) <= int(columns) for line in table.splitlines()), table
    rows = json.loads(h(runs, "results", "show", "tag:base", "--format", "json").stdout)["results"]
    lines = table.splitlines()
    for r in rows:
        # the median is never left out, and each value sits whole on one line of the table
        assert any(num(r["latency_ms_p50"]) in line for line in lines), (num(r["latency_ms_p50"]), table)
        if "cos" in table:
            assert any(cosine(r["cos_sim"]) in line for line in lines), (cosine(r["cos_sim"]), table)
    if columns == "60":
        assert "left out for the terminal's width" in proc.stdout


def test_the_list_keeps_run_ids_and_times_whole_at_80_columns(runs: Runs) -> None:
    proc = h(runs, "results", "list", env={"COLUMNS": "80"})
    assert runs.base in proc.stdout and runs.cand in proc.stdout
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())


def _in_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """What the CLI writes to a real pseudo-terminal (colour is decided there, not on a pipe)."""
    master, slave = pty.openpty()
    full = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", TERM="xterm-256color", **env)
    full.pop("NO_COLOR", None) if "NO_COLOR" not in env else None
    proc = subprocess.Popen(HARNESS + args, stdout=slave, stderr=slave, env=full)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    return out.decode(errors="replace")


def test_colour_follows_the_terminal_no_color_and_the_flag(runs: Runs) -> None:
    args = ["results", "show", "tag:base", "--db", runs.db]
    assert "\x1b[" in _in_a_terminal(args, {})  # a terminal gets colour (status column, notes)
    assert "\x1b[3" not in _in_a_terminal(args, {"NO_COLOR": "1"})  # no colour codes under NO_COLOR
    assert "\x1b[3" not in _in_a_terminal(args + ["--color", "never"], {})
    piped = h(runs, "results", "show", "tag:base", "--color", "always")
    assert "\x1b[" in piped.stdout  # the flag beats the pipe
    assert "\x1b[" in harness("--color", "always", "results", "show", "tag:base", "--db", runs.db,
                              env={"NO_COLOR": "1"}).stdout  # and NO_COLOR (no-color.org: flags win)
    assert "\x1b[" not in h(runs, "results", "show", "tag:base").stdout  # a pipe gets none by default


# -- quiet and verbose ------------------------------------------------------------------------------------
def test_quiet_prints_only_results_and_verbose_more(runs: Runs, tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "one.yaml", "defaults: {heads: 2, head_dim: 16, threads: 1}\nmatrix:\n"
                                                 "  seq_len: [32]\n", MEASURE)
    db = f"sqlite:///{tmp_path / 'q.db'}"
    quiet = harness("-q", "run", "--devices", "local", "--matrix", str(matrix), "--db", db)
    assert quiet.returncode == 0, quiet.stderr
    assert " eta " not in quiet.stdout + quiet.stderr  # no progress bar
    assert quiet.stdout.count("run id ") == 1  # the summary's line, not the progress display's
    verbose = harness("run", "-v", "--devices", "local", "--matrix", str(matrix), "--db", db)
    assert verbose.returncode == 0 and "ok local dense fp32" in verbose.stdout, verbose.stdout
    export = harness("results", "export", "latest", "-o", str(tmp_path / "x.csv"), "--db", db, "-q")
    assert export.returncode == 0 and export.stderr == ""


# -- the test-only key ------------------------------------------------------------------------------------
def test_the_test_only_slowdown_key_is_not_offered_or_exported(runs: Runs, tmp_path: Path) -> None:
    bad = write_matrix(tmp_path / "bad.yaml", "matrix:\n  precison: [fp32]\n")
    proc = harness("run", "--devices", "local", "--matrix", str(bad), "--dry-run")
    assert proc.returncode == 2 and "did you mean 'precision'" in proc.stderr
    allowed = proc.stderr.split("allowed:")[1]
    assert "slowdown" not in allowed and "variant" in allowed
    header = h(runs, "results", "export", "tag:base", "--format", "csv").stdout.splitlines()[0].split(",")
    assert "slowdown" not in header and "seq_len" in header
    rows = json.loads(h(runs, "results", "export", "tag:base", "--format", "json").stdout)
    assert "slowdown" not in rows[0]
    # still there for the tests that plant slowdowns: a matrix may use it, and its export round-trips
    planted = write_matrix(tmp_path / "p.yaml", "defaults: {heads: 2, head_dim: 16}\nmatrix:\n  seq_len: [32]\n"
                                                "include:\n  - {seq_len: 32, slowdown: 2}\n", MEASURE)
    db = f"sqlite:///{tmp_path / 'p.db'}"
    assert harness("run", "--devices", "local", "--matrix", str(planted), "--db", db).returncode == 0
    csv_text = harness("results", "export", "latest", "--db", db).stdout
    assert "slowdown" in csv_text.splitlines()[0]


# -- external cases cannot be run ---------------------------------------------------------------------------
def test_a_matrix_cannot_run_an_imported_benchmark(tmp_path: Path) -> None:
    for body in ("matrix:\n  variant: [external]\n", "matrix:\n  seq_len: [32]\n  name: [x]\n"):
        proc = harness("run", "--devices", "local", "--matrix", str(write_matrix(tmp_path / "e.yaml", body)),
                       "--dry-run")
        assert proc.returncode == 2 and "harness results import" in proc.stderr, proc.stderr


# -- kernels ----------------------------------------------------------------------------------------------
def test_kernels_lists_without_importing_torch_and_its_catalog_is_current() -> None:
    code = ("import sys; sys.argv = ['harness', 'kernels', '--format', 'json']\n"
            "from harness.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert proc.stderr.strip().endswith("NO-TORCH"), proc.stderr
    from kernels.catalog import builtin_kernels, generate

    assert builtin_kernels() == generate(), "kernels/catalog.json is stale: python -m kernels.catalog"


# -- regress text --------------------------------------------------------------------------------------------
def test_regress_findings_read_as_short_lines_and_never_claim_a_difference_that_is_not_there() -> None:
    from harness.report import findings_text
    from results.regress import Finding

    same = Finding(device="rpi4", case={"variant": "dense", "precision": "int8", "backend": "torch", "seq_len": 512},
                   metric="latency_ms", run_id="abcdef123456", started_at="2026-12-01T02:30:00", before=10.0, after=12.0,
                   before_interval=(9.8, 10.2), after_interval=(11.8, 12.2), change_pct=20.0, direction="regression",
                   statistic=3.1, statistic_name="t", p_value=1e-5, runs_before=["a"] * 6, runs_after=["b"] * 2,
                   differs={})
    text = findings_text([same], mode="latest")
    assert "nothing recorded" not in text and "unchanged" in text
    assert max(len(line) for line in text.splitlines()) < 100, text
    changed = Finding(**{**same.__dict__, "differs": {"torch": ("2.4", "2.5")}})
    assert "environment: torch 2.4 -> 2.5" in findings_text([changed], mode="latest")
    assert "runs before: a, a" in findings_text([same], mode="latest", verbose=True)


def test_the_worker_never_runs_an_imported_benchmark() -> None:
    from harness.worker import run_case

    got = run_case({"case": {"variant": "external", "name": "tests/test_x.py::test_sort"}, "measure": {}})
    assert got["status"] == "skipped" and "import-only" in got["error"]
