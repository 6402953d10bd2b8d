"""Start the dashboard: `streamlit run dashboard/app.py` on 127.0.0.1, headless, reading one database.

`harness dashboard [--port N] --db URL` calls `launch`. The database is opened read-only by the pages
(`results.queries.read_only_engine`); `launch` checks before starting that it exists and is at this
harness's schema revision, so the user gets the fix at once instead of an error page.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.safe_text import mask_url, terminal
from results import queries

APP = Path(__file__).parent / "app.py"
DEFAULT_PORT = 8501


def command(port: int) -> list[str]:
    """The `streamlit run` command line (the address is always loopback)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--global.developmentMode", "false", "--client.toolbarMode", "viewer"]


def check_database(db_url: str) -> None:
    """Raise HarnessError (StoreError) with the fix when the dashboard could not read the database."""
    engine = queries.read_only_engine(db_url)
    try:
        queries.check_schema(engine)
    finally:
        engine.dispose()


def launch(db_url: str, port: int = DEFAULT_PORT) -> int:
    """Serve the dashboard for `db_url` on http://127.0.0.1:PORT until interrupted; returns the exit code.

    Raises `workloads.errors.StoreError` (a HarnessError) when the database cannot be read (missing file,
    old schema); nothing is started then."""
    check_database(db_url)
    env = dict(os.environ, HARNESS_DB=db_url)
    print(f"attn-harness dashboard on http://127.0.0.1:{port} reading {terminal(mask_url(db_url))} (Ctrl-C stops "
          "it)", flush=True)
    proc = subprocess.Popen(command(port), env=env)

    def _stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM (a service manager, a test) stops the server like Ctrl-C does, rather than orphaning it.
    try:
        previous = signal.signal(signal.SIGTERM, _stop)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_server(proc)
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def stop_server(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """Stop a Streamlit server: SIGINT (its clean shutdown), then SIGKILL if it is still there after grace_s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)
