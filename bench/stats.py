"""Percentiles and small helpers for figures. Nearest-rank percentiles, so a p99 is a time
that some event really took (no interpolation between two samples)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def ratio(ours: float | None, base: float | None) -> float:
    """ours / baseline, NaN when either side is missing or the baseline is zero."""
    if ours is None or base is None or math.isnan(ours) or math.isnan(base) or base == 0:
        return math.nan
    return ours / base
