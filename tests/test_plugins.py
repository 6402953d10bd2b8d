"""Users' kernel plugins: the public API, loading and failing, validation with "did you mean", the bundle,
tracking (sha256, git revision, dirty), resume and import safety, export round trips, entry points."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devices.inventory import parse_inventory
from harness import plugins as user_plugins
from harness.bundle import build_bundle
from kernels import plugins as loader
from kernels import registry
from workloads.errors import ConfigError, HarnessError
from workloads.matrix import parse_matrix
from workloads.spec import canonical_case, case_hash, case_label

REPO = Path(__file__).resolve().parent.parent

CHUNKED = textwrap.dedent('''\
    import torch
    import torch.nn.functional as F

    from kernels.registry import Built, Knob, Requires, register


    def _check(case):
        if case["chunk"] > case["seq_len"]:
            raise ValueError(f"chunk {case['chunk']} is longer than seq_len {case['seq_len']}")


    @register("chunked_dense", "fp32", "torch", reference="dense", knobs={"chunk": Knob(32, minimum=1)},
              check=_check, requires=Requires(modules=("torch",)))
    def build(case, inputs, ctx):
        """SDPA over chunks of queries."""
        q, k, v, chunk = inputs.q, inputs.k, inputs.v, case["chunk"]

        def fn():
            return torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + chunk], k, v)
                              for i in range(0, q.shape[2], chunk)], dim=2)
        return Built(fn=fn, compute=f"fp32 SDPA over query chunks of {chunk}")
    ''')
BOOM = "import os\n\nVALUE = 1\nraise RuntimeError('the plugin is broken')\n"
COLLIDE = textwrap.dedent('''\
    from kernels.registry import Built, register


    @register("dense", "fp32", "torch")
    def build(case, inputs, ctx):
        return Built(fn=lambda: inputs.q, compute="not attention")
    ''')


@pytest.fixture(autouse=True)
def no_plugins_left():
    """Every test starts and ends with only the bundled kernels registered."""
    loader.deactivate()
    yield
    loader.deactivate()


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def load(*paths: Path) -> user_plugins.PluginSet:
    return user_plugins.load(user_plugins.resolve_plugins([str(p) for p in paths], entry_points=False))


# -- the public API ----------------------------------------------------------------------------------------
def test_a_plugin_adds_a_variant_with_knobs_defaults_a_check_and_a_reference(tmp_path: Path) -> None:
    found = load(write(tmp_path / "mine", "chunked.py", CHUNKED))
    [status] = found.statuses.values()
    assert status.ok and status.kernels == ["chunked_dense/fp32/torch/core"] and status.variants == ["chunked_dense"]
    case = canonical_case({"variant": "chunked_dense", "seq_len": 64})
    assert case["chunk"] == 32 and "window" not in case
    assert case_label(canonical_case({"variant": "chunked_dense", "seq_len": 64, "chunk": 16})).endswith("chunk=16")
    kernel = registry.lookup(case)
    assert kernel.plugin == status.id and kernel.where.endswith("chunked.py line 12")
    ref_case, ref_fn = registry.reference_of(case)
    assert ref_fn is None and ref_case["variant"] == "dense" and ref_case["seq_len"] == 64
    with pytest.raises(ValueError, match="chunk 128 is longer than seq_len 64"):
        canonical_case({"variant": "chunked_dense", "seq_len": 64, "chunk": 128})
    with pytest.raises(ValueError, match="out of range"):
        canonical_case({"variant": "chunked_dense", "chunk": 0})


def test_typos_in_a_plugin_variant_or_knob_are_refused_with_did_you_mean(tmp_path: Path) -> None:
    plugin = write(tmp_path / "mine", "chunked.py", CHUNKED)
    matrix = tmp_path / "m.yaml"

    def run(body: str) -> subprocess.CompletedProcess:
        matrix.write_text(f"plugins: [mine/chunked.py]\n{body}")
        return subprocess.run([sys.executable, "-m", "harness", "run", "--devices", "local", "--matrix", str(matrix),
                               "--dry-run", "--db", f"sqlite:///{tmp_path / 'x.db'}"], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    ok = run("matrix: {variant: [chunked_dense], chunk: [16]}\n")
    assert ok.returncode == 0 and "chunked_dense fp32 torch L=128 chunk=16" in ok.stdout, ok.stderr
    variant = run("matrix: {variant: [chunked_dens]}\n")
    assert variant.returncode == 2 and "m.yaml:2: key 'variant'" in variant.stderr
    assert "did you mean 'chunked_dense'?" in variant.stderr
    knob = run("matrix: {variant: [chunked_dense], chunck: [16]}\n")
    assert knob.returncode == 2 and "key 'chunck'" in knob.stderr and "did you mean 'chunk'?" in knob.stderr
    check = run("matrix: {variant: [chunked_dense], seq_len: [32], chunk: [64]}\n")
    assert check.returncode == 2 and "chunk 64 is longer than seq_len 32" in check.stderr
    assert not (tmp_path / "x.db").exists()
    assert plugin.exists()


def test_a_plugins_own_reference_function_must_be_float64(tmp_path: Path) -> None:
    text = CHUNKED.replace('reference="dense"', 'reference=lambda case, inputs: inputs.q.double()')
    found = load(write(tmp_path, "own_ref.py", text))
    assert all(s.ok for s in found.statuses.values())
    case = canonical_case({"variant": "chunked_dense", "seq_len": 16, "heads": 1, "head_dim": 8, "chunk": 8})
    ref_case, ref_fn = registry.reference_of(case)
    assert ref_case is case and callable(ref_fn)
    from harness.worker import PluginReferenceError, plugin_reference
    from kernels.inputs import make_inputs

    inputs = make_inputs(case)
    assert plugin_reference(ref_fn, case, inputs).dtype.is_floating_point
    with pytest.raises(PluginReferenceError, match="float64"):
        plugin_reference(lambda c, i: i.q, case, inputs)


@pytest.mark.parametrize("text, words", [
    (BOOM, "plugin {path} line 4: RuntimeError: the plugin is broken"),
    ("x = (\n", "plugin {path} line 1: SyntaxError:"),
    (COLLIDE, "plugin {path} line 4: dense/fp32/torch/core is already registered by the bundled kernel at "
              "kernels/dense_torch.py line"),
    (CHUNKED.replace('reference="dense", ', ''), "line 12: the new variant 'chunked_dense' needs reference="),
    (CHUNKED.replace('Knob(32, minimum=1)', 'Knob(32, minimum=1), "window": Knob(3)'),
     "knob 'window' is a bundled case key"),
    (CHUNKED.replace('"fp32", "torch"', '"fp8", "torch"'), "precision 'fp8' is not one the harness knows"),
    (CHUNKED.replace('Knob(32, minimum=1)', 'Knob(32, minimum=1), "status": Knob(3)'),
     "knob 'status' is a bundled case key or a column of the results"),
])
def test_a_plugin_that_fails_is_reported_with_its_file_and_line_and_leaves_nothing_registered(
        tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path / "plugins", "bad.py", text)
    before = set(registry.all_kernels())
    found = load(path)
    [status] = found.statuses.values()
    assert not status.ok and words.format(path=path) in status.error, status.error
    assert set(registry.all_kernels()) == before
    with pytest.raises(ValueError, match="unknown value 'chunked_dense'"):
        canonical_case({"variant": "chunked_dense"})


def test_a_clash_between_two_plugins_names_the_first(tmp_path: Path) -> None:
    first = write(tmp_path / "a", "chunked.py", CHUNKED)
    second = write(tmp_path / "b", "again.py", CHUNKED.replace('reference="dense", knobs={"chunk": Knob(32, '
                                                               'minimum=1)},\n          check=_check, ', ''))
    found = load(first, second)
    statuses = list(found.statuses.values())
    assert statuses[0].ok and not statuses[1].ok
    assert f"is already registered by the plugin kernel at {first} line 12" in statuses[1].error


def test_a_package_plugin_reports_the_file_inside_it(tmp_path: Path) -> None:
    pkg = tmp_path / "my_kernels"
    write(pkg, "__init__.py", "from . import inner\n")
    write(pkg, "inner.py", "\n\nraise KeyError('missing')\n")
    [status] = load(pkg).statuses.values()
    assert not status.ok and status.error == f"plugin {pkg}: {pkg}/inner.py line 3: KeyError: 'missing'"
    write(pkg, "inner.py", CHUNKED)
    [status] = load(pkg).statuses.values()
    assert status.ok and status.kernels == ["chunked_dense/fp32/torch/core"]


def test_two_revisions_of_a_plugin_are_separate_modules_and_swap_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path, "chunked.py", CHUNKED)
    one = load(path)
    path.write_text(CHUNKED.replace("SDPA over chunks", "SDPA, second revision"))
    two = load(path)
    [a], [b] = one.plugins, two.plugins
    assert a.spec.id != b.spec.id and a.spec.module != b.spec.module
    assert registry.lookup(canonical_case({"variant": "chunked_dense"})).description == \
        "SDPA, second revision of queries."
    assert a.spec.module not in sys.modules and b.spec.module in sys.modules


def test_the_device_refuses_a_copy_whose_content_is_not_what_was_hashed(tmp_path: Path) -> None:
    path = write(tmp_path, "chunked.py", CHUNKED)
    plugin = user_plugins.read_plugin(path, "--plugin")
    path.write_text(CHUNKED + "\n# changed after it was hashed\n")
    [status] = loader.activate([plugin.spec])
    assert not status.ok and "changed or was copied only in part" in status.error


# -- what a run ships and records ------------------------------------------------------------------------------
def test_the_bundle_carries_the_plugin_and_a_changed_plugin_is_a_new_bundle(tmp_path: Path) -> None:
    path = write(tmp_path, "chunked.py", CHUNKED)
    one = user_plugins.read_plugin(path, "--plugin")
    files = user_plugins.bundle_files([one.shipped().to_dict()])
    assert files == [(f"plugins/{one.spec.id}/chunked.py", CHUNKED.encode())]
    assert one.spec.sha256 == hashlib.sha256(CHUNKED.encode()).hexdigest()
    base = build_bundle(REPO)
    with_one = build_bundle(REPO, tuple(files))
    path.write_text(CHUNKED + "# two\n")
    two = user_plugins.read_plugin(path, "--plugin")
    with_two = build_bundle(REPO, tuple(user_plugins.bundle_files([two.shipped().to_dict()])))
    assert len({base.digest, with_one.digest, with_two.digest}) == 3
    assert dict(with_one.files)[f"plugins/{one.spec.id}/chunked.py"] == CHUNKED.encode()


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def test_a_plugin_in_a_git_work_tree_records_its_revision_and_dirty_flag(tmp_path: Path) -> None:
    repo = tmp_path / "kernels-repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    path = write(repo / "src", "chunked.py", CHUNKED)
    untracked = user_plugins.read_plugin(path, "--plugin")
    assert untracked.git["dirty"] is True and untracked.git["revision"] is None
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    rev = _git(repo, "rev-parse", "HEAD")
    clean = user_plugins.read_plugin(path, "--plugin").record()
    assert clean["revision"] == rev and clean["dirty"] is False and clean["path_in_repo"] == "src/chunked.py"
    assert clean["sha256"] == hashlib.sha256(CHUNKED.encode()).hexdigest()
    path.write_text(CHUNKED + "# edited\n")
    assert user_plugins.read_plugin(path, "--plugin").record()["dirty"] is True
    outside = user_plugins.read_plugin(write(tmp_path / "loose", "chunked.py", CHUNKED), "--plugin").record()
    assert outside["revision"] is None and outside["dirty"] is None


def test_a_missing_plugin_path_in_a_matrix_is_exit_2_naming_the_line(tmp_path: Path) -> None:
    from harness.controller import run_sweep

    matrix = write(tmp_path, "m.yaml", "name: x\nplugins:\n  - nowhere/k.py\nmatrix: {seq_len: [32]}\n")
    with pytest.raises(ConfigError) as info:
        run_sweep(parse_inventory({}, "devices.yaml"), None, devices=["local"], matrix_path=str(matrix), dry_run=True)
    assert f"{matrix}:3: key 'plugins[0]'" in str(info.value) and "relative to the matrix file" in str(info.value)


def test_a_plugin_that_failed_on_the_controller_plans_its_cases_as_failed_and_strict_refuses(tmp_path: Path) -> None:
    from harness.controller import run_sweep

    write(tmp_path, "chunked.py", CHUNKED)
    write(tmp_path, "boom.py", BOOM)
    matrix = write(tmp_path, "m.yaml", "plugins: [chunked.py, boom.py]\nmatrix:\n  variant: [chunked_dense, dense, "
                                       "boom_attn]\ninclude: [{variant: boom_attn, fuse: 3}]\n")
    inv = parse_inventory({}, "devices.yaml")
    outcome = run_sweep(inv, None, devices=["local"], matrix_path=str(matrix), dry_run=True)
    [item] = [i for i in outcome.plan["local"] if i["case"]["variant"] == "boom_attn"]
    assert item["case"]["fuse"] == 3 and "boom.py line 4: RuntimeError: the plugin is broken" in item["error"]
    assert [i.get("plugin") for i in outcome.plan["local"] if i["case"]["variant"] == "chunked_dense"] != [None]
    assert outcome.plugin_problems == [f"plugin {tmp_path / 'boom.py'} line 4: RuntimeError: the plugin is broken"]
    with pytest.raises(ConfigError, match="boom_attn"):
        run_sweep(inv, None, devices=["local"], matrix_path=str(matrix), dry_run=True, strict=True)
    # A typo in a bundled variant is still a typo, failed plugin or not.
    matrix.write_text("plugins: [boom.py]\nmatrix:\n  variant: [dense]\n  windw: [3]\n")
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        run_sweep(inv, None, devices=["local"], matrix_path=str(matrix), dry_run=True)


def test_resume_takes_plugins_from_the_command_line_only_and_refuses_a_changed_one(tmp_path: Path, home: Path,
                                                                                   db_url: str) -> None:
    from harness.controller import _resume_hook

    path = write(tmp_path / "k", "chunked.py", CHUNKED)
    recorded = [user_plugins.read_plugin(path, "--plugin").record()]
    text = "plugins: [k/chunked.py]\nmatrix: {variant: [chunked_dense]}\n"
    holder: dict = {}
    with pytest.raises(ConfigError, match="never imports code named only by the database: give it again with "
                                          "--plugin PATH"):
        parse_matrix(text, "<matrix of run r1>", plugins=_resume_hook([], "r1", recorded, holder))
    with pytest.raises(ConfigError, match="names plugins"):
        parse_matrix(text, "<matrix of run r1>", plugins=_resume_hook([], "r1", [], holder))
    sweep = parse_matrix(text, "<matrix of run r1>", plugins=_resume_hook([str(path)], "r1", recorded, holder))
    assert sweep.cases[0]["chunk"] == 32
    path.write_text(CHUNKED + "# changed\n")
    with pytest.raises(ConfigError, match="changed since run r1 started"):
        parse_matrix(text, "<matrix of run r1>", plugins=_resume_hook([str(path)], "r1", recorded, holder))


def test_plugin_rows_export_and_import_without_the_plugin(tmp_path: Path, home: Path, db_url: str) -> None:
    from results.exchange import export_rows, import_rows
    from results.store import Store

    load(write(tmp_path, "chunked.py", CHUNKED))
    case = canonical_case({"variant": "chunked_dense", "seq_len": 64, "chunk": 16})
    loader.deactivate()  # an import never has the plugin
    store = Store(db_url)
    run_id = store.create_run(matrix_name="m", matrix_text="", measure={}, devices=["local"])
    store.add_result(run_id, "local", case, {"status": "ok", "samples_ms": [1.0, 1.1, 1.2], "case_hash": case_hash(case)})
    rows = export_rows(store, [run_id])
    assert rows[0]["plugin_knobs"] == {"chunk": 16} and rows[0]["variant"] == "chunked_dense"
    other = Store(f"sqlite:///{tmp_path / 'other.db'}")
    assert import_rows(other, rows)["measurements_added"] == 1
    assert export_rows(other, [run_id])[0]["case_hash"] == case_hash(case)
    forged = [dict(rows[0], plugin_knobs={"chunk": 17})]
    with pytest.raises(ConfigError, match="column 'case_hash'"):
        import_rows(Store(f"sqlite:///{tmp_path / 'third.db'}"), forged)
    for bad in ({"Chunk!": 1}, {"chunk": [1]}, {"seq_len": 3}):
        with pytest.raises(ConfigError, match="plugin_knobs"):
            import_rows(Store(f"sqlite:///{tmp_path / 'fourth.db'}"), [dict(rows[0], plugin_knobs=bad)])


def test_installed_entry_points_are_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    write(site, "my_kernels_pkg.py", CHUNKED)
    dist = site / "my_kernels-1.0.dist-info"
    write(dist, "METADATA", "Metadata-Version: 2.1\nName: my-kernels\nVersion: 1.0\n")
    write(dist, "entry_points.txt", "[attn_harness.kernels]\nchunked = my_kernels_pkg\n")
    write(dist / ".." / "other-1.0.dist-info", "METADATA", "Metadata-Version: 2.1\nName: other\nVersion: 1.0\n")
    write(site / "other-1.0.dist-info", "entry_points.txt", "[attn_harness.kernels]\ngone = not_installed_mod\n")
    monkeypatch.syspath_prepend(str(site))
    found = user_plugins.load(user_plugins.resolve_plugins())
    assert [p.source for p in found.plugins] == ["entry point attn_harness.kernels: chunked = my_kernels_pkg"]
    assert found.loaded and registry.lookup(canonical_case({"variant": "chunked_dense"}))
    assert found.problems == ["entry point attn_harness.kernels: gone = not_installed_mod: module not_installed_mod "
                              "is not installed"]


def test_harness_kernels_lists_what_a_plugin_registers(tmp_path: Path) -> None:
    path = write(tmp_path, "chunked.py", CHUNKED)
    bad = write(tmp_path, "collide.py", COLLIDE)
    env = dict(os.environ)
    ok = subprocess.run([sys.executable, "-m", "harness", "kernels", "--plugin", str(path)], capture_output=True,
                        text=True, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "chunked_dense" in ok.stdout and "dense │ fp32" not in ok.stdout.replace("chunked_dense", "")
    assert f"sha256 {hashlib.sha256(CHUNKED.encode()).hexdigest()}" in ok.stdout.replace("\n", "")
    assert "variant chunked_dense: knobs chunk (default 32); accuracy against variant dense" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "harness", "kernels", "--plugin", str(bad)], capture_output=True,
                            text=True, timeout=120, env=env)
    assert failed.returncode == 2
    assert (f"plugin error: plugin {bad} line 4: dense/fp32/torch/core is already registered by the bundled kernel "
            "at kernels/dense_torch.py line") in failed.stderr


def test_the_example_plugin_loads_and_its_sweep_validates() -> None:
    from harness.controller import run_sweep

    outcome = run_sweep(parse_inventory({}, "devices.yaml"), None, devices=["local"],
                        matrix_path=str(REPO / "examples/plugins/sweep.yaml"), dry_run=True)
    variants = sorted({i["case"]["variant"] for i in outcome.plan["local"]})
    assert variants == ["blocked_dense", "dense"] and not outcome.plugin_problems
    assert len(outcome.plan["local"]) == 6


def test_a_schema_written_with_plugins_knows_their_variants_and_knobs(tmp_path: Path) -> None:
    import jsonschema

    path = write(tmp_path, "chunked.py", CHUNKED)
    proc = subprocess.run([sys.executable, "-m", "harness.schemas", "--plugin", str(path), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads((tmp_path / "out" / "matrix.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"plugins": ["chunked.py"], "matrix": {"variant": ["chunked_dense"],
                                                                                  "chunk": [16]}}))
    assert list(validator.iter_errors({"matrix": {"chunk": [0]}}))
    published = json.loads((REPO / "schemas/matrix.schema.json").read_text())
    assert "chunked_dense" not in json.dumps(published)


def test_nothing_from_the_database_names_a_plugin_to_import() -> None:
    """The only callers that read plugin files take paths from the command line, a matrix file or entry
    points; records read from the database go to plugin_checkout, which takes its code from a plugin given
    on the command line."""
    import inspect

    from harness import confirm

    src = inspect.getsource(confirm._plugin_sides)
    assert "matching_plugin(rec, given)" in src and "read_plugin(rec" not in src
    with pytest.raises(HarnessError, match="not a git object name"):
        confirm.plugin_checkout(user_plugins.Plugin(loader.PluginSpec("0" * 16, "x.py", "/x.py", "/x.py", "0" * 64),
                                                    (), "--plugin"), {"revision": "--upload-pack=evil", "name": "x.py"},
                                Path("/nonexistent"))


EXITS = textwrap.dedent('''\
    import os
    import sys

    # Ends the process that imports it, but only in a worker: the controller lists it, a device dies of it.
    if getattr(sys.modules["__main__"].__spec__, "name", "") == "harness.worker":
        os._exit(3)

    from kernels.registry import Built, register


    @register("exiting_attn", "fp32", "torch", reference="dense")
    def build(case, inputs, ctx):
        return Built(fn=lambda: inputs.q, compute="never runs")
    ''')


@pytest.mark.slow
def test_a_plugin_whose_import_ends_the_worker_fails_its_cases_and_a_fresh_worker_runs_the_rest(
        tmp_path: Path, home: Path) -> None:
    from harness.agent import Reporter, run_plan

    exits = user_plugins.read_plugin(write(tmp_path, "exits.py", EXITS), "--plugin")
    good = user_plugins.read_plugin(write(tmp_path, "chunked.py", CHUNKED), "--plugin")
    load_status = user_plugins.load(user_plugins.PluginSet([exits, good]))
    assert all(s.ok for s in load_status.statuses.values())  # on the controller it loads
    cases = [canonical_case({"variant": v, "seq_len": 32, "heads": 1, "head_dim": 8, "chunk": 8, "threads": 1})
             for v in ("exiting_attn", "chunked_dense", "dense")]
    plan = {"run_id": "r1", "device": "local", "workdir": str(tmp_path / "work"), "seed": 0,
            "measure": {"warmup_s": 0.0, "min_time_s": 0.01, "min_samples": 3, "max_time_s": 1, "timeout_s": 60},
            "plugins": [exits.shipped().to_dict(), good.shipped().to_dict()],
            "cases": [{"hash": case_hash(c), "case": c, **({"plugin": registry.origin_of(c)} if registry.origin_of(c)
                                                          else {})} for c in cases]}
    plan["plugins"] = user_plugins.materialize(plan["plugins"], tmp_path / "work")
    journal = tmp_path / "journal.jsonl"
    run_plan(plan, Reporter(journal))
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    results = {r["case_hash"]: r for r in records if r["type"] == "result"}
    dead = results[case_hash(cases[0])]
    assert dead["status"] == "failed" and "exits.py: importing it ended the worker (worker exited with status 3)" in \
        dead["error"]
    assert results[case_hash(cases[1])]["status"] == "ok" and results[case_hash(cases[2])]["status"] == "ok"


def test_a_plugin_may_repeat_its_variants_definition_on_each_kernel_but_not_change_it(tmp_path: Path) -> None:
    second = CHUNKED + textwrap.dedent('''

        @register("chunked_dense", "bf16", "torch", reference="dense", knobs={"chunk": Knob(32, minimum=1)},
                  check=_check)
        def build_bf16(case, inputs, ctx):
            return build(case, inputs, ctx)
        ''')
    [status] = load(write(tmp_path / "a", "chunked.py", second)).statuses.values()
    assert status.ok and status.kernels == ["chunked_dense/fp32/torch/core", "chunked_dense/bf16/torch/core"]
    changed = second.replace('knobs={"chunk": Knob(32, minimum=1)},\n          check=_check)\ndef build_bf16',
                             'knobs={"chunk": Knob(64, minimum=1)},\n          check=_check)\ndef build_bf16')
    assert changed != second
    [status] = load(write(tmp_path / "b", "chunked.py", changed)).statuses.values()
    assert not status.ok and "its knobs, check and reference are its own" in status.error
