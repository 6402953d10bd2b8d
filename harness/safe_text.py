"""Text that leaves the harness safely: to a terminal, to a log, to a spreadsheet.

Everything the harness prints or writes may carry text it did not write itself: device names, tags and
errors from the database or an imported file, a database URL with a password in it. Three rules, one
helper each, used wherever text goes out:

- `terminal(text)`: control characters (C0, DEL, C1) and bidirectional overrides are shown as escapes
  (`\\x1b`, `\\u202e`), so a device name cannot clear the screen, move the cursor or hide text.
  Newlines and tabs are kept only where a message is allowed several lines (`keep_newlines=True`).
- `mask_url(url)` / `redact(text, url)`: the password of a database URL never reaches output. The URL
  is parsed (SQLAlchemy's own parser where it can, a pattern otherwise) and the password replaced by
  `***`; `redact` also removes the literal password from a message a driver wrote about that URL.
- `spreadsheet_cell(text)` / `spreadsheet_restore(text)`: CSV cells that a spreadsheet would read as a
  formula (starting with `=`, `+`, `-`, `@`, tab or carriage return: OWASP's list) get a leading `'`,
  and a cell that already starts with `'` gets one more, so `restore` undoes exactly what `cell` did and
  an export round-trips byte for byte.

Standard library only: the CLI, the results store and the dashboard all use it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# C0 controls and DEL, C1 controls, and the Unicode bidirectional overrides/isolates ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_NEWLINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal(text: object, *, keep_newlines: bool = False) -> str:
    """`text` as a string a terminal shows literally: control characters become visible escapes."""
    s = text if isinstance(text, str) else str(text)
    pattern = _UNSAFE_KEEP_NEWLINES if keep_newlines else _UNSAFE
    return pattern.sub(_escape, s)


# scheme://user:password@host...  (the password ends at the last '@' before the host part)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<at>@)")


def url_password(url: str) -> str | None:
    """The password in a database URL, or None (decoded as the driver sees it)."""
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(url).password
        return None if pw is None else str(pw)
    except Exception:  # not a URL SQLAlchemy parses (or no SQLAlchemy here): fall back to the pattern
        m = _URL_PASSWORD.search(url)
        return unquote(m.group("pw")) if m and m.group("pw") else None


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***` (the rest kept, so the user sees which database)."""
    masked = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***{m.group('at')}" if m.group("pw") else m.group(0),
                               url)
    return redact(masked, url)


def redact(text: str, url: str | None) -> str:
    """`text` with every occurrence of the URL's password (raw and percent-decoded) replaced by `***`.

    For messages a database driver wrote about a connection: they may quote the URL or the DSN."""
    if not url:
        return text
    out = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***{m.group('at')}" if m.group("pw") else m.group(0), text)
    m = _URL_PASSWORD.search(url)
    secrets = {p for p in (m.group("pw") if m else None, url_password(url)) if p}
    for secret in sorted(secrets, key=len, reverse=True):
        out = out.replace(secret, "***")
    return out


# What a spreadsheet may read as the start of a formula (OWASP CSV injection), plus our own escape mark.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_MARK = "'"


def spreadsheet_cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading `'` before a formula start (or before a `'`)."""
    if text and (text[0] in FORMULA_START or text[0] == _MARK):
        return _MARK + text
    return text


def spreadsheet_restore(text: str) -> str:
    """Undo `spreadsheet_cell`: one leading `'` removed where `spreadsheet_cell` would have added it."""
    if len(text) >= 2 and text[0] == _MARK and (text[1] in FORMULA_START or text[1] == _MARK):
        return text[1:]
    return text
