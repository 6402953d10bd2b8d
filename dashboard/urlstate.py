"""Widgets whose selection lives in the URL query string, so a link reproduces a view.

Each helper reads its initial value from `st.query_params[key]` (when valid for the options shown),
draws the widget under that key, and writes the chosen value back to the URL, always explicitly: a link
that says `b=<run id>` keeps meaning that run after newer runs arrive (Streamlit's own `bind=` drops a
parameter that equals the default, and our defaults, such as "the newest run", move).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import streamlit as st

ALL = "all"


def _from_url(key: str) -> str | None:
    value = st.query_params.get(key)
    return value if value not in (None, "") else None


def _to_url(key: str, value: str | None) -> None:
    if value is None or value == "":
        if key in st.query_params:
            del st.query_params[key]
    elif st.query_params.get(key) != value:
        st.query_params[key] = value


def select(label: str, options: Sequence[Any], key: str, *, default: Any = None,
           format_func: Callable[[Any], str] = str, container: Any = st, help: str | None = None) -> Any:
    """A selectbox bound to `?key=`; options are compared with the URL as strings. None when no options."""
    options = list(options)
    if not options:
        _to_url(key, None)
        return None
    wanted = _from_url(key)
    as_text = [str(o) for o in options]
    if wanted in as_text:
        index = as_text.index(wanted)
    elif default is not None and str(default) in as_text:
        index = as_text.index(str(default))
    else:
        index = 0
    value = container.selectbox(label, options, index=index, key=key, format_func=format_func, help=help)
    _to_url(key, str(value) if value is not None else None)
    return value


def multiselect(label: str, options: Sequence[Any], key: str, *, default: Sequence[Any] = (),
                container: Any = st, help: str | None = None) -> list[Any]:
    """A multiselect bound to `?key=a,b`; an empty selection means "no filter" and leaves the URL clean."""
    options = list(options)
    as_text = [str(o) for o in options]
    wanted = _from_url(key)
    if wanted is not None:
        chosen = [options[as_text.index(v)] for v in wanted.split(",") if v in as_text]
    else:
        chosen = [o for o in default if o in options]
    value = container.multiselect(label, options, default=chosen, key=key, help=help)
    _to_url(key, ",".join(str(v) for v in value) or None)
    return list(value)


def number(label: str, key: str, *, default: float, min_value: float, max_value: float, step: float,
           container: Any = st, help: str | None = None) -> float:
    """A number input bound to `?key=`; out-of-range or unreadable URL values fall back to the default."""
    wanted = _from_url(key)
    try:
        value = float(wanted) if wanted is not None else default
    except ValueError:
        value = default
    if not min_value <= value <= max_value:
        value = default
    got = container.number_input(label, min_value=float(min_value), max_value=float(max_value),
                                 value=float(value), step=float(step), key=key, help=help)
    _to_url(key, f"{got:g}")
    return float(got)


def link(page: str, **params: Any) -> str:
    """A relative link to another page with its query parameters (for LinkColumn cells)."""
    from urllib.parse import urlencode

    query = urlencode({k: str(v) for k, v in params.items() if v is not None})
    return f"./{page}?{query}" if query else f"./{page}"


def run_select(label: str, runs: Any, key: str, *, default: str | None = None, container: Any = st,
               labels: dict[str, str] | None = None) -> str:
    """A run selector bound to `?key=`. The URL may name the run as the command line does (an id or unique
    prefix, tag:NAME, latest, latest~N, latest@DEVICE: `results.runref`); a reference that names no stored
    run is shown as an error and the selector starts empty (the page stops until a run is picked), never
    silently replaced by another run."""
    from dashboard import data
    from dashboard.charts import run_labels
    from workloads.errors import HarnessError

    labels = labels or run_labels(runs)
    ids = [str(r) for r in runs["run_id"]]
    wanted = _from_url(key)
    chosen = st.session_state.get(key)
    index: int | None = ids.index(str(default)) if default is not None and str(default) in ids else 0
    resolved = None
    if wanted is not None and chosen is None:
        try:
            resolved = data.resolve_run(data.db_url(), wanted)
        except HarnessError as exc:
            st.error(f"The link asks for {label.lower()} `{wanted}`, which is not in this database: {exc}. Pick a "
                     "run below.")
            index = None
        else:
            index = ids.index(resolved) if resolved in ids else None
    value = container.selectbox(label, ids, index=index, key=key, format_func=labels.get)
    if value is None:
        st.stop()
    if resolved != value:  # a reference that still names the run shown (`latest`) stays in the link
        _to_url(key, str(value))
    return str(value)


def run_or_stop(runs: Any, *, container: Any = None, empty: str = "No runs stored yet.",
                labels: dict[str, str] | None = None) -> str:
    """The page's run selector (kept in the URL, references resolved), or an info box and a stop when no
    run is stored."""
    if runs.empty:
        st.info(empty)
        st.stop()
    return run_select("Run", runs, "run", container=container if container is not None else st.sidebar,
                      labels=labels)
