"""Helpers for tests: run the CLI as a user would, write tiny matrices."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HARNESS = [sys.executable, "-m", "harness"]

# Small enough that a case measures in well under a second on 2 cores.
TINY_MEASURE = "measure: {warmup_s: 0.02, min_time_s: 0.05, min_samples: 3, max_time_s: 5, timeout_s: 60}"


def write_matrix(path: Path, body: str, measure: str = TINY_MEASURE) -> Path:
    path.write_text(body.rstrip() + "\n" + measure + "\n")
    return path


def harness(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess, as a user would."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO)
    if env:
        full_env.update(env)
    proc = subprocess.run(HARNESS + list(args), capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"harness {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(predicate: Any, timeout: float = 120.0, poll: float = 0.05) -> None:
    """Poll `predicate` until it is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError("condition not reached in time")


def stored_count(db_url: str) -> int:
    """Measurements stored in a SQLite database so far (0 while it or its schema does not exist yet)."""
    from results.store import Store

    path = Path(db_url.split("///", 1)[1])
    if not path.exists():
        return 0
    try:
        return sum(sum(r["counts"].values()) for r in Store(db_url, upgrade=False).list_runs())
    except Exception:
        return 0  # schema not created yet
