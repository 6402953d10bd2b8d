"""`harness results prune --older-than AGE`: raw samples of old runs go, every summary stays."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
from sqlalchemy import update

from helpers import harness
from pg import any_db_url  # noqa: F401  (fixture)
from results.exchange import export_rows
from results.models import Run
from results.prune import describe, parse_duration, prune_samples
from results.store import Store, utcnow
from workloads.errors import ConfigError
from workloads.spec import canonical_case


@pytest.mark.parametrize("text, expected", [
    ("180d", timedelta(days=180)), ("26w", timedelta(weeks=26)), ("12h", timedelta(hours=12)),
    ("30m", timedelta(minutes=30)), ("90s", timedelta(seconds=90)), (" 7d ", timedelta(days=7)),
])
def test_ages_parse_with_their_unit(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["180", "d", "-5d", "0d", "1.5d", "180 days", "6mo", ""])
def test_a_bad_age_is_refused_naming_the_flag_and_the_forms(text):
    with pytest.raises(ConfigError, match="--older-than.*180d \\(days\\)"):
        parse_duration(text)


def history(store: Store, ages_days: list[int]) -> list[str]:
    """One finished run per age (days before now), each with two ok results (3 samples) and a failure."""
    ids = []
    for age in ages_days:
        run_id = store.create_run(matrix_name="nightly", matrix_text="", measure={}, devices=["rpi4"])
        for seq in (64, 128):
            store.add_result(run_id, "rpi4", canonical_case({"seq_len": seq}),
                             {"status": "ok", "samples_ms": [1.0 + age, 2.0 + age, 3.0 + age]})
        store.add_result(run_id, "rpi4", canonical_case({"seq_len": 8192}), {"status": "failed", "error": "oom"})
        store.finish_run(run_id, "complete")
        with store.engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(started_at=utcnow() - timedelta(days=age)))
        ids.append(run_id)
    return ids


def test_prune_drops_old_samples_and_keeps_every_summary(any_db_url):
    store = Store(any_db_url)
    old1, old2, recent = history(store, [400, 200, 10])
    before = {(r["run_id"], r["seq_len"]): r for r in export_rows(store)}
    result = prune_samples(store, timedelta(days=180))
    assert (result.runs, result.measurements, result.samples, result.bytes) == (2, 4, 12, 96)
    after = {(r["run_id"], r["seq_len"]): r for r in export_rows(store)}
    assert after.keys() == before.keys()  # no measurement removed
    for key, row in after.items():
        if key[0] in (old1, old2):
            assert row["samples_ms"] is None
            assert {k: v for k, v in row.items() if k != "samples_ms"} == \
                {k: v for k, v in before[key].items() if k != "samples_ms"}
        else:
            assert row == before[key]
    assert store.get_run(old1).samples_pruned_at is not None and store.get_run(recent).samples_pruned_at is None
    # Nothing left to prune: a second run drops nothing.
    assert prune_samples(store, timedelta(days=180)).measurements == 0


def test_prune_leaves_a_run_alone_while_its_controller_is_alive(any_db_url):
    store = Store(any_db_url)
    [run_id] = history(store, [365])
    with store.engine.begin() as conn:  # still "running", by a live process on this host
        conn.execute(update(Run).where(Run.id == run_id).values(status="running", controller_pid=os.getppid(),
                                                                 controller_host=socket.gethostname()))
    assert prune_samples(store, timedelta(days=30)).measurements == 0
    with store.engine.begin() as conn:  # that controller is gone
        conn.execute(update(Run).where(Run.id == run_id).values(controller_pid=None))
    assert prune_samples(store, timedelta(days=30)).measurements == 2


def test_cli_prune_says_how_much_it_dropped(home, any_db_url):
    store = Store(any_db_url)
    history(store, [300, 250, 1])
    proc = harness("results", "prune", "--older-than", "180d", "--db", any_db_url)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.replace("\n", " ")
    assert "dropped the raw samples of 4 measurement(s) in 2 run(s) started before" in out
    assert "12 samples" in out and "summaries kept" in out
    again = harness("results", "prune", "--older-than", "180d", "--db", any_db_url, check=True)
    assert "nothing to prune" in again.stdout


def test_cli_prune_with_a_bad_age_exits_2_and_touches_nothing(home, tmp_path):
    url = f"sqlite:///{tmp_path / 'never.db'}"
    proc = harness("results", "prune", "--older-than", "six months", "--db", url)
    assert proc.returncode == 2
    assert "--older-than" in proc.stderr and "180d" in proc.stderr
    assert not (tmp_path / "never.db").exists()
    missing = harness("results", "prune", "--db", url)
    assert missing.returncode == 2 and "--older-than" in missing.stderr


def test_describe_mentions_vacuum_only_for_sqlite():
    from results.prune import PruneResult

    r = PruneResult(cutoff=utcnow(), runs=1, measurements=2, samples=2048)
    assert "VACUUM" in describe(r, "sqlite") and "VACUUM" not in describe(r, "postgresql")
    assert "2,048 samples (16 KiB)" in describe(r, "postgresql")
