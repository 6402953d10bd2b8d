"""The installed packages are this repository's, and device-side code imports only what a device has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "devices", "workloads", "kernels", "results", "dashboard")
# What a device may lack: the controller's own dependencies.
CONTROLLER_ONLY = ("fabric", "paramiko", "invoke", "sqlalchemy", "alembic", "pandas", "streamlit", "yaml",
                   "click", "rich", "altair", "psycopg")


def test_installed_top_level_packages_resolve_to_this_repository(tmp_path):
    # From another directory, so the current directory cannot mask a same-named package elsewhere.
    code = "import importlib.util, json; print(json.dumps({n: importlib.util.find_spec(n).origin for n in %r}))" % (
        PACKAGES,)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         check=True)
    origins = json.loads(out.stdout)
    for name, origin in origins.items():
        assert origin and Path(origin).resolve().is_relative_to(REPO), f"{name} resolves to {origin}"


def test_device_side_code_runs_a_case_without_controller_dependencies(tmp_path):
    """Run the agent and its worker with the controller's dependencies made unimportable."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        BLOCKED = {CONTROLLER_ONLY!r}
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError(f'device-side code imported {{name}}')
                return None
        sys.meta_path.insert(0, Blocker())
    """))
    plan = {"run_id": "t", "device": "local", "workdir": str(tmp_path / "work"),
            "measure": {"warmup_s": 0.01, "min_time_s": 0.02, "min_samples": 3, "max_time_s": 5, "timeout_s": 60},
            "cases": [{"hash": "h1", "case": {"variant": "dense", "precision": "int8", "backend": "torch",
                                              "scope": "core", "seq_len": 32, "batch": 1, "heads": 2,
                                              "head_dim": 16, "inputs": "normal", "quant": "per_block"}}]}
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}")
    proc = subprocess.run([sys.executable, "-m", "harness.agent"], input=json.dumps(plan), capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    result = [r for r in records if r["type"] == "result"][0]
    assert result["status"] == "ok", result.get("error")
    assert "device-side code imported" not in proc.stderr
    # The device probe too.
    proc = subprocess.run([sys.executable, "-m", "devices.probe"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["arch"]
