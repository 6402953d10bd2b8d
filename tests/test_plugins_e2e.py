"""Users' kernel plugins end to end: a sweep on `local` and over a real sshd device, plugins that fail in
every way the issue names with the rest of the sweep stored, and a nightly over two revisions of a plugin
in its own git repository that `regress` (and `regress --confirm`) pins on the plugin."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sshd import Env, ssh_env, ssh_lab  # noqa: F401 (fixtures)

from harness.controller import run_sweep
from kernels import plugins as loader

pytestmark = pytest.mark.slow

# A new variant checked against the float64 dense reference; REPEAT plants a slowdown in a later revision.
PLUGIN = textwrap.dedent('''\
    import torch
    import torch.nn.functional as F

    from kernels.registry import Built, Knob, Requires, register

    REPEAT = 1


    @register("chunked_dense", "fp32", "torch", reference="dense", knobs={"chunk": Knob(32, minimum=1)},
              requires=Requires(modules=("torch",)))
    def build(case, inputs, ctx):
        """SDPA over chunks of queries."""
        q, k, v, chunk = inputs.q, inputs.k, inputs.v, case["chunk"]

        def fn():
            for _ in range(REPEAT):
                out = torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + chunk], k, v)
                                 for i in range(0, q.shape[2], chunk)], dim=2)
            return out
        return Built(fn=fn, compute=f"fp32 SDPA over query chunks of {chunk}")
    ''')
SWEEP = """name: plugin-sweep
plugins: [{plugin}]
defaults: {{heads: 2, head_dim: 16, threads: 1}}
matrix:
  variant: [chunked_dense]
  seq_len: [32, 64, 128, 256]
  chunk: [8, 32]
measure: {{warmup_s: 0.01, min_time_s: 0.05, min_samples: 3, max_time_s: 1, timeout_s: 60, max_cpu_other: 1.0}}
"""


def _rows(store, run_id: str) -> list[dict]:
    from results.exchange import export_rows

    return export_rows(store, [run_id])


@pytest.fixture(autouse=True)
def no_plugins_left():
    yield
    loader.deactivate()


def test_a_plugin_outside_the_checkout_sweeps_on_local_and_over_ssh(ssh_env: Env, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("my-kernels")  # not below the checkout
    plugin = outside / "chunked.py"
    plugin.write_text(PLUGIN)
    sha = hashlib.sha256(PLUGIN.encode()).hexdigest()
    matrix = ssh_env.tmp / "sweep.yaml"
    matrix.write_text(SWEEP.format(plugin=os.path.relpath(plugin, matrix.parent)))
    inventory = ssh_env.inventory({"pi": ssh_env.device("pi")}, trusted=("pi",))
    store = ssh_env.store()
    outcome = run_sweep(inventory, store, devices=["local", "pi"], matrix_path=str(matrix))
    assert outcome.status == "complete" and not outcome.plugin_problems
    rows = _rows(store, outcome.run_id)
    for device in ("local", "pi"):
        mine = [r for r in rows if r["device"] == device]
        assert len(mine) == 8 and all(r["status"] == "ok" for r in mine), [(r["status"], r["error"]) for r in mine]
        assert {r["plugin_knobs"]["chunk"] for r in mine} == {8, 32}
        for r in mine:
            assert r["cos_sim"] >= 0.99999, r  # against the float64 dense reference
            assert r["details"]["reference"] == "variant dense"
            assert r["details"]["plugin"]["sha256"] == sha and r["details"]["plugin"]["path"] == str(plugin)
        fp = mine[0]["fingerprint"]
        [rec] = fp["plugins"]
        assert rec["sha256"] == sha and rec["kernels"] == ["chunked_dense/fp32/torch/core"] and rec["error"] is None
    # The device got the plugin inside the content-hashed bundle, and the local device its own copy.
    [bundle] = (ssh_env.tmp / "work-pi" / "bundles").iterdir()
    assert (bundle / "plugins" / sha[:16] / "chunked.py").read_text() == PLUGIN
    local_copy = Path(os.path.expanduser("~/.cache/attn-harness")) / "plugins" / sha[:16] / "chunked.py"
    assert local_copy.read_text() == PLUGIN


BOOM = "import os\n\n\nraise RuntimeError('half-written kernel')\n"
NEEDS = PLUGIN.replace('"chunked_dense"', '"needs_attn"').replace('("torch",)', '("torch", "attn_absent_module")')
COLLIDE = "from kernels.registry import Built, register\n\n\n@register('dense', 'fp32', 'torch')\n" \
          "def build(case, inputs, ctx):\n    return Built(fn=lambda: inputs.q, compute='not attention')\n"
# Imports a module the controller has and one device lacks, without declaring it: fails on that device only.
DEVICE_ONLY = "import scipy  # noqa\n" + PLUGIN.replace('"chunked_dense"', '"scipy_attn"')
FAILING_SWEEP = """name: failing-plugins
plugins: [good.py, boom.py, needs.py, collide.py, device_only.py]
defaults: {heads: 2, head_dim: 16, threads: 1, seq_len: 64}
matrix:
  variant: [chunked_dense, boom_attn, needs_attn, scipy_attn, dense]
