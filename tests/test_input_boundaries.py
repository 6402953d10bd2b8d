"""Unit tests of the input and output boundaries: the bounded YAML reader, the published JSON Schemas (they
agree with the loaders), terminal- and spreadsheet-safe text, password masking, import row checks, the
database error messages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest
import yaml

from devices.inventory import load_inventory, parse_inventory
from harness.safe_text import (mask_url, redact, spreadsheet_cell, spreadsheet_restore, terminal)
from harness.schemas import SCHEMA_DIR, render, schemas
from results.validate import GIT_REVISION, graft_problem, StoredRun
from workloads.errors import ConfigError, DatabaseError
from workloads.matrix import load_matrix, parse_matrix
from workloads.yamlload import load_yaml

REPO = Path(__file__).resolve().parent.parent


# -- the YAML reader ---------------------------------------------------------------------------------------
def test_aliases_within_the_budget_still_work() -> None:
    data, located = load_yaml("m: &m {a: 1}\nx: *m\ny: *m\n", "f.yaml")
    assert data == {"m": {"a": 1}, "x": {"a": 1}, "y": {"a": 1}}
    assert located.line("y") == 3


@pytest.mark.parametrize("text, words", [
    ("a: 1\nb: 2\na: 3\n", "key 'a' appears twice (lines 1 and 3)"),
    ("a: .inf\n", "not a finite number"),
    ("a: -.inf\n", "not a finite number"),
    ("a: 9223372036854775808\n", "beyond 64 bits"),
    ("a: " + "[" * 40 + "]" * 40 + "\n", "nested more than 32"),
    ("a: &a [*a]\n", "recursive"),
    ("a: \"\\U00110000\"\n", "escape"),
])
def test_the_reader_refuses_with_file_and_line(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "f.yaml")
    assert info.value.file == "f.yaml" and words in str(info.value)


def test_int64_bounds_are_inclusive() -> None:
    data, _ = load_yaml("a: 9223372036854775807\nb: -9223372036854775808\n", "f.yaml")
    assert data == {"a": 2 ** 63 - 1, "b": -(2 ** 63)}


def test_only_defaults_is_one_case_but_an_exclude_that_empties_the_matrix_is_an_error() -> None:
    assert len(parse_matrix("defaults: {seq_len: 64}\n", "m.yaml").cases) == 1
    with pytest.raises(ConfigError, match="exclude removes every combination"):
        parse_matrix("matrix: {seq_len: [64]}\nexclude: [{seq_len: 64}]\n", "m.yaml")
    with pytest.raises(ConfigError, match="exclude key 'variant' is not a key of matrix"):
        parse_matrix("matrix: {seq_len: [64]}\nexclude: [{variant: dense}]\n", "m.yaml")


def test_max_cases_is_counted_before_expanding() -> None:
    text = "matrix:\n" + "".join(f"  {k}: [{', '.join(str(i) for i in range(1, 41))}]\n"
                                 for k in ("seq_len", "batch", "heads", "head_dim", "threads"))
    with pytest.raises(ConfigError, match="expands to 102,400,000 cases"):
        parse_matrix(text, "m.yaml")  # 40^5: refused at once, nothing expanded


# -- the published JSON Schemas --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(schemas()))
def test_the_published_schemas_are_generated_from_the_loaders_definitions(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.read_text() == render(schemas()[name]), f"{path} is stale: run `python -m harness.schemas`"
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / name).read_text()))


def test_shipped_files_satisfy_both_the_loader_and_the_schema() -> None:
    matrix = _validator("matrix.schema.json")
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        load_matrix(path)
        assert not list(matrix.iter_errors(yaml.safe_load(path.read_text()))), path
    inventory = _validator("inventory.schema.json")
    load_inventory(str(REPO / "devices.example.yaml"))
    assert not list(inventory.iter_errors(yaml.safe_load((REPO / "devices.example.yaml").read_text())))


@pytest.mark.parametrize("doc", [
    {"matrix": {"seq_len": [128]}, "bogus": 1},
    {"matrix": {"precison": ["fp32"]}},
    {"matrix": {"precision": ["int3"]}},
    {"matrix": {"seq_len": []}},
    {"matrix": {"seq_len": [-4]}},
    {"matrix": {"seq_len": [2 ** 31]}},
    {"matrix": {"seq_len": [64]}, "measure": {"timeout_s": 0}},
    {"matrix": {"seq_len": [64]}, "measure": {"warmup_s": -1}},
    {"matrix": {"seq_len": [64]}, "measure": {"min_samples": 1.5}},
    {"matrix": {"seq_len": [64]}, "measure": {"bogus": 1}},
    {"matrix": {"seq_len": [64]}, "defaults": {"variant": "sparse"}},
    {"matrix": {"seq_len": [64]}, "include": [{"window": "wide"}]},
])
def test_a_matrix_the_loader_refuses_the_schema_refuses_too(doc: dict) -> None:
    with pytest.raises(ConfigError):
        parse_matrix(yaml.safe_dump(doc), "m.yaml")
    assert list(_validator("matrix.schema.json").iter_errors(doc)), doc


@pytest.mark.parametrize("doc", [
    {"devices": {"pi": {"host": "h", "prot": 22}}},
    {"devices": {"pi": {"host": "h", "port": 70000}}},
    {"devices": {"pi": {"user": "pi"}}},
    {"devices": {"pi": {"host": "-oProxyCommand=x"}}},
    {"devices": {"../x": {"host": "h"}}},
    {"devices": {"pi": {"host": "h", "power": {"sensor": "bogus"}}}},
    {"devices": {"pi": {"host": "h", "power": {"sensor": "rapl", "shunt_ohms": 1}}}},
    {"devices": {"local": {"host": "h"}}},
    {"bogus": {}},
])
def test_an_inventory_the_loader_refuses_the_schema_refuses_too(doc: dict) -> None:
    with pytest.raises(ConfigError):
        parse_inventory(doc, "devices.yaml")
    assert list(_validator("inventory.schema.json").iter_errors(doc)), doc


# -- text that goes out ------------------------------------------------------------------------------------
def test_terminal_text_shows_control_characters_as_escapes() -> None:
    assert terminal("a\x1b[2Jb\x07\u202ec\x9b") == "a\\x1b[2Jb\\x07\\u202ec\\x9b"
    assert terminal("line\nnext\tx") == "line\\nnext\\tx"
    assert terminal("line\nnext", keep_newlines=True) == "line\nnext"
    assert terminal("héllo, 東京") == "héllo, 東京"


@pytest.mark.parametrize("text", ["=1+1", "+cmd", "-2", "@SUM(A1)", "\tx", "\rx", "'=x", "''", "'", "plain", "",
                                  "a=b", "=HYPERLINK(\"http://x\",\"y\")"])
def test_spreadsheet_cells_are_neutralised_and_restored_exactly(text: str) -> None:
    cell = spreadsheet_cell(text)
    assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r")
    assert spreadsheet_restore(cell) == text


@pytest.mark.parametrize("url, secrets", [
    ("postgresql+psycopg://harness:s3cr%40t@db:5432/results", ["s3cr%40t", "s3cr@t"]),
    ("postgresql://u:s3cr@t@db/x", ["s3cr"]),
    ("postgresql+psycopg://u:pw-Secret@[::1]:5432/x?sslmode=require", ["pw-Secret"]),
])
def test_passwords_are_masked_in_urls_and_messages(url: str, secrets: list[str]) -> None:
    masked = mask_url(url)
    assert "***" in masked and not any(x in masked for x in secrets), masked
    message = f"connection to {url} failed: password " + " / ".join(f"'{x}'" for x in secrets) + " rejected"
    assert not any(x in redact(message, url) for x in secrets), redact(message, url)
    assert mask_url("sqlite:///harness.db") == "sqlite:///harness.db"


# -- import checks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rev, ok", [("0123456", True), ("0123456789abcdef0123456789abcdef01234567", True),
                                     ("abc1234-dirty", True), ("--output=/x", False), ("HEAD", False),
                                     ("abc", False), ("0123456\n", False), ("-dirty", False)])
def test_git_revisions_are_hex_object_names(rev: str, ok: bool) -> None:
    assert bool(GIT_REVISION.fullmatch(rev)) is ok


def test_graft_rules() -> None:
    stored = StoredRun("t0", "0.1.0", "abc1234", "m", {"rpi4": "env1"}, {("rpi4", "h1")})
    same = {"started_at": "t0", "harness_version": "0.1.0", "git_revision": "abc1234", "matrix_name": "m"}
    assert graft_problem("r", stored, same, {("rpi4", "h1")}, {"rpi4": "env1"}, merge=False) is None
    assert "--merge" in graft_problem("r", stored, same, {("rpi4", "h2")}, {"rpi4": "env1"}, merge=False)
    assert graft_problem("r", stored, same, {("rpi4", "h2")}, {"rpi4": "env1"}, merge=True) is None
    assert "fingerprint" in graft_problem("r", stored, same, {("rpi4", "h2")}, {"rpi4": "env2"}, merge=True)
    assert "another run" in graft_problem("r", stored, dict(same, started_at="t1"), set(), {}, merge=True)


def test_a_full_disk_is_a_database_error_naming_the_fix(tmp_path: Path) -> None:
    """SQLite's own 'database or disk is full' (a page-count cap stands in for a full disk)."""
    from sqlalchemy import event

    from results.exchange import import_rows
    from results.store import Store

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")

    @event.listens_for(store.engine, "connect")
    def _cap(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.execute("PRAGMA max_page_count = 40")

    store.engine.dispose()
    rows = [{"run_id": f"r{i:011d}", "started_at": "2026-01-01T02:00:00+00:00", "device": "rpi4", "status": "ok",
             "variant": "dense", "precision": "fp32", "seq_len": 64, "samples_ms": [1.0 + j / 1e4 for j in range(500)]}
            for i in range(50)]
    with pytest.raises(DatabaseError) as info:
        import_rows(store, rows)
    assert "disk holding the results database is full" in str(info.value) and "--resume" in str(info.value)


def test_nan_never_reaches_a_json_export(tmp_path: Path) -> None:
    import io

    from results.exchange import export_rows, write_csv, write_json
    from results.store import Store
    from workloads.spec import canonical_case

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    run = store.create_run(matrix_name="m", matrix_text="", measure={}, devices=["local"])
    store.add_result(run, "local", canonical_case({"seq_len": 8}),
                     {"status": "ok", "samples_ms": [1.0, 1.1], "accuracy": {"cos_sim": math.nan, "rel_err": math.inf}})
    out = io.StringIO()
    write_json(export_rows(store), out)
    json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON export"))
    out = io.StringIO()
    write_csv(export_rows(store), out)
    assert "NaN" not in out.getvalue() and "Infinity" not in out.getvalue()


def test_opening_a_database_again_in_the_same_process_keeps_every_open_store_current(tmp_path: Path) -> None:
    """The check that a file is a harness database reads it through SQLite only: a plain open() and close()
    of the file would drop the POSIX locks of every connection this process holds on it, and those
    connections would keep reading an old snapshot (a resumed run's rows invisible, say)."""
    import subprocess
    import sys

    from results.exchange import export_rows
    from results.store import Store

    url = f"sqlite:///{tmp_path / 'r.db'}"
    first = Store(url)
    run = first.create_run(matrix_name="m", matrix_text="", measure={}, devices=["local"])
    stores = []
    for n in range(3):
        stores.append(Store(url))
        assert len(export_rows(stores[-1])) == n
        code = ("import sys; from results.store import Store; from workloads.spec import canonical_case; "
                f"Store({url!r}).add_result({run!r}, 'local', canonical_case({{'seq_len': {8 + n}}}), "
                "{'status': 'ok', 'samples_ms': [1.0, 1.1]})")
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
        assert [len(export_rows(s)) for s in [first, *stores]] == [n + 1] * (len(stores) + 1)

