"""How the CLI prints results: text tables that fit the terminal, JSON for scripts, markdown for reviews.

Every command that prints results builds plain records (dicts of raw values: numbers stay numbers) and a
list of `Col`umns saying how a person reads them; `emit` then writes one of three formats:

- `text`: a rich table that fits the terminal's width (`COLUMNS`, else the terminal, else 160 columns
  when piped). Numbers are never cut: a numeric column is as wide as its widest value. When the columns
  do not fit, headers are abbreviated first (`Col.short`), then columns are left out, least important
  first (`Col.drop`, higher goes earlier; columns with nothing in them before any other), and a line
  under the table says which (the full table is one `--format json` away).
- `json`: the records, as the README documents per command; never NaN or Infinity.
- `markdown`: a GitHub pipe table (for a PR comment or `$GITHUB_STEP_SUMMARY`), every cell escaped.

Colour follows `--color auto|always|never` (auto: only on a terminal, and not when `NO_COLOR` is set;
the flag beats the variable, as no-color.org asks). Every outside string goes through
`harness.safe_text.terminal` (text) or `md_cell` (markdown); cells are rich `Text`, never markup.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.numfmt import EMPTY, present
from harness.safe_text import terminal

FORMATS = ("text", "json", "markdown")
COLORS = ("auto", "always", "never")
# Piped output (CI logs, `| less`) without COLUMNS gets a wide table rather than rich's 80-column default.
PIPE_WIDTH = 160
# Characters a rich table spends per column (one space of padding each side, one rule) and once (a rule).
PER_COLUMN = 3
EDGE = 1
# A text column may wrap, but not narrower than this (or its longest word, when shorter).
MIN_TEXT = 10


def make_console(*, stderr: bool = False, color: str = "auto") -> Console:
    """A console for stdout or stderr honouring `--color` and `NO_COLOR`, as wide as `COLUMNS` or the
    terminal, else `PIPE_WIDTH` when piped."""
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    columns = os.environ.get("COLUMNS", "")
    width = None if tty or columns.isdigit() else PIPE_WIDTH
    if color == "never":
        return Console(stderr=stderr, highlight=False, width=width, color_system=None, no_color=True)
    if color == "always":
        return Console(stderr=stderr, highlight=False, width=width, force_terminal=True, no_color=False,
                       color_system="standard" if not tty else "auto")
    return Console(stderr=stderr, highlight=False, width=width)  # rich honours NO_COLOR itself


# -- cells ----------------------------------------------------------------------------------------------
def text(x: Any) -> str:
    return EMPTY if not present(x) or x == "" else str(x)


@dataclass(frozen=True)
class Col:
    """One column: the record key, its header (and a shorter one), how a value is written, whether it is
    a number (right-aligned, never cut) or another value that must stay whole (a run id, a time), and how
    early it is left out when the terminal is narrow (0: never; higher: earlier)."""

    key: str
    header: str
    fmt: Callable[[Any], str] = text
    numeric: bool = False
    drop: int = 0
    short: str | None = None
    style: Callable[[Any], str | None] | None = None
    whole: bool = False

    @property
    def unbroken(self) -> bool:
        return self.numeric or self.whole


def cells(records: Sequence[Mapping[str, Any]], cols: Sequence[Col]) -> list[list[str]]:
    """Each record's cells as text, in column order."""
    return [[c.fmt(r.get(c.key)) for c in cols] for r in records]


def _longest_word(s: str) -> int:
    return max((len(w) for w in s.split()), default=0)


def _need(col: Col, header: str, values: Sequence[str]) -> int:
    """The narrowest a column can be: numbers whole, headers and text wrapped at words."""
    if col.unbroken:
        return max([_longest_word(header), *(len(v) for v in values)])
    return max([_longest_word(header), *(min(max(_longest_word(v), min(len(v), MIN_TEXT)), MIN_TEXT * 2)
                                          for v in values)])


def fit(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int | None) -> tuple[list[int], list[str]]:
    """Which columns to show (indexes) and their headers, so the table fits `width` (None: no limit).

    Full headers if they fit, else the short ones; then columns are dropped: first those with no value in
    any row (and droppable), then by `drop`, highest first, rightmost first among equals."""
    headers = [c.header for c in cols]
    keep = list(range(len(cols)))
    if width is None:
        return keep, headers
    columns = list(zip(*rows)) if rows else [()] * len(cols)

    def total(idx: list[int], names: list[str]) -> int:
        return sum(_need(cols[i], names[i], columns[i]) for i in idx) + PER_COLUMN * len(idx) + EDGE

    if total(keep, headers) <= width:
        return keep, headers
    headers = [c.short or c.header for c in cols]
    empty = [i for i in keep if cols[i].drop and all(v == EMPTY for v in columns[i])]
    order = empty + sorted((i for i in keep if cols[i].drop and i not in empty), key=lambda i: (-cols[i].drop, -i))
    for i in order:
        if total(keep, headers) <= width:
            break
        keep.remove(i)
    return keep, headers


def rich_table(title: str | None, cols: Sequence[Col], records: Sequence[Mapping[str, Any]],
               width: int | None) -> tuple[Table, list[str]]:
    """A rich table of the records fitted to `width`; also the headers of the columns left out."""
    rows = cells(records, cols)
    keep, headers = fit(cols, rows, width)
    table = Table(title=Text(terminal(title)) if title else None)
    for i in keep:
        c = cols[i]
        values = [r[i] for r in rows]
        if c.unbroken:
            table.add_column(Text(terminal(headers[i])), justify="right" if c.numeric else "left", no_wrap=True,
                             min_width=max([len(v) for v in values] or [1]))
        else:
            table.add_column(Text(terminal(headers[i])), overflow="fold")
    for record, row in zip(records, rows):
        out = []
        for i in keep:
            style = cols[i].style(record.get(cols[i].key)) if cols[i].style else None
            out.append(Text(terminal(row[i]), style=style or ""))
        table.add_row(*out)
    return table, [cols[i].header for i in range(len(cols)) if i not in keep]


def print_table(console: Console, title: str | None, cols: Sequence[Col],
                records: Sequence[Mapping[str, Any]]) -> None:
    """The records as a table fitted to the console's width, and a note naming columns left out."""
    table, left_out = rich_table(title, cols, records, console.width)
    console.print(table)
    if left_out:
        console.print(Text(f"(left out for the terminal's width: {', '.join(left_out)}; widen it, or use "
                           "--format json)", style="dim"))


# -- markdown -------------------------------------------------------------------------------------------
def md_cell(value: Any) -> str:
    """Text for one markdown table cell: one line, pipes escaped, control characters shown as escapes."""
    return terminal("" if value is None else value).replace("\\n", " ").replace("|", "\\|")


def markdown_table(cols: Sequence[Col], records: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub pipe table: a header row, an alignment row (numbers right-aligned), a row per record."""
    rows = cells(records, cols)
    out = ["| " + " | ".join(md_cell(c.header) for c in cols) + " |",
           "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|"]
    out += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


# -- json -----------------------------------------------------------------------------------------------
def finite(value: Any) -> Any:
    """A JSON-safe copy: NaN and infinities become null, datetimes ISO 8601 text (UTC when naive)."""
    from datetime import datetime

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat() + ("+00:00" if value.tzinfo is None else "")
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return finite(value.item())
    return value


def dumps(value: Any) -> str:
    """JSON as every command prints it: indented, never NaN or Infinity."""
    return json.dumps(finite(value), indent=1, allow_nan=False, default=str)
