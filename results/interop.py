"""The field's formats: a run out as a pyperf benchmark suite, pyperf and pytest-benchmark files in as runs.

- `pyperf_suite(rows)` (pure): a run's export rows as pyperf's JSON (format 1.0), one benchmark per
  (device, case) with a result: its raw samples as the values of one pyperf run, in seconds per call;
  `loops` is the harness's inner loop count. `pyperf stats`, `hist` and `compare_to` read it. Cases
  without samples (failed, skipped, timed out, or pruned) are left out and counted.
- `foreign_rows(data, ...)` (pure): a parsed pyperf or pytest-benchmark JSON document as export rows
  (`results.exchange`), so an import goes through the one validated import path: every benchmark becomes
  a case `{variant: external, name: ITS NAME}` of one new run on one device. pyperf values and
  pytest-benchmark's `stats.data` (saved with `--benchmark-save-data`) become raw samples; without data,
  pytest-benchmark's median, mean and standard deviation are stored as summaries and p90/p99 stay empty
  (never made up).

The run id is the first 12 hex digits of the file's SHA-256, so importing a file twice adds nothing the
second time. The device is `--device`, else the file's host name when it is a valid device name, else
`external`. pyperf stamps runs with the local time without a zone; it is read as UTC (said in the run's
fingerprint as `time_zone: unknown`). Every value is checked here for its type (a message names the file
and the JSON path) and again by `results.validate` for its range.
"""

from __future__ import annotations

import hashlib
import math
import os
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from workloads.errors import ConfigError
from workloads.spec import EXTERNAL, case_label

EXTERNAL_DEVICE = "external"
PYPERF_VERSION = "1.0"


# -- export -----------------------------------------------------------------------------------------------
def benchmark_name(row: Mapping[str, Any], several_devices: bool) -> str:
    """A benchmark's pyperf name: an imported one keeps its own; an attention case is its label (and its
    device, when the run has several)."""
    name = row.get("name") if row.get("variant") == EXTERNAL else case_label(row)
    return f"{name} [{row['device']}]" if several_devices else str(name)


def _pyperf_date(iso: str | None) -> str | None:
    if not iso:
        return None
    t = datetime.fromisoformat(iso)
    t = t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t
    return t.isoformat(" ")


def pyperf_suite(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], int]:
    """(pyperf JSON document, number of cases left out for having no raw samples) for one run's rows."""
    several = len({r["device"] for r in rows}) > 1
    benchmarks = []
    left_out = 0
    for r in rows:
        samples = r.get("samples_ms") or []
        if r.get("status") != "ok" or not samples:
            left_out += 1
            continue
        fp = r.get("fingerprint") or {}
        meta: dict[str, Any] = {"name": benchmark_name(r, several), "unit": "second",
                                "harness_run_id": r["run_id"], "harness_device": r["device"],
                                "harness_case_hash": r["case_hash"]}
        if isinstance(r.get("inner_loops"), int) and r["inner_loops"] >= 1:
            meta["loops"] = r["inner_loops"]
        for key, src in (("cpu_model_name", "cpu_model"), ("hostname", "hostname"), ("python_version", "python")):
            if isinstance(fp.get(src), str) and fp[src]:
                meta[key] = fp[src]
        if r.get("tag"):
            meta["harness_tag"] = r["tag"]
        run_meta: dict[str, Any] = {}
        date = _pyperf_date(r.get("measured_at"))
        if date:
            run_meta["date"] = date
        if r.get("measured_at") and r.get("measured_until"):
            start, end = (datetime.fromisoformat(r[k]) for k in ("measured_at", "measured_until"))
            run_meta["duration"] = max((end - start).total_seconds(), 0.0)
        run: dict[str, Any] = {"values": [v / 1000.0 for v in samples]}
        if run_meta:
            run["metadata"] = run_meta
        benchmarks.append({"metadata": meta, "runs": [run]})
    return {"version": PYPERF_VERSION, "metadata": {}, "benchmarks": benchmarks}, left_out


# -- import -----------------------------------------------------------------------------------------------
def kind_of(data: Any) -> str | None:
    """'pyperf', 'pytest-benchmark' or None for a parsed JSON document."""
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        return None
    if "machine_info" in data or "commit_info" in data:
        return "pytest-benchmark"
    if "version" in data:
        return "pyperf"
    return None