measure: {warmup_s: 0.01, min_time_s: 0.05, min_samples: 3, max_time_s: 1, timeout_s: 60, max_cpu_other: 1.0}
"""


def test_plugins_that_fail_each_say_why_and_the_rest_of_the_sweep_is_stored(ssh_env: Env, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("plugins")
    for name, text in (("good.py", PLUGIN), ("boom.py", BOOM), ("needs.py", NEEDS), ("collide.py", COLLIDE),
                       ("device_only.py", DEVICE_ONLY)):
        (folder / name).write_text(text)
    (folder / "m.yaml").write_text(FAILING_SWEEP)
    # pi's python lacks scipy (the controller has it)
    ssh_env.inventory({"pi": ssh_env.device("pi", python=str(ssh_env.lab.python("scipy")))}, trusted=("pi",))
    env = dict(os.environ, HOME=str(ssh_env.home))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--devices", "local,pi", "--matrix",
                           str(folder / "m.yaml"), "--db", ssh_env.db_url, "--inventory", "inventory.yaml"],
                          cwd=ssh_env.tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert f"plugin error: plugin {folder / 'boom.py'} line 4: RuntimeError: half-written kernel" in err
    assert (f"plugin error: plugin {folder / 'collide.py'} line 4: dense/fp32/torch/core is already registered by "
            "the bundled kernel at kernels/dense_torch.py line") in err
    store = ssh_env.store()
    run_id = store.list_runs(1)[0]["run_id"]
    rows = {(r["device"], r["variant"]): r for r in _rows(store, run_id)}
    assert len(rows) == 10
    for device in ("local", "pi"):
        assert rows[(device, "chunked_dense")]["status"] == "ok"
        assert rows[(device, "dense")]["status"] == "ok"  # the bundled kernel: the clash changed nothing
        assert rows[(device, "dense")]["details"].get("plugin") is None
        boom = rows[(device, "boom_attn")]
        assert boom["status"] == "failed" and "boom.py line 4: RuntimeError: half-written kernel" in boom["error"]
        needs = rows[(device, "needs_attn")]
        assert needs["status"] == "skipped" and "attn_absent_module is not installed in the device's python" in \
            needs["error"]
    assert rows[("local", "scipy_attn")]["status"] == "ok"
    only = rows[("pi", "scipy_attn")]
    assert only["status"] == "failed"
    assert "device_only.py line 1: ModuleNotFoundError: No module named 'scipy'" in only["error"], only["error"]
    assert str(folder / "device_only.py") in only["error"]  # named as the user knows it, not the bundle's copy
    [pi_record] = [p for p in rows[("pi", "dense")]["fingerprint"]["plugins"] if p["name"] == "device_only.py"]
    assert "No module named 'scipy'" in pi_record["error"]
    [collide] = [p for p in rows[("pi", "dense")]["fingerprint"]["plugins"] if p["name"] == "collide.py"]
    assert "already registered by the bundled kernel" in collide["error"]


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


NIGHTLY = """name: plugin-nightly
defaults: {heads: 2, head_dim: 16, threads: 1}
matrix:
  variant: [chunked_dense, dense]
  seq_len: [128]
  chunk: [16]
