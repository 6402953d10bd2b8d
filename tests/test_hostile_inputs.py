"""Every input class, hostile or careless, through the real CLI: exit 2 within seconds, a message naming the
file and what is wrong, no traceback, and nothing written (no database created, no run, no row).

The corpus lives in tests/hostile/{matrix,inventory,import}/ (the four matrices the project's stop hook
tries are among them); inputs that cannot live in a repository (/dev/zero, a FIFO, files over the size
caps) are made here. Every command runs in a subprocess under a 6 GB address-space limit, so a YAML bomb
or an unbounded read fails the test instead of the machine. The corpus runs in parallel: a process is
mostly interpreter start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO, write_matrix

CORPUS = Path(__file__).resolve().parent / "hostile"
ADDRESS_SPACE = 6 * 1024 ** 3
# "Within seconds": generous for a loaded 2-core machine (start-up is ~1.5 s of it), far below a hang.
LIMIT_S = 30.0
TINY = "measure: {warmup_s: 0.01, min_time_s: 0.02, min_samples: 3, max_time_s: 2, timeout_s: 60}\n"

# What the message must say, per corpus file (lower case; the file name is always checked too).
EXPECT = {
    "matrix/alias-bomb.yaml": "aliases",
    "matrix/alias-bomb-under-alias-limit.yaml": "expand to more than",
    "matrix/batch-beyond-int32.yaml": "too large",
    "matrix/binary-garbage.yaml": "not utf-8",
    "matrix/control-characters-in-name.yaml": "printable",
    "matrix/deep-nesting.yaml": "nested more than",
    "matrix/duplicate-key.yaml": "appears twice (lines 4 and 5)",
    "matrix/empty.yaml": "empty",
    "matrix/escape-beyond-unicode.yaml": "escape sequence",
    "matrix/exclude-removes-everything.yaml": "no cases",
    "matrix/inf-measure.yaml": "not a finite number",
    "matrix/int-5000-digits.yaml": "64 bits",
    "matrix/int-beyond-int64.yaml": "beyond 64 bits",
    "matrix/measure-out-of-range.yaml": "out of range",
    "matrix/merge-key-bomb.yaml": "aliases",
    "matrix/million-cases.yaml": "--max-cases",
    "matrix/nan-measure.yaml": "not a finite number",
    "matrix/negative-measure.yaml": "positive number",
    "matrix/nested-include.yaml": "positive integer",
    "matrix/not-utf8.yaml": "not utf-8",
    "matrix/nul-character.yaml": "character yaml does not allow",
    "matrix/overflow-float.yaml": "positive number",
    "matrix/python-object-tag.yaml": "constructor",
    "matrix/recursive-alias.yaml": "recursive",
    "matrix/too-many-includes.yaml": "at most 1000",
    "matrix/top-level-list.yaml": "top level must be a mapping",
    "matrix/unknown-precision.yaml": "allowed: fp32",
    "inventory/alias-bomb-in-tags.yaml": "expand to more than",
    "inventory/control-characters-in-name.yaml": "not allowed",
    "inventory/deep-nesting.yaml": "nested more than",
    "inventory/device-name-path-traversal.yaml": "not allowed",
    "inventory/duplicate-device.yaml": "appears twice (lines 2 and 4)",
    "inventory/empty-host.yaml": "empty",
    "inventory/host-as-option.yaml": "option",
    "inventory/local-with-empty-host.yaml": "host",
    "inventory/nan-timeout.yaml": "not a finite number",
    "inventory/not-utf8.yaml": "not utf-8",
    "import/bad-time.json": "iso 8601",
    "import/cos-sim-7.5.csv": "cos_sim' is 7.5",
    "import/deep-json.json": "nested too deeply",
    "import/device-control-characters.json": "not a device name",
    "import/empty.csv": "empty",
    "import/git-revision-option.json": "not a git object name",
    "import/huge-integer-column.json": "kv_bytes",
    "import/infinity-latency.json": "infinity",
    "import/int-5000-digits.json": "digits",
    "import/n-samples-wrong-type.json": "n_samples",
    "import/nan-sample.json": "nan",
    "import/negative-latency.csv": "-3.5",
    "import/not-utf8.csv": "not utf-8",
    "import/nul-in-error.csv": "nul",
    "import/ragged-row.csv": "cells",
    "import/rows-object.json": "list of rows",
    "import/run-id-with-path.json": "not a run id",
    "import/samples-in-failed-row.json": "failed row",
    "import/status-pwned.csv": "'pwned' is not a status",
    "import/summary-contradicts-samples.json": "samples_ms give",
    "import/unknown-column.csv": "never writes",
    "import/wrong-type.json": "single value",
}
SHARED_HOOK_FILES = ("alias-bomb.yaml", "duplicate-key.yaml", "nan-measure.yaml", "not-utf8.yaml")


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120,
        as_user: list[str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """The CLI in a subprocess under the address-space limit; (result, seconds)."""
    full = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DB", "HARNESS_INVENTORY", "HARNESS_DEBUG")}
    full.update(PYTHONPATH=str(REPO), HOME=str(cwd), COLUMNS="200")
    full.update(env or {})
    t = time.monotonic()
    proc = subprocess.run([*(as_user or []), sys.executable, "-m", "harness", *args], cwd=cwd, env=full, text=True,
                          capture_output=True, timeout=timeout, preexec_fn=_limit_memory)
    return proc, time.monotonic() - t


def command_for(kind: str, path: Path, db: str) -> list[str]:
    if kind == "matrix":
        return ["run", "--devices", "local", "--matrix", str(path), "--db", db]
    if kind == "inventory":
        return ["run", "--devices", "local", "--matrix", str(REPO / "sweeps" / "quick.yaml"), "--inventory",
                str(path), "--db", db]
    return ["results", "import", str(path), "--db", db]


def assert_refused(proc: subprocess.CompletedProcess[str], seconds: float, name: str, words: str = "") -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert seconds < LIMIT_S, f"took {seconds:.1f} s"
    assert "error:" in proc.stderr and name in proc.stderr, proc.stderr
    assert words.lower() in proc.stderr.lower(), proc.stderr


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, float, Path]]:
    """Every corpus file through its command, four at a time; each in its own directory and database."""
    base = tmp_path_factory.mktemp("hostile")
    jobs = []
    for kind in ("matrix", "inventory", "import"):
        for path in sorted((CORPUS / kind).iterdir()):
            where = base / f"{kind}-{path.name}"
            where.mkdir()
            db = where / "results.db"
            jobs.append((f"{kind}/{path.name}", where, db, command_for(kind, path, f"sqlite:///{db}")))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(cli, *args, cwd=where) for name, where, _, args in jobs}
    return {name: (*futures[name].result(), db) for name, _, db, _ in jobs}


def test_the_corpus_holds_the_stop_hooks_matrices_and_every_file_has_an_expectation() -> None:
    names = {f"{p.parent.name}/{p.name}" for kind in ("matrix", "inventory", "import")
             for p in (CORPUS / kind).iterdir()}
    assert {f"matrix/{n}" for n in SHARED_HOOK_FILES} <= names
    assert names == set(EXPECT), names ^ set(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_every_corpus_file_is_refused_with_a_message_and_nothing_written(corpus_results: Any, name: str) -> None:
    proc, seconds, db = corpus_results[name]
    assert_refused(proc, seconds, name.split("/")[1], EXPECT[name])
    assert not db.exists(), "a database was created for a refused input"


# -- inputs that cannot live in the repository ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["matrix", "inventory", "import"])
def test_dev_zero_a_fifo_and_a_directory_are_refused_at_once(tmp_path: Path, kind: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    db = tmp_path / "results.db"
    for path, words in ((Path("/dev/zero"), "not a regular file"), (fifo, "not a regular file"),
                        (folder, "directory")):
        proc, seconds = cli(*command_for(kind, path, f"sqlite:///{db}"), cwd=tmp_path)
        assert_refused(proc, seconds, str(path), words)
    assert not db.exists()


@pytest.mark.parametrize("kind", ["matrix", "inventory"])
def test_a_yaml_file_over_one_megabyte_is_refused_before_it_is_parsed(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * 1_100_000 + "\n")
    db = tmp_path / "results.db"
    proc, seconds = cli(*command_for(kind, path, f"sqlite:///{db}"), cwd=tmp_path)
    assert_refused(proc, seconds, "big.yaml", "over the 1 MB limit")
    assert not db.exists()


def test_an_import_over_max_size_is_refused_and_a_large_csv_field_is_not(tmp_path: Path) -> None:
    rows = [{"run_id": "a1b2c3d4e5f6", "started_at": "2026-01-01T02:00:00+00:00", "device": "rpi4",
             "status": "ok", "variant": "dense", "precision": "fp32", "seq_len": 64,
             "samples_ms": [1.0 + i / 1e6 for i in range(20_000)]}]
    from results.exchange import write_csv

    path = tmp_path / "big.csv"
    with open(path, "w", newline="") as fh:
        write_csv(rows, fh)
    assert path.stat().st_size > 150_000  # one samples_ms cell far over csv's default 128 KB field limit
    db = tmp_path / "results.db"
    proc, seconds = cli("results", "import", str(path), "--max-size", "100k", "--db", f"sqlite:///{db}",
                        cwd=tmp_path)
    assert_refused(proc, seconds, "big.csv", "over the 100 kB limit")
    assert not db.exists()
    proc, _ = cli("results", "import", str(path), "--db", f"sqlite:///{db}", cwd=tmp_path)
    assert proc.returncode == 0 and "imported 1 measurement(s)" in proc.stdout, proc.stderr


def test_a_matrix_over_max_cases_names_the_count_and_the_flag_raises_the_limit(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "m.yaml", "defaults: {variant: dense, precision: fp32}\n"
                          "matrix:\n  seq_len: [16, 32, 48]\n  heads: [1, 2]\n", TINY)
    proc, seconds = cli("run", "--devices", "local", "--matrix", str(matrix), "--max-cases", "5", "--dry-run",
                        cwd=tmp_path)
    assert_refused(proc, seconds, "m.yaml", "expands to 6 cases")
    ok, _ = cli("run", "--devices", "local", "--matrix", str(matrix), "--max-cases", "6", "--dry-run", cwd=tmp_path)
    assert ok.returncode == 0 and "6 case(s)" in ok.stdout, ok.stderr


def test_a_malformed_test_slowdown_variable_is_refused_at_once(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "m.yaml", "matrix:\n  seq_len: [32]\n", TINY)
    db = tmp_path / "results.db"
    proc, seconds = cli("run", "--devices", "local", "--matrix", str(matrix), "--db", f"sqlite:///{db}",
                        cwd=tmp_path, env={"HARNESS_TEST_SLOWDOWN": "x"}, timeout=60)
    assert_refused(proc, seconds, "HARNESS_TEST_SLOWDOWN", "PRECISION=FACTOR")
    assert not db.exists()


@pytest.mark.parametrize("args, words", [
    (["regress", "--min-effect", "-1"], "--min-effect"),
    (["regress", "--alpha", "2"], "--alpha"),
    (["regress", "--confirm", "2"], "at least 3 rounds"),
    (["regress", "--confirm", "-1"], "--confirm"),
    (["results", "list", "--limit", "0"], "--limit"),
    (["dashboard", "--port", "0"], "--port"),
    (["results", "import", "x.csv", "--max-size", "lots"], "--max-size"),
])
def test_out_of_range_options_are_messages(tmp_path: Path, args: list[str], words: str) -> None:
    proc, seconds = cli(*args, "--db", f"sqlite:///{tmp_path / 'r.db'}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out and words in out, out
    assert not (tmp_path / "r.db").exists()


# -- databases ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def harness_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real harness database: two imported runs on `rpi4` (no kernel runs needed)."""
    from results.exchange import import_rows
    from results.store import Store

    path = tmp_path_factory.mktemp("db") / "results.db"
    store = Store(f"sqlite:///{path}")
    rows = []
    for r, run_id in enumerate(("aaaa00000001", "aaaa00000002")):
        for n in (64, 128):
            samples = [1.0 + r + n / 1000 + i / 100 for i in range(5)]
            rows.append({"run_id": run_id, "started_at": f"2026-01-0{r + 1}T02:00:00+00:00", "run_status": "complete",
                         "matrix": "m", "harness_version": "0.1.0", "git_revision": "0123456789abcdef",
                         "tag": "=HYPERLINK(\"http://x\",\"click\")", "device": "rpi4", "status": "ok",
                         "variant": "dense", "precision": "fp32", "seq_len": n, "samples_ms": samples,
                         "fingerprint": {"arch": "aarch64", "torch": "2.4.1"}})
    import_rows(store, rows)
    store.engine.dispose()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


