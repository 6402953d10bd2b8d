"""`harness regress --confirm`: re-measure a suspected regression before reporting it.

TorchBench learned to alert only after confirming: a suspected regression is re-measured on its device with
the harness code of the run before the change (the old bundle) and of the run after it (the new bundle),
alternated A B A B so that drift in the device (heat, background load) hits both alike. The code of each side
is taken from git at the revision the run recorded. The verdict is the same test the short-history check
uses (Mann-Whitney on raw samples, and a minimum effect) on the pooled samples of each side.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from devices.inventory import DeviceConfig, Inventory
from harness.controller import DEFAULT_WAIT_TIMEOUT_S, REPO_ROOT, AgentSession, LocalAgent
from harness.safe_text import terminal
from results.regress import Finding, short_history_change
from results.validate import GIT_REVISION
from workloads.errors import HarnessError
from workloads.matrix import MeasureConfig
from workloads.spec import case_hash

# The device-side packages a bundle needs.
BUNDLE_PATHS = ("harness", "devices", "workloads", "kernels")
CONFIRM_MEASURE = MeasureConfig(warmup_s=0.2, min_time_s=0.5, min_samples=10, max_time_s=20, timeout_s=120)


@dataclass
class Confirmation:
    finding: Finding
    confirmed: bool | None  # None: could not be re-measured (the reason says why)
    reason: str
    old_samples: list[float] = field(default_factory=list)
    new_samples: list[float] = field(default_factory=list)
    change_pct: float | None = None
    p_value: float | None = None


def checkout(revision: str, dest: Path, repo: Path = REPO_ROOT) -> Path:
    """The device-side code at `revision` (a '-dirty' suffix is dropped: the committed code is used).

    The revision comes from the database, which an import may have filled: it must be a hex object name
    (anything else is refused, never handed to git), and it is passed after `--end-of-options` so that
    even a name git would read as an option could not be one."""
    if not isinstance(revision, str) or not GIT_REVISION.fullmatch(revision):
        raise HarnessError(f"the stored git revision {terminal(str(revision))[:80]!r} is not a git object name (hex "
                           "digits); the code of that run cannot be rebuilt")
    rev = revision.removesuffix("-dirty")
    proc = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "--end-of-options", rev,
                           *BUNDLE_PATHS], capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise HarnessError(f"cannot take the code of revision {rev} from {repo}: "
                           f"{terminal(proc.stderr.decode(errors='replace').strip())}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _measure_once(device: DeviceConfig, code_root: Path, case: dict[str, Any], measure: MeasureConfig,
                  start: Callable[[DeviceConfig, dict[str, Any], Path], AgentSession]) -> list[float]:
    # A fresh run id each time: the agent replays results it has journaled for a run id.
    plan = {"run_id": f"confirm-{code_root.name}-{uuid.uuid4().hex[:8]}", "device": device.name, "seed": 0,
            "cases": [{"hash": case_hash(case), "case": case}], "measure": measure.to_dict(),
            "workdir": device.workdir, "power": None,
            # Re-measuring waits for a device another run holds, as a run does (bounded the same way).
            "wait_timeout_s": DEFAULT_WAIT_TIMEOUT_S}
    session = start(device, plan, code_root)
    samples: list[float] = []
    try:
        for record in session.lines(measure.timeout_s + 60):
            if record.get("type") == "result":
                if record.get("status") != "ok":
                    raise HarnessError(f"re-measurement failed: {record.get('error')}")
                samples = record.get("samples_ms") or []
    finally:
        session.stop()
    return samples


def _starter(device: DeviceConfig, inventory: Inventory) -> Callable[[DeviceConfig, dict[str, Any], Path], AgentSession]:
    """Start an agent with the code under a given root: a subprocess here, or a shipped bundle over SSH."""
    if device.is_local:
        return lambda d, plan, root: LocalAgent(d, plan, code_root=root)
    from harness.ssh import SSHTransport

    return lambda d, plan, root: SSHTransport(d, inventory, code_root=root).start(plan)


def confirm(findings: Iterable[Finding], inventory: Inventory, revisions: dict[str, str | None], *,
            rounds: int = 3, measure: MeasureConfig = CONFIRM_MEASURE, min_effect: float = 0.05,
            repo: Path = REPO_ROOT) -> list[Confirmation]:
    """Re-measure each regression finding, old and new code alternated; `revisions` maps run id -> git rev."""
    out: list[Confirmation] = []
    with tempfile.TemporaryDirectory(prefix="harness-confirm-") as tmp:
        for finding in findings:
            if finding.direction != "regression":
                continue
            old_rev = revisions.get(finding.runs_before[-1]) if finding.runs_before else None
            new_rev = revisions.get(finding.run_id)
            if not old_rev or not new_rev:
                out.append(Confirmation(finding, None, "a run recorded no git revision: the code it ran cannot "
                                                       "be rebuilt; re-run both sides by hand"))
                continue
            bad = [r for r in (old_rev, new_rev) if not GIT_REVISION.fullmatch(r)]
            if bad:  # from an old database or an old import: never handed to git
                out.append(Confirmation(finding, None, f"the stored git revision {terminal(bad[0])[:80]!r} is not a "
                                                       "git object name (hex digits); the code it ran cannot be "
                                                       "rebuilt"))
                continue
            device = inventory.devices.get(finding.device)
            if device is None:
                out.append(Confirmation(finding, None, f"device {finding.device} is not in the inventory"))
                continue
            start = _starter(device, inventory)
            try:
                old_root = checkout(old_rev, Path(tmp) / f"old-{old_rev[:12]}", repo)
                new_root = checkout(new_rev, Path(tmp) / f"new-{new_rev[:12]}", repo)
                old: list[float] = []
                new: list[float] = []
                for _ in range(rounds):
                    old += _measure_once(device, old_root, dict(finding.case), measure, start)
                    new += _measure_once(device, new_root, dict(finding.case), measure, start)
            except HarnessError as exc:
                out.append(Confirmation(finding, None, str(exc)))
                continue
            found = short_history_change(old, new, min_effect=min_effect)
            change = float(np.median(new) / np.median(old) - 1) * 100
            if found and found[0] == "regression":
                out.append(Confirmation(finding, True, f"old {old_rev[:12]} vs new {new_rev[:12]}, {rounds} rounds "
                                                       f"alternated: {change:+.1f}%, p = {found[3]:.2g}",
                                        old, new, change, found[3]))
            else:
                out.append(Confirmation(finding, False, f"not reproduced: old {old_rev[:12]} vs new {new_rev[:12]}, "
                                                        f"{rounds} rounds alternated: {change:+.1f}%", old, new, change))
    return out


def confirmation_json(confirmations: list[Confirmation]) -> str:
    return json.dumps([{**c.finding.to_dict(), "confirmed": c.confirmed, "confirmation": c.reason}
                       for c in confirmations], indent=1, default=str)
