"""Shared fixtures: an isolated HOME and working directory, a real SQLite file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def native_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build cache for the fused int8 kernel per test session (each back end compiles once, ~5 s), shared
    with the agents and workers the tests start (they inherit the environment). Tests of the cache itself
    unset it."""
    path = tmp_path_factory.mktemp("native-cache")
    old = os.environ.get("HARNESS_NATIVE_CACHE")
    os.environ["HARNESS_NATIVE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HARNESS_NATIVE_CACHE", None)
    else:
        os.environ["HARNESS_NATIVE_CACHE"] = old

@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and the current directory in a temp dir: no test touches the developer's files."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_DB", raising=False)
    monkeypatch.delenv("HARNESS_INVENTORY", raising=False)
    return h


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"
