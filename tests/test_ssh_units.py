"""The pure parts of the SSH transport: quoting, remote paths, the bundle, memory estimates, known_hosts
edits, and the agent's journal follower and detach, all without a network."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import gzip
import time
from pathlib import Path

import paramiko
import pytest

from harness import agent
from harness.bundle import build_bundle, bundle_paths, digest_of
from harness.ssh import (HostKeyScan, RemotePaths, fingerprint, known_hosts_path, pin_host_key, rpath,
                         safe_component)
from devices.inventory import Inventory
from workloads.memory import estimate_peak_mb, memory_skip_reason
from workloads.spec import canonical_case

HOSTILE = ["plain", "with space", "semi;colon", "$(touch /tmp/x)", "`id`", "quote'in", 'dq"x', "~/a b", "-n", "*"]


@pytest.mark.parametrize("path", HOSTILE)
def test_rpath_reaches_the_shell_as_exactly_one_literal_word(path: str, tmp_path: Path) -> None:
    out = subprocess.run(["sh", "-c", f"printf '%s\\n' {rpath(path)}"], capture_output=True, text=True,
                         env={"HOME": "/home/dev", "PATH": os.environ["PATH"]}, cwd=tmp_path).stdout
    expected = "/home/dev/" + path[2:] if path.startswith("~/") else path
    assert out == expected + "\n"
    assert list(tmp_path.iterdir()) == []  # nothing was created by a glob or a substitution


def test_safe_component_is_a_plain_file_name_and_tells_names_apart() -> None:
    a, b = safe_component("pi; rm -rf /"), safe_component("pi; rm -rf  /")
    assert a != b
    for name in (a, b, safe_component("../../etc"), safe_component("")):
        assert "/" not in name and " " not in name and ";" not in name and not name.startswith(".")


def test_remote_paths_keep_every_run_file_inside_the_workdir_journal() -> None:
    p = RemotePaths.of("~/.cache/attn-harness", "abc123", "run1", "../evil name")
    assert p.bundle == "~/.cache/attn-harness/bundles/abc123"
    for path in (p.journal, p.plan, p.pid, p.log):
        assert path.startswith("~/.cache/attn-harness/journal/") and ".." not in path


def test_bundle_holds_device_code_only_and_its_digest_follows_content(tmp_path: Path) -> None:
    paths = bundle_paths()
    assert {"harness/agent.py", "harness/worker.py", "harness/__init__.py", "devices/probe.py",
            "kernels/registry.py", "workloads/spec.py", "workloads/memory.py"} <= set(paths)
    assert not any(p.startswith(("results/", "dashboard/", "tests/")) or p in ("harness/cli.py",
                   "harness/controller.py", "harness/ssh.py", "devices/inventory.py") for p in paths)
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in paths)
    one, two = build_bundle(), build_bundle()
    assert one.digest == two.digest and one.tarball() == two.tarball()
    changed = tuple((rel, data + b"#" if rel == "harness/agent.py" else data) for rel, data in one.files)
    assert digest_of(changed) != one.digest
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(one.tarball()))) as tar:
        assert sorted(tar.getnames()) == paths


def test_bundled_code_runs_without_this_checkout(tmp_path: Path) -> None:
    """The bundle alone (no editable install on the path) can probe and run the agent's follower."""
    with tarfile.open(fileobj=io.BytesIO(build_bundle().tarball())) as tar:
        tar.extractall(tmp_path, filter="data")
    code = ("import sys, harness.agent, devices.probe, workloads.memory, kernels.registry; "
            "assert all(m.__file__.startswith(sys.argv[1]) for m in (harness.agent, devices.probe, kernels.registry))")
    # -I -S: no site-packages, so no editable install of this checkout to fall back on.
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, sys.argv[1]); {code}",
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_memory_estimate_grows_with_the_square_of_seq_len_and_skips_what_cannot_fit() -> None:
    small = canonical_case({"seq_len": 128})
    big = canonical_case({"seq_len": 65536})
    assert estimate_peak_mb(small).total_mb < 400
    # 8 heads x 65536^2 float64 scores and softmax: 2 x 256 GiB.
    assert estimate_peak_mb(big).parts_mb["float64 reference"] > 500_000
    assert memory_skip_reason(small, 4096) is None
    reason = memory_skip_reason(big, 4096)
    assert reason and "needs an estimated" in reason and "float64 reference" in reason and "4,096 MB" in reason
    assert memory_skip_reason(big, None) is None  # unknown availability: never guess a skip


def test_precheck_names_the_missing_backend_before_memory() -> None:
    caps = {"modules": {"torch": True, "onnxruntime": False}}
    ort = canonical_case({"backend": "onnxruntime", "seq_len": 32})
    assert "onnxruntime is not installed" in (agent.precheck(ort, caps, 8000) or "")
    assert agent.precheck(canonical_case({"seq_len": 32}), caps, 8000) is None
    assert "torch is not installed" in (agent.precheck(canonical_case({}), {"modules": {}}, 8000) or "")