class _Doc:
    """Typed access to a foreign JSON document: every wrong type is a ConfigError naming the path."""

    def __init__(self, path: str, kind: str) -> None:
        self.path, self.kind = path, kind

    def fail(self, where: str, what: str) -> ConfigError:
        return ConfigError(f"{self.kind} file: {where} {what}", file=self.path, key=where.split("[")[0])

    def get(self, obj: Any, key: str, where: str, types: tuple[type, ...], required: bool = False) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(where, "is not an object")
        value = obj.get(key)
        if value is None:
            if required:
                raise self.fail(f"{where}.{key}", "is missing")
            return None
        if isinstance(value, bool) and bool not in types:
            raise self.fail(f"{where}.{key}", f"must be {' or '.join(t.__name__ for t in types)}, got a boolean")
        if not isinstance(value, types):
            raise self.fail(f"{where}.{key}", f"must be {' or '.join(t.__name__ for t in types)}, got "
                                              f"{type(value).__name__}")
        return value

    def seconds(self, values: Any, where: str) -> list[float]:
        if not isinstance(values, list):
            raise self.fail(where, "must be a list of times in seconds")
        out = []
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise self.fail(f"{where}[{i}]", f"is {v!r:.40}: a time is a finite number of seconds above zero")
            out.append(float(v))
        return out


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() + "+00:00" if t else None


def _device(given: str | None, host: Any) -> str:
    from devices.inventory import DEVICE_NAME

    if given:
        return given
    if isinstance(host, str) and DEVICE_NAME.fullmatch(host):
        return host
    return EXTERNAL_DEVICE


def _row(common: Mapping[str, Any], name: str, samples_ms: list[float] | None, **summary: Any) -> dict[str, Any]:
    row = dict(common, status="ok", variant=EXTERNAL, name=name, precision=None, samples_ms=samples_ms or None)
    row.update({k: v for k, v in summary.items() if v is not None})
    return row


def foreign_rows(data: Any, raw: bytes, path: str, *, device: str | None = None,
                 tag: str | None = None) -> list[dict[str, Any]]:
    """Export-format rows (one run) from a parsed pyperf or pytest-benchmark document; ConfigError when it
    is neither, or holds something of the wrong type."""
    kind = kind_of(data)
    if kind is None:
        raise ConfigError("expected a JSON list of rows as `harness results export --format json` writes, a pyperf "
                          "file or a pytest-benchmark file; this JSON object is none of them", file=path, line=1)
    doc = _Doc(path, kind)
    run_id = hashlib.sha256(raw).hexdigest()[:12]
    base = os.path.basename(path)[:150]
    if kind == "pyperf":
        return _pyperf_rows(doc, data, run_id, base, device, tag)
    return _pytest_benchmark_rows(doc, data, run_id, base, device, tag)


def _pyperf_rows(doc: _Doc, data: dict[str, Any], run_id: str, base: str, device: str | None,
                 tag: str | None) -> list[dict[str, Any]]:
    version = data.get("version")
    if version not in ("1.0", 6, 5):
        raise doc.fail("version", f"is {version!r:.20}; pyperf files of format 1.0 (pyperf 1.0 and later) are read")
    suite_meta = doc.get(data, "metadata", "", (dict,)) or {}
    benches: list[tuple[str, list[float], int | None, list[datetime]]] = []
    hosts, cpus, pythons = set(), set(), set()
    for i, bench in enumerate(data["benchmarks"]):
        where = f"benchmarks[{i}]"
        meta = dict(suite_meta, **(doc.get(bench, "metadata", where, (dict,)) or {}))
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise doc.fail(f"{where}.metadata.name", "is missing: every pyperf benchmark has a name")
        unit = meta.get("unit", "second")
        if unit != "second":
            raise doc.fail(f"{where}.metadata.unit", f"is {unit!r:.20}: only timings (unit second) are imported")
        runs = doc.get(bench, "runs", where, (list,), required=True)
        values: list[float] = []
        dates: list[datetime] = []
        for j, run in enumerate(runs):
            values += doc.seconds(doc.get(run, "values", f"{where}.runs[{j}]", (list,)) or [],
                                  f"{where}.runs[{j}].values")
            run_meta = doc.get(run, "metadata", f"{where}.runs[{j}]", (dict,)) or {}
            when = _time(run_meta.get("date"))
            if when:
                dates.append(when)
            for src, bag in (("hostname", hosts), ("cpu_model_name", cpus), ("python_version", pythons)):
                if isinstance({**meta, **run_meta}.get(src), str):
                    bag.add({**meta, **run_meta}[src])
        if not values:
            raise doc.fail(f"{where}.runs", f"hold no values for benchmark {name!r:.60} (only warmups?)")
        loops = meta.get("loops")
        benches.append((name, values, loops if isinstance(loops, int) and not isinstance(loops, bool) and loops >= 1
                        else None, dates))
    dates = [d for _, _, _, ds in benches for d in ds]
    fingerprint = {"source": "pyperf", "time_zone": "unknown (pyperf records local time)",
                   "hostname": ", ".join(sorted(hosts)) or None, "cpu_model": ", ".join(sorted(cpus)) or None,
                   "python": ", ".join(sorted(pythons)) or None}
    common = _common(run_id, base, "pyperf", tag, min(dates) if dates else None, max(dates) if dates else None,
                     _device(device, next(iter(hosts)) if len(hosts) == 1 else None), fingerprint, None)
    return [_row(common, name, [v * 1000.0 for v in values], inner_loops=loops)
            for name, values, loops, _ in benches]


