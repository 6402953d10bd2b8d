"""`harness regress --confirm`: old and new code, taken from git, re-measured alternately on the device."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devices.inventory import parse_inventory
from sshd import ssh_env, ssh_lab  # noqa: F401 (fixtures)

from harness.confirm import confirm
from results.regress import Finding
from workloads.matrix import MeasureConfig
from workloads.spec import canonical_case

REPO = Path(__file__).resolve().parent.parent
QUICK = MeasureConfig(warmup_s=0.05, min_time_s=0.3, min_samples=10, max_time_s=5, timeout_s=60)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}).stdout.strip()


@pytest.fixture(scope="module")
def revisions(tmp_path_factory) -> dict[str, str]:
    """A clone of this repository with three revisions: base, a 4x slower worker, a docs-only change."""
    repo = tmp_path_factory.mktemp("confirm") / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
    base = _git(repo, "rev-parse", "HEAD")
    worker = repo / "harness/worker.py"
    text = worker.read_text()
    marker = 'slowdown = int(case.get("slowdown") or 1)'
    assert marker in text
    worker.write_text(text.replace(marker, "slowdown = 4 * int(case.get(\"slowdown\") or 1)"))
    _git(repo, "commit", "-qam", "slow")
    slow = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", base)
    (repo / "README.md").write_text("docs only\n")
    _git(repo, "commit", "-qam", "docs")
    docs = _git(repo, "rev-parse", "HEAD")
    return {"repo": str(repo), "base": base, "slow": slow, "docs": docs}


def _finding(device: str = "local") -> Finding:
    # One thread: OpenMP threads waiting for time slices on a loaded machine would swamp the comparison.
    case = canonical_case({"precision": "fp32", "seq_len": 64, "heads": 4, "head_dim": 32, "threads": 1})
    return Finding(device=device, case=case, metric="latency_ms", run_id="new", started_at="", before=1.0,
                   after=1.3, before_interval=(0.9, 1.1), after_interval=(1.2, 1.4), change_pct=30.0,
                   direction="regression", statistic=5.0, statistic_name="t", p_value=1e-4, runs_before=["old"],
                   runs_after=["new"], differs={})


def test_a_real_slowdown_between_revisions_is_confirmed(home, revisions):
    [c] = confirm([_finding()], parse_inventory({}, "devices.yaml"),
                  {"old": revisions["base"], "new": revisions["slow"]}, rounds=2, measure=QUICK,
                  repo=Path(revisions["repo"]))
    assert c.confirmed is True, c.reason
    assert c.change_pct > 100 and len(c.old_samples) >= 20 and len(c.new_samples) >= 20
    # Each round measured afresh (a journal replay would repeat the first round's samples).
    half = len(c.old_samples) // 2
    assert c.old_samples[:half] != c.old_samples[half:]


def test_a_suspect_whose_code_did_not_change_speed_is_not_confirmed(home, revisions):
    [c] = confirm([_finding()], parse_inventory({}, "devices.yaml"),
                  {"old": revisions["base"], "new": revisions["docs"]}, rounds=2, measure=QUICK,
                  repo=Path(revisions["repo"]))
    assert c.confirmed is False, c.reason


def test_a_run_without_a_revision_is_reported_as_unconfirmed_not_dropped(home, revisions):
    [c] = confirm([_finding()], parse_inventory({}, "devices.yaml"), {"old": None, "new": revisions["slow"]},
                  rounds=1, measure=QUICK, repo=Path(revisions["repo"]))
    assert c.confirmed is None and "no git revision" in c.reason


@pytest.mark.slow
def test_confirmation_ships_each_revision_to_a_remote_device(ssh_env, revisions):
    inventory = ssh_env.inventory()
    [c] = confirm([_finding("pi")], inventory, {"old": revisions["base"], "new": revisions["slow"]}, rounds=1,
                  measure=QUICK, repo=Path(revisions["repo"]))
    assert c.confirmed is True, c.reason
    bundles = list((ssh_env.tmp / "work-pi" / "bundles").iterdir())
    assert len(bundles) >= 2  # the old and the new code, each under its own content hash