measure: {warmup_s: 0.05, min_time_s: 0.3, min_samples: 15, max_time_s: 5, timeout_s: 60, max_cpu_other: 1.0}
"""


def test_a_nightly_over_two_plugin_revisions_names_the_plugin_change(home: Path, tmp_path: Path) -> None:
    repo = tmp_path / "my-kernels"
    repo.mkdir()
    _git(repo, "init", "-q")
    plugin = repo / "chunked.py"
    plugin.write_text(PLUGIN)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "chunked attention")
    first = _git(repo, "rev-parse", "HEAD")
    (tmp_path / "nightly.yaml").write_text(NIGHTLY)
    db = f"sqlite:///{tmp_path / 'results.db'}"

    def harness(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", *args, "--db", db], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env=dict(os.environ, HOME=str(home)))

    one = harness("nightly", "--devices", "local", "--matrix", "nightly.yaml", "--plugin", str(plugin),
                  "--report", "n1.md")
    assert one.returncode == 0, one.stdout + one.stderr
    plugin.write_text(PLUGIN.replace("REPEAT = 1", "REPEAT = 4"))  # the planted factor
    _git(repo, "commit", "-qam", "a slower chunked attention")
    second = _git(repo, "rev-parse", "HEAD")
    two = harness("nightly", "--devices", "local", "--matrix", "nightly.yaml", "--plugin", str(plugin),
                  "--report", "n2.md")
    assert two.returncode == 1, two.stdout + two.stderr
    regressions = (tmp_path / "n2.md").read_text().split("## Improvements")[0]
    assert "chunked_dense fp32 torch L=128 heads=2 head_dim=16 threads=1 chunk=16" in regressions
    assert f"plugin chunked.py: revision {first[:12]} → revision {second[:12]}" in regressions
    # The bundled kernel's series (on a shared machine it may move too) never blames the plugin.
    assert all("plugin" not in line for line in regressions.splitlines() if line.startswith("| local | dense fp32"))

    regress = harness("regress", "--devices", "local", "--format", "json")
    assert regress.returncode == 1
    [finding] = [f for f in json.loads(regress.stdout) if f["case"]["variant"] == "chunked_dense"]
    assert finding["change_pct"] > 100
    assert finding["differs"]["plugin chunked.py"] == [f"revision {first[:12]}", f"revision {second[:12]}"]
    assert finding["cause"].startswith(f"plugin chunked.py changed (revision {first[:12]} -> revision {second[:12]})")

    # Without the plugin named on the command line, --confirm cannot take its code from anywhere.
    blind = harness("regress", "--devices", "local", "--confirm", "3")
    assert "give it with --plugin PATH" in blind.stderr
    # The plugin's repository now holds a third revision; confirm takes the two the runs recorded from it.
    plugin.write_text(PLUGIN.replace("REPEAT = 1", "REPEAT = 2"))
    confirmed = harness("regress", "--devices", "local", "--confirm", "3", "--plugin", str(plugin))
    assert confirmed.returncode == 1, confirmed.stdout + confirmed.stderr
    said = " ".join(confirmed.stderr.split())  # rich wraps stderr
    assert f"confirmed: local {finding['case_hash']}: old " in said, said
    assert f"not confirmed: local {finding['case_hash']}" not in said, said
    assert f"with plugin chunked.py {first[:12]} vs new" in said
    assert f"with plugin chunked.py {second[:12]}, 3 rounds" in said