def _scan(path: Path, host: str, key: paramiko.PKey) -> HostKeyScan:
    return HostKeyScan("dev", host, key, path, None, "unknown")


def test_pin_host_key_replaces_only_this_hosts_key_of_that_type(tmp_path: Path) -> None:
    old, new, other = (paramiko.Ed25519Key.from_private_key(io.StringIO(_ed25519())) for _ in range(3))
    rsa_line = f"[10.0.0.1]:2222 ssh-rsa {paramiko.RSAKey.generate(1024).get_base64()}"
    hashed = paramiko.HostKeys.hash_host("[10.0.0.1]:2222")
    known = tmp_path / "ssh" / "known_hosts"
    known.parent.mkdir()
    known.write_text("# my comment\n"
                     f"{hashed} ssh-ed25519 {old.get_base64()}\n"
                     f"[10.0.0.1]:2222,alias ssh-ed25519 {old.get_base64()}\n"
                     f"{rsa_line}\n"
                     f"otherhost ssh-ed25519 {other.get_base64()}\n")
    pin_host_key(_scan(known, "[10.0.0.1]:2222", new))
    lines = known.read_text().splitlines()
    assert lines[0] == "# my comment"
    assert f"alias ssh-ed25519 {old.get_base64()}" in lines  # the other name on that line keeps its key
    assert rsa_line in lines and f"otherhost ssh-ed25519 {other.get_base64()}" in lines
    assert not any(line.startswith(hashed) for line in lines)
    assert lines[-1] == f"[10.0.0.1]:2222 ssh-ed25519 {new.get_base64()}"
    keys = paramiko.HostKeys(str(known))
    assert keys.lookup("[10.0.0.1]:2222")["ssh-ed25519"] == new
    assert oct(known.stat().st_mode & 0o777) == "0o600"


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    expected = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True,
                              text=True).stdout.split()[1]
    key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "k"))
    assert fingerprint(key) == expected


def test_known_hosts_path_is_relative_to_the_inventory_file(tmp_path: Path) -> None:
    inv = Inventory(devices={}, known_hosts="pins/known_hosts", path=str(tmp_path / "devices.yaml"))
    assert known_hosts_path(inv) == tmp_path / "pins" / "known_hosts"
    assert known_hosts_path(Inventory(devices={})) == Path(os.path.expanduser("~/.ssh/known_hosts"))


def test_follow_sends_complete_lines_beats_and_ends_when_the_agent_is_gone(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_bytes(b'{"type": "hello"}\n{"type": "result", "case_hash": "a"}\n{"type": "res')
    out = io.BytesIO()
    agent.follow(journal, 0, tmp_path / "missing.pid", out, beat_s=0.0)
    lines = out.getvalue().decode().splitlines()
    assert lines[:2] == ['J {"type": "hello"}', 'J {"type": "result", "case_hash": "a"}']  # not the torn tail
    end = json.loads(lines[-1][2:])
    assert lines[-1].startswith("E ") and end["seen_alive"] is False
    offset = len(b'{"type": "hello"}\n')
    out2 = io.BytesIO()
    agent.follow(journal, offset, None, out2)
    assert out2.getvalue().decode().splitlines()[0] == 'J {"type": "result", "case_hash": "a"}'


def test_a_new_agent_ends_a_torn_journal_line_before_writing(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_text('{"type": "result"}\n{"type": "res')
    agent.Reporter(journal, detached=True).emit({"type": "hello"})
    assert journal.read_text().splitlines()[-1] == '{"type": "hello"}'


def test_detached_agent_survives_its_parent_and_follow_sees_it_exit(tmp_path: Path) -> None:
    """Start `--detach` as the SSH command would; the launcher returns at once with the daemon's pid."""
    plan = {"run_id": "r1", "device": "d", "cases": [], "measure": {}, "workdir": str(tmp_path / "w")}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "harness.agent", "--plan", str(tmp_path / "plan.json"),
                           "--journal", str(tmp_path / "j.jsonl"), "--detach", "--pid-file", str(tmp_path / "a.pid"),
                           "--log", str(tmp_path / "a.log")], capture_output=True, text=True, timeout=60,
                          cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)))
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.strip())
    assert int((tmp_path / "a.pid").read_text()) == pid
    assert os.getpgid(pid) == pid and os.getsid(pid) != os.getsid(0)  # off our session, leads its group
    out = io.BytesIO()
    agent.follow(tmp_path / "j.jsonl", 0, tmp_path / "a.pid", out, beat_s=0.5)
    kinds = [json.loads(line[2:]).get("type") for line in out.getvalue().decode().splitlines() if line[0] == "J"]
    assert kinds[0] == "hello" and kinds[-1] == "done"
    deadline = time.monotonic() + 30
    while agent.pid_alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _ed25519() -> str:
    key_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"k{os.getpid()}_{time.monotonic_ns()}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_path)], check=True)
    text = key_path.read_text()
    key_path.unlink()
    key_path.with_suffix(".pub").unlink()
    return text