def _pytest_benchmark_rows(doc: _Doc, data: dict[str, Any], run_id: str, base: str, device: str | None,
                           tag: str | None) -> list[dict[str, Any]]:
    machine = doc.get(data, "machine_info", "", (dict,)) or {}
    commit = doc.get(data, "commit_info", "", (dict,)) or {}
    cpu = doc.get(machine, "cpu", "machine_info", (dict,)) or {}
    when = _time(data.get("datetime"))
    from .validate import GIT_REVISION

    # pytest-benchmark writes `unversioned` (or nothing) outside a repository: only an object name is kept
    revision = commit.get("id") if isinstance(commit.get("id"), str) and GIT_REVISION.fullmatch(commit["id"]) else None
    if revision and commit.get("dirty") is True:
        revision += "-dirty"
    fingerprint = {"source": "pytest-benchmark", "hostname": machine.get("node"),
                   "cpu_model": cpu.get("brand_raw") or machine.get("processor") or None,
                   "cores": cpu.get("count"), "arch": machine.get("machine"), "python": machine.get("python_version"),
                   "os": " ".join(str(machine[k]) for k in ("system", "release") if machine.get(k)) or None}
    fingerprint = {k: v for k, v in fingerprint.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}
    common = _common(run_id, base, "pytest-benchmark", tag, when, when, _device(device, machine.get("node")),
                     fingerprint, revision)
    rows = []
    for i, bench in enumerate(data["benchmarks"]):
        where = f"benchmarks[{i}]"
        name = doc.get(bench, "fullname", where, (str,)) or doc.get(bench, "name", where, (str,), required=True)
        stats = doc.get(bench, "stats", where, (dict,), required=True)
        iterations = doc.get(stats, "iterations", f"{where}.stats", (int,))
        data_s = stats.get("data")
        if data_s is not None:
            samples = [v * 1000.0 for v in doc.seconds(data_s, f"{where}.stats.data")]
            rows.append(_row(common, name, samples, inner_loops=iterations))
            continue
        summary = {}
        for key, column in (("median", "latency_ms_p50"), ("mean", "latency_ms_mean"), ("stddev", "latency_ms_std")):
            value = doc.get(stats, key, f"{where}.stats", (int, float), required=key == "median")
            summary[column] = value * 1000.0 if value is not None else None
        rows.append(_row(common, name, None, inner_loops=iterations,
                         n_samples=doc.get(stats, "rounds", f"{where}.stats", (int,)), **summary))
    return rows


def _common(run_id: str, base: str, source: str, tag: str | None, started: datetime | None,
            finished: datetime | None, device: str, fingerprint: dict[str, Any], revision: str | None) -> dict[str, Any]:
    # No date in the file: the import's time (the merge fills it), so a second import still matches.
    return {"run_id": run_id, "started_at": _iso(started),
            "finished_at": _iso(finished), "run_status": "complete", "matrix": f"{source}: {base}", "tag": tag,
            "harness_version": source[:40], "git_revision": revision, "device": device,
            "fingerprint": {k: v for k, v in fingerprint.items() if v is not None}, "matrix_text": "",
            "measure": {"imported_from": source}}