READ_COMMANDS = [["results", "list"], ["results", "show", "aaaa00000002"], ["results", "export", "--all"],
                 ["compare", "aaaa00000001", "aaaa00000002"], ["regress"], ["regress", "--history"]]


@pytest.mark.parametrize("args", READ_COMMANDS + [["dashboard", "--port", "8599"]], ids=lambda a: " ".join(a))
def test_read_commands_never_create_a_database(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "typo.db"
    proc, seconds = cli(*args, "--db", f"sqlite:///{missing}", cwd=tmp_path)
    assert_refused(proc, seconds, str(missing), "harness db upgrade --db")
    assert not missing.exists() and not list(tmp_path.glob("typo.db*"))


def test_another_applications_sqlite_file_is_refused_not_migrated(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.close()
    before = _digest(other)
    matrix = write_matrix(tmp_path / "m.yaml", "matrix:\n  seq_len: [32]\n", TINY)
    for args in (["results", "list"], ["db", "upgrade"], ["run", "--devices", "local", "--matrix", str(matrix)],
                 ["results", "prune", "--older-than", "1d"]):
        proc, seconds = cli(*args, "--db", f"sqlite:///{other}", cwd=tmp_path)
        assert_refused(proc, seconds, "app.db", "not an attn-harness results database")
    assert _digest(other) == before and not (tmp_path / "app.db-wal").exists()
    with sqlite3.connect(other) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("these are my notes, not a database\n" * 10)
    before = _digest(notes)
    for args in (["results", "list"], ["db", "upgrade"]):
        proc, seconds = cli(*args, "--db", f"sqlite:///{notes}", cwd=tmp_path)
        assert_refused(proc, seconds, "notes.db", "not a sqlite database")
    assert _digest(notes) == before


def _read_only_mount(src: Path) -> list[str] | None:
    """A command prefix that runs its command with `src` mounted read-only in a private mount namespace,
    or None where this machine allows no mount namespace."""
    for unshare in (["unshare", "-m"], ["unshare", "-rm"]):
        probe = subprocess.run([*unshare, "sh", "-c", f"mount --bind -o ro {src} {src} && touch {src}/probe"],
                               capture_output=True, text=True)
        if probe.returncode != 0 and "Read-only file system" in probe.stderr:
            return [*unshare, "sh", "-c", f'mount --bind -o ro "$0" "$0" && exec "$@"', str(src)]
    return None


def test_read_commands_work_on_a_database_on_a_read_only_mount(tmp_path: Path, harness_db: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(harness_db, folder / "results.db")
    prefix = _read_only_mount(folder)
    if prefix is None:
        pytest.skip("no mount namespace on this machine (unshare -m and unshare -rm refused)")
    url = f"sqlite:///{folder / 'results.db'}"
    for args in READ_COMMANDS:
        proc, _ = cli(*args, "--db", url, cwd=tmp_path, as_user=prefix)
        assert proc.returncode in (0, 1), f"{args}: {proc.stdout}{proc.stderr}"
        assert "Traceback" not in proc.stderr
    listed, _ = cli("results", "list", "--db", url, cwd=tmp_path, as_user=prefix)
    assert "aaaa00000002" in listed.stdout
    proc, _ = cli("results", "prune", "--older-than", "1d", "--db", url, cwd=tmp_path, as_user=prefix)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "read-only" in proc.stderr, proc.stderr


def test_run_id_prefixes_are_literal_not_sql_wildcards(tmp_path: Path, harness_db: Path) -> None:
    url = f"sqlite:///{harness_db}"
    for ref in ("%", "_", "aaaa%", "____"):
        proc, seconds = cli("results", "show", ref, "--db", url, cwd=tmp_path)
        assert_refused(proc, seconds, "does not exist")
        proc, _ = cli("compare", ref, "aaaa00000002", "--db", url, cwd=tmp_path)
        assert proc.returncode == 2 and "no run" in proc.stderr, proc.stderr
    proc, _ = cli("results", "show", "aaaa00000001", "--db", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_export_into_a_missing_folder_is_a_message(tmp_path: Path, harness_db: Path) -> None:
    proc, seconds = cli("results", "export", "--all", "-o", str(tmp_path / "nope" / "out.csv"),
                        "--db", f"sqlite:///{harness_db}", cwd=tmp_path)
    assert_refused(proc, seconds, "out.csv", "folder exists")


def test_a_formula_tag_exports_neutralised_and_imports_back_exactly(tmp_path: Path, harness_db: Path) -> None:
    out = tmp_path / "out.csv"
    cli("results", "export", "--all", "-o", str(out), "--db", f"sqlite:///{harness_db}", cwd=tmp_path)
    import csv

    with open(out, newline="") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert not any(c[:1] in ("=", "+", "-", "@", "\t", "\r") for c in cells), "a formula cell reached the CSV"
    assert "'=HYPERLINK(\"http://x\",\"click\")" in cells
    other = tmp_path / "other.db"
    proc, _ = cli("results", "import", str(out), "--db", f"sqlite:///{other}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    again = tmp_path / "again.json"
    cli("results", "export", "--all", "--format", "json", "-o", str(again), "--db", f"sqlite:///{other}", cwd=tmp_path)
    tags = {r["tag"] for r in json.loads(again.read_text())}
    assert tags == {"=HYPERLINK(\"http://x\",\"click\")"}


def test_control_characters_from_the_database_never_reach_the_terminal(tmp_path: Path) -> None:
    from results.store import Store
    from workloads.spec import canonical_case

    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(url)
    evil = "ev\x1b[2J\x1b[Hil"
    run_id = store.create_run(matrix_name="m\x1b[31m", matrix_text="", measure={}, devices=[evil], tag="t\x07\x1b]0;x\x07")
    store.add_result(run_id, evil, canonical_case({"seq_len": 8}),
                     {"status": "failed", "error": "boom \x1b[8mhidden\x1b[0m \u202eevil"})
    store.finish_run(run_id, "partial")
    store.engine.dispose()
    for args in (["results", "list"], ["results", "show", run_id], ["compare", run_id, run_id, "--force"]):
        proc, _ = cli(*args, "--db", url, cwd=tmp_path)
        assert proc.returncode in (0, 1), proc.stderr
        out = proc.stdout + proc.stderr
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, repr(out)
    shown, _ = cli("results", "show", run_id, "--db", url, cwd=tmp_path)
    assert "\\x1b[2J" in shown.stdout and "\\u202e" in shown.stdout


def test_debug_shows_the_traceback_of_an_error(tmp_path: Path) -> None:
    bad = CORPUS / "matrix" / "duplicate-key.yaml"
    plain, _ = cli("run", "--devices", "local", "--matrix", str(bad), cwd=tmp_path)
    debug, _ = cli("--debug", "run", "--devices", "local", "--matrix", str(bad), cwd=tmp_path)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert "appears twice" in debug.stderr.splitlines()[-1]


# -- imports that would rewrite a stored run ----------------------------------------------------------
def test_rows_grafted_onto_a_stored_run_are_refused_unless_merge_and_fingerprints_agree(tmp_path: Path,
                                                                                       harness_db: Path) -> None:
    db = tmp_path / "r.db"
    shutil.copy(harness_db, db)
    url = f"sqlite:///{db}"
    base = {"run_id": "aaaa00000002", "started_at": "2026-01-02T02:00:00+00:00", "run_status": "complete",
            "matrix": "m", "harness_version": "0.1.0", "git_revision": "0123456789abcdef", "status": "ok",
            "variant": "dense", "precision": "fp32", "samples_ms": [3.0, 3.1, 3.2]}
    new_device = tmp_path / "device.json"
    new_device.write_text(json.dumps([dict(base, device="jetson", seq_len=64)]))
    new_case_same_env = tmp_path / "case.json"
    new_case_same_env.write_text(json.dumps([dict(base, device="rpi4", seq_len=256,
                                                  fingerprint={"arch": "aarch64", "torch": "2.4.1"})]))
    new_case_other_env = tmp_path / "case-other.json"
    new_case_other_env.write_text(json.dumps([dict(base, device="rpi4", seq_len=512,
                                                   fingerprint={"arch": "x86_64", "torch": "2.5.0"})]))
    other_run = tmp_path / "other-run.json"
    other_run.write_text(json.dumps([dict(base, device="rpi4", seq_len=64, started_at="2027-05-05T00:00:00+00:00")]))
    before = _digest(db)
    for path, words in ((new_device, "adds device(s) jetson"), (new_case_same_env, "--merge"),
                        (other_run, "another run under the same id")):
        proc, seconds = cli("results", "import", str(path), "--db", url, cwd=tmp_path)
        assert_refused(proc, seconds, path.name, words)
    proc, seconds = cli("results", "import", str(new_case_other_env), "--merge", "--db", url, cwd=tmp_path)
    assert_refused(proc, seconds, new_case_other_env.name, "fingerprint")
    assert _digest(db) == before
    proc, _ = cli("results", "import", str(new_case_same_env), "--merge", "--db", url, cwd=tmp_path)
    assert proc.returncode == 0 and "imported 1 measurement(s) in 0 new run(s)" in proc.stdout, proc.stderr


# -- the git revision injection -----------------------------------------------------------------------
def test_a_git_revision_that_is_an_option_is_harmless_at_regress_confirm(tmp_path: Path) -> None:
    """An old database holds a run whose git_revision is '--output=FILE' (imports refuse it now): the
    confirmation refuses the revision, never hands it to git, and FILE is untouched."""
    from results.exchange import import_rows
    from results.store import Store

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(url)
    rows = []
    for i in range(8):  # a 40% step in the newest run against seven steady ones: a regression
        scale = 1.4 if i == 7 else 1.0
        rows.append({"run_id": f"run{i:09d}", "started_at": f"2026-01-{i + 1:02d}T02:00:00+00:00",
                     "run_status": "complete", "matrix": "m", "harness_version": "0.1.0",
                     "git_revision": "0123456789abcdef0123456789abcdef01234567", "device": "local", "status": "ok",
                     "variant": "dense", "precision": "fp32", "seq_len": 32, "fingerprint": {"arch": "x86_64"},
                     "samples_ms": [scale * (1.0 + j / 1000) for j in range(20)]})
    import_rows(store, rows)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE runs SET git_revision = ? WHERE id = ?", (f"--output={victim}", "run000000007"))
    store.engine.dispose()
    proc, _ = cli("regress", "--confirm", "3", "--db", url, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the regression stays reported, unconfirmed
    assert "Traceback" not in proc.stderr and "not a git object name" in proc.stderr, proc.stderr
    assert victim.read_text() == "precious\n"


# -- passwords ----------------------------------------------------------------------------------------
SENTINEL = "s3ntinel-Pa55word"


def _password_commands(url: str, tmp_path: Path) -> list[list[str]]:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"run_id": "bbbb00000001", "started_at": "2026-01-01T02:00:00+00:00",
                                 "device": "rpi4", "status": "ok", "variant": "dense", "precision": "fp32",
                                 "seq_len": 64, "samples_ms": [1.0, 1.1, 1.2]}]))
    return [["db", "upgrade", "--db", url], ["results", "import", str(rows), "--db", url],
            ["results", "list", "--db", url], ["results", "show", "nope", "--db", url],
            ["results", "export", "--all", "--db", url], ["compare", "a", "b", "--db", url],
            ["regress", "--db", url], ["results", "prune", "--older-than", "1d", "--db", url],
            ["dashboard", "--port", "8598", "--db", url], ["--debug", "results", "show", "nope", "--db", url]]


def test_the_postgresql_password_never_appears_in_any_output(tmp_path: Path) -> None:
    from pg import cluster_or_skip

    cluster = cluster_or_skip()
    database = cluster.create_database().rsplit("/", 1)[1]
    url = f"postgresql+psycopg://postgres:{SENTINEL}@127.0.0.1:{cluster.port}/{database}"
    try:
        codes = []
        for args in _password_commands(url, tmp_path):
            if args[0] == "dashboard":
                continue  # it would serve until stopped; the unreachable test covers its message
            proc, _ = cli(*args, cwd=tmp_path)
            codes.append(proc.returncode)
            assert SENTINEL not in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)
            if "--debug" not in args:
                assert "Traceback" not in proc.stderr, proc.stderr
        assert codes[:3] == [0, 0, 0]  # upgrade, import and list worked against the real server
    finally:
        cluster.drop_database(cluster.url(database))


def test_an_unreachable_postgresql_url_is_a_message_without_its_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://harness:{SENTINEL}@127.0.0.1:{port}/results?connect_timeout=3"
    for args in _password_commands(url, tmp_path):
        proc, seconds = cli(*args, cwd=tmp_path)
        out = proc.stdout + proc.stderr
        assert SENTINEL not in out, (args, out)
        if args[0] == "results" and args[1] == "import":
            assert proc.returncode == 2 and "Traceback" not in out
            continue
        if "--debug" not in args:
            assert_refused(proc, seconds, "***")
