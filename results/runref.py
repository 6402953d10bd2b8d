"""Run references: how a user names a run, wherever a command (or a dashboard link) takes one.

One grammar, one resolver, used by `results show`, `export`, `compare`, `run --resume`, `regress --confirm`
and the dashboard's `?run=`, `?a=`, `?b=`:

| reference | means |
|---|---|
| `1a2b3c4d5e6f` | that run id |
| `1a2b` | the one run whose id starts with it (matched literally: `%` and `_` are characters) |
| `tag:NAME` | the newest run tagged NAME |
| `NAME` | a bare tag, when it is not also the start of a run id (else: say `tag:NAME`) |
| `latest`, `latest~N` | the newest run, the Nth before it (`previous` is `latest~1`) |
| `latest@DEVICE`, `latest@DEVICE~N` | the newest run DEVICE took part in, the Nth before that |

`tag:NAME~N` counts back among the runs tagged NAME. Runs are ordered by start time (then id), newest
first. A reference that names no run, or several, is a `StoreError` saying which and what to type instead.

`parse` is pure (text in, `RunRef` out); `resolve` is the thin shell that asks the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from harness.safe_text import terminal
from workloads.errors import StoreError

from .models import Device, Run, RunDevice

# latest, latest~3, latest@rpi4, latest@rpi4~2, latest~2@rpi4
_LATEST = re.compile(r"latest(?:@(?P<dev1>[^~@]+))?(?:~(?P<n>\d{1,6}))?(?:@(?P<dev2>[^~@]+))?")
_TAGGED = re.compile(r"tag:(?P<tag>.+?)(?:~(?P<n>\d{1,6}))?")
HELP = ("a run id or a unique prefix of one, tag:NAME (or a bare tag), latest, latest~N, latest@DEVICE; "
        "`harness results list` shows the runs")


@dataclass(frozen=True)
class RunRef:
    """A parsed reference. kind: `latest` (newest, `back` runs before, optionally on `device`), `tag`
    (newest tagged `name`, `back` before), or `word` (an id, an id prefix, or a bare tag)."""

    kind: str
    text: str
    name: str | None = None
    device: str | None = None
    back: int = 0


def parse(text: str) -> RunRef:
    """The reference `text` means (no database involved); StoreError for an empty or malformed one."""
    ref = text.strip()
    if not ref:
        raise StoreError(f"an empty run reference; give {HELP}")
    if ref == "previous":
        return RunRef("latest", ref, back=1)
    m = _LATEST.fullmatch(ref)
    if m:
        if m.group("dev1") and m.group("dev2"):
            raise StoreError(f"run reference {terminal(ref)!r} names two devices; give latest@DEVICE~N")
        return RunRef("latest", ref, device=m.group("dev1") or m.group("dev2"), back=int(m.group("n") or 0))
    if ref.startswith("latest"):
        raise StoreError(f"run reference {terminal(ref)!r} is not latest, latest~N or latest@DEVICE")
    m = _TAGGED.fullmatch(ref)
    if m:
        return RunRef("tag", ref, name=m.group("tag"), back=int(m.group("n") or 0))
    if ref.startswith("tag:"):
        raise StoreError(f"run reference {terminal(ref)!r} names no tag; give tag:NAME")
    return RunRef("word", ref, name=ref)


def _ordered(q: Any) -> Any:
    return q.order_by(Run.started_at.desc(), Run.id.desc())


def _nth(conn: Any, q: Any, back: int) -> str | None:
    return conn.scalar(_ordered(q).offset(back).limit(1))


def resolve(source: Any, text: str) -> str:
    """The full run id `text` refers to in the database (a `Store` or an `Engine`); StoreError otherwise."""
    engine: Engine = getattr(source, "engine", source)
    where = getattr(source, "safe_url", None)
    ref = parse(text)
    shown = terminal(ref.text)
    with engine.connect() as conn:
        if ref.kind == "latest":
            q = select(Run.id)
            if ref.device is not None:
                q = (q.join(RunDevice, RunDevice.run_id == Run.id).join(Device, Device.id == RunDevice.device_id)
                     .where(Device.name == ref.device))
            found = _nth(conn, q, ref.back)
            if found is None:
                on = f" with device {terminal(ref.device)}" if ref.device else ""
                total = conn.scalar(select(Run.id).limit(1))
                why = "there are no runs" if total is None else f"there are not {ref.back + 1} run(s){on}"
                raise StoreError(f"run {shown!r} does not exist: {why}{_in(where)}; `harness results list` shows the runs")
            return found
        if ref.kind == "tag":
            found = _nth(conn, select(Run.id).where(Run.tag == ref.name), ref.back)
            if found is None:
                raise StoreError(f"run {shown!r} does not exist: no run{'s' if ref.back else ''} tagged {terminal(ref.name)!r}"
                                 f"{f' beyond {ref.back}' if ref.back else ''}{_in(where)}; {_tags_hint(conn)}")
            return found
        word = ref.name or ""
        if conn.scalar(select(Run.id).where(Run.id == word)) is not None:
            return word
        # A prefix is matched literally: '%' and '_' in it are characters, not LIKE wildcards.
        ids = conn.scalars(select(Run.id).where(Run.id.startswith(word, autoescape=True)).limit(3)).all()
        tagged = _nth(conn, select(Run.id).where(Run.tag == word), 0)
        if tagged is not None and ids:
            raise StoreError(f"run reference {shown!r} is ambiguous: it is a tag and the start of run id "
                             f"{ids[0]}; say tag:{shown} or give more of the id")
        if tagged is not None:
            return tagged
        if len(ids) == 1:
            return ids[0]
        if ids:
            raise StoreError(f"run id prefix {shown!r} is ambiguous: it matches several runs ({', '.join(ids[:2])}, ...){_in(where)}; "
                             "give more of it")
    raise StoreError(f"run {shown!r} does not exist{_in(where)}: no run id starts with it and no run is tagged so; "
                     f"give {HELP}")


def _in(where: str | None) -> str:
    return f" in {where}" if where else ""


def _tags_hint(conn: Any) -> str:
    tags = conn.scalars(select(Run.tag).where(Run.tag.is_not(None)).group_by(Run.tag).order_by(Run.tag).limit(8)).all()
    return ("tags in the database: " + ", ".join(terminal(t) for t in tags)) if tags else "no run has a tag"
