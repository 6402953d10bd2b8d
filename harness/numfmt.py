"""Numbers as people read them, the same in the CLI, the reports and the dashboard (stdlib only).

- `num(x, digits)`: fixed decimals, scientific below 10**-digits (`0.0123`, `1.20e-05`).
- `sig(x, digits)`: significant digits, for latencies that span decades (`0.01234`, `1234`).
- `cosine(x)`: enough decimals that a cosine below 1 never reads as 1 (`0.999977`, `0.9999973`), and
  closer than a millionth the gap itself (`1-1.5e-14`); exactly 1 is `1`.
- `pct(x)`: a fraction as a percentage with one decimal (`19.5%`).

Absent values (None, NaN) are `-` everywhere: never zero.
"""

from __future__ import annotations

import math
from typing import Any

EMPTY = "-"


def present(v: Any) -> bool:
    """A value that was measured: not None, not NaN."""
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def num(x: Any, digits: int = 3) -> str:
    """Fixed `digits` decimals, scientific below 10**-digits; '-' when absent."""
    if not present(x):
        return EMPTY
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return EMPTY
        return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:.2e}"
    return str(x)


def sig(x: Any, digits: int = 4) -> str:
    """`digits` significant digits; '-' when absent."""
    if not present(x) or not math.isfinite(float(x)):
        return EMPTY
    return f"{float(x):.{digits}g}"


def cosine(x: Any, keep: int = 2) -> str:
    """A cosine similarity with its first `keep` digits that differ from 1 shown: never rounded to 1.
    Closer to 1 than a millionth, it is written as the gap: `1-1.5e-14`."""
    if not present(x) or not math.isfinite(float(x)):
        return EMPTY
    x = float(x)
    if x == 1.0:
        return "1"
    gap = 1.0 - x
    if 0 < gap < 1e-6:
        return f"1-{gap:.1e}"
    decimals = max(4, min(8, -math.floor(math.log10(abs(gap))) + keep - 1))
    return f"{x:.{decimals}f}"


def pct(x: Any, decimals: int = 1) -> str:
    """A fraction (0.195) as a percentage ('19.5%'); '-' when absent."""
    if not present(x) or not math.isfinite(float(x)):
        return EMPTY
    return f"{100 * float(x):.{decimals}f}%"
