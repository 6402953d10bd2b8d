"""Helpers for tests: run the CLI as a user would, write tiny matrices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
