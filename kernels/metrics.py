"""Accuracy of a kernel's output against a float64 reference: a pure core over arrays.

`rel_err` is relative L1, sum|O - O'| / sum|O'|, as SageAttention reports it. NaN or infinity anywhere in
the output makes every metric NaN, so no threshold can pass it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def accuracy(output: Any, reference: Any) -> dict[str, float]:
    """cos_sim, rel_err, max_abs_err and rmse of `output` against `reference` (flattened, in float64)."""
    o = np.asarray(output, dtype=np.float64).ravel()
    r = np.asarray(reference, dtype=np.float64).ravel()
    if o.shape != r.shape:
        raise ValueError(f"output has {o.size} values, reference {r.size}")
    if not np.all(np.isfinite(o)):
        nan = math.nan
        return {"cos_sim": nan, "rel_err": nan, "max_abs_err": nan, "rmse": nan}
    diff = o - r
    denom = float(np.linalg.norm(o) * np.linalg.norm(r))
    cos = float(np.dot(o, r) / denom) if denom > 0 else (1.0 if not np.any(diff) else 0.0)
    l1 = float(np.abs(r).sum())
    return {
        "cos_sim": cos,
        "rel_err": float(np.abs(diff).sum() / l1) if l1 > 0 else math.nan,
        "max_abs_err": float(np.abs(diff).max()) if diff.size else 0.0,
        "rmse": float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0,
    }
