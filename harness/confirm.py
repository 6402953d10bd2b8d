"""`harness regress --confirm`: re-measure a suspected regression before reporting it.

TorchBench learned to alert only after confirming: a suspected regression is re-measured on its device with
the harness code of the run before the change (the old bundle) and of the run after it (the new bundle),
alternated A B B A so that drift in the device (heat, background load) and whatever one process leaves to
the next hit both alike. The code of each side is taken from git at the revision the run recorded. Each
round is a fresh worker process, and the process is the unit of the verdict (`results.regress.rounds_change`):
on a small board one process's median lands 20-40% from the next one's on the same code, so thousands of
samples from two processes prove nothing. A regression is confirmed when every round of the new code is
slower than every round of the old, by more than rounds of the same code differ among themselves.

When the series measures a user's plugin, each side also gets that plugin at the revision its run recorded,
taken from the plugin's own git repository: the one the plugin named on the command line (`--plugin PATH`)
lives in, never a path stored in the database. Each revision is a validated hex name passed after
`--end-of-options`, and what comes out must have the sha256 the run recorded (a run that measured
uncommitted changes cannot be rebuilt, and says so).
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


from devices.inventory import DeviceConfig, Inventory
from harness.controller import DEFAULT_WAIT_TIMEOUT_S, REPO_ROOT, AgentSession, LocalAgent
from harness.plugins import Plugin, git_info, read_plugin
from harness.safe_text import terminal
from kernels.plugins import PluginSpec
from results.regress import CONFIRM_MIN_ROUNDS, Finding, rounds_change
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
    old_round_medians: list[float] = field(default_factory=list)  # one per worker process
    new_round_medians: list[float] = field(default_factory=list)


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


PLUGIN_REVISION = re.compile(r"[0-9a-f]{7,64}")


def plugin_checkout(plugin: Plugin, record: dict[str, Any], dest: Path) -> Plugin:
    """The plugin named on the command line (`plugin`), at the revision a run recorded for it (`record`, from
    the database: only its revision and sha256 are used, both checked), taken from the plugin's own git
    repository into `dest`. HarnessError when that cannot be done faithfully."""
    rev = record.get("revision")
    name = terminal(str(record.get("name")))[:80]
    if not isinstance(rev, str) or not PLUGIN_REVISION.fullmatch(rev):
        raise HarnessError(f"plugin {name}: the run recorded no git revision (or {terminal(str(rev))[:80]!r}, not a "
                           "git object name): the code it ran cannot be rebuilt")
    if record.get("dirty"):
        raise HarnessError(f"plugin {name}: the run measured it with uncommitted changes on top of revision "
                           f"{rev[:12]}; that code is not in git and cannot be rebuilt")
    git = git_info(Path(plugin.spec.origin))
    if git is None:
        raise HarnessError(f"plugin {terminal(plugin.spec.origin)} is not in a git work tree: its old revisions "
                           "cannot be taken from git")
    # Everything after --end-of-options is the tree and its paths, never an option (git archive takes no "--").
    proc = subprocess.run(["git", "-C", git["repo"], "archive", "--format=tar", "--end-of-options", rev,
                           git["path_in_repo"]], capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise HarnessError(f"cannot take plugin {git['path_in_repo']} at revision {rev[:12]} from {git['repo']}: "
                           f"{terminal(proc.stderr.decode(errors='replace').strip())}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    taken = read_plugin(dest / git["path_in_repo"], f"revision {rev[:12]} of {plugin.spec.origin}")
    if taken.spec.sha256 != record.get("sha256"):
        raise HarnessError(f"plugin {name} at revision {rev[:12]} has sha256 {taken.spec.sha256[:16]}..., not the "
                           f"{str(record.get('sha256'))[:16]}... the run recorded; it cannot be rebuilt faithfully")
    return Plugin(PluginSpec(taken.spec.id, taken.spec.name, taken.spec.path, plugin.spec.origin, taken.spec.sha256),
                  taken.files, taken.source, None)


def matching_plugin(record: dict[str, Any], given: Sequence[Plugin]) -> Plugin | None:
    """The plugin named on the command line that a stored record is about: same name (and path, when
    several have that name)."""
    same = [p for p in given if p.spec.name == record.get("name")]
    if len(same) > 1:
        same = [p for p in same if p.spec.origin == record.get("path")]
    return same[0] if len(same) == 1 else None


def _measure_once(device: DeviceConfig, code_root: Path, case: dict[str, Any], measure: MeasureConfig,
                  start: Callable[[DeviceConfig, dict[str, Any], Path], AgentSession],
                  plugin: Plugin | None = None) -> list[float]:
    # A fresh run id each time: the agent replays results it has journaled for a run id.
    item: dict[str, Any] = {"hash": case_hash(case), "case": case}
    if plugin is not None:
        item["plugin"] = plugin.spec.id
    plan = {"run_id": f"confirm-{code_root.name}-{uuid.uuid4().hex[:8]}", "device": device.name, "seed": 0,
            "cases": [item], "measure": measure.to_dict(),
            "workdir": device.workdir, "power": None,
            "plugins": [plugin.shipped().to_dict()] if plugin is not None else [],
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
            rounds: int = 4, measure: MeasureConfig = CONFIRM_MEASURE, min_effect: float = 0.05,
            repo: Path = REPO_ROOT, plugin_records: dict[tuple[str, str], dict[str, Any] | None] | None = None,
            plugins: Sequence[Plugin] = ()) -> list[Confirmation]:
    """Re-measure each regression finding, old and new code alternated; `revisions` maps run id -> git rev.

    `plugin_records` maps (run id, case hash) to the record of the plugin whose kernel the run measured the
    case with (from the database); such a case is re-measured with that plugin's revision of each side, taken
    from the repository of the matching plugin in `plugins` (named on the command line)."""
    if rounds < CONFIRM_MIN_ROUNDS:
        raise HarnessError(f"confirmation needs at least {CONFIRM_MIN_ROUNDS} rounds (worker processes per side): "
                           "one process's median can land 20-40% from the next one's on the same code")
    plugin_records = plugin_records or {}
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
            old_run = finding.runs_before[-1] if finding.runs_before else ""
            try:
                old_plugin, new_plugin, plugin_note = _plugin_sides(
                    plugin_records.get((old_run, finding.case_hash)),
                    plugin_records.get((finding.run_id, finding.case_hash)), plugins, Path(tmp))
                old_root = checkout(old_rev, Path(tmp) / f"old-{old_rev[:12]}", repo)
                new_root = checkout(new_rev, Path(tmp) / f"new-{new_rev[:12]}", repo)
                sides = {"old": (old_root, old_plugin), "new": (new_root, new_plugin)}
                measured: dict[str, list[list[float]]] = {"old": [], "new": []}
                for r in range(rounds):
                    # A B, then B A: whatever the first process of a pair leaves behind (a warm cache, a
                    # core still busy tearing it down) falls on both sides alike.
                    for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
                        root, plugin = sides[side]
                        samples = _measure_once(device, root, dict(finding.case), measure, start, plugin)
                        if len(samples) < 3 or min(samples) <= 0:
                            raise HarnessError(f"re-measurement of the {side} code returned {len(samples)} usable "
                                               "samples")
                        measured[side].append(samples)
            except HarnessError as exc:
                out.append(Confirmation(finding, None, str(exc)))
                continue
            old_label, new_label = old_rev[:12] + plugin_note[0], new_rev[:12] + plugin_note[1]
            judged = rounds_change(measured["old"], measured["new"], min_effect=min_effect)
            old = [x for r in measured["old"] for x in r]
            new = [x for r in measured["new"] for x in r]
            said = f"old {old_label} vs new {new_label}, {rounds} rounds alternated: {judged.summary()}"
            out.append(Confirmation(finding, judged.reproduced, said if judged.reproduced else f"not reproduced: {said}",
                                    old, new, judged.change_pct, judged.p_value, judged.old_medians,
                                    judged.new_medians))
    return out


def _plugin_sides(old_rec: dict[str, Any] | None, new_rec: dict[str, Any] | None, given: Sequence[Plugin],
                  tmp: Path) -> tuple[Plugin | None, Plugin | None, tuple[str, str]]:
    """The plugin code of the old and the new side (None: a bundled kernel), and words naming them."""
    if old_rec is None and new_rec is None:
        return None, None, ("", "")
    sides: list[Plugin | None] = []
    words = []
    for label, rec in (("old", old_rec), ("new", new_rec)):
        if rec is None:
            sides.append(None)
            words.append("")
            continue
        plugin = matching_plugin(rec, given)
        if plugin is None:
            raise HarnessError(f"the case's kernel comes from plugin {terminal(str(rec.get('name')))[:80]}; give it "
                               "with --plugin PATH so its revisions can be taken from its own git repository (the "
                               "harness never takes code from a path stored in the database)")
        taken = plugin_checkout(plugin, rec, tmp / f"plugin-{label}-{str(rec.get('revision'))[:12]}")
        sides.append(taken)
        words.append(f" with plugin {taken.spec.name} {str(rec.get('revision'))[:12]}")
    return sides[0], sides[1], (words[0], words[1])


def plugin_records_of(store: Any, findings: Iterable[Finding]) -> dict[tuple[str, str], dict[str, Any] | None]:
    """(run id, case hash) -> the record of the plugin that ran that case in that run, for both sides of each
    finding (read from the runs' fingerprints: data, never imported)."""
    from sqlalchemy import select

    from results.models import Device, RunDevice
    from results.regress import plugin_of

    out: dict[tuple[str, str], dict[str, Any] | None] = {}
    with store.Session() as s:
        for f in findings:
            for run_id in (f.run_id, *f.runs_before[-1:]):
                fp = s.scalar(select(RunDevice.fingerprint).join(Device, Device.id == RunDevice.device_id)
                              .where(RunDevice.run_id == run_id, Device.name == f.device))
                out[(run_id, f.case_hash)] = plugin_of(fp if isinstance(fp, dict) else None, f.case)
    return out


def confirmation_json(confirmations: list[Confirmation]) -> str:
    return json.dumps([{**c.finding.to_dict(), "confirmed": c.confirmed, "confirmation": c.reason}
                       for c in confirmations], indent=1, default=str)
