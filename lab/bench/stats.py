"""Statistics for the lab benchmarks (pure): percentiles and per-scenario summaries of repeated measurements.

Percentiles use the nearest-rank method (the value at rank ceil(q/100 * n) of the sorted sample): with the small
samples a lab benchmark takes (10-100 repetitions) every figure reported is one that was really measured, and p100 is
the maximum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in [0, 100]); raises ValueError for an empty sample."""
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside [0, 100]")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    n: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(values: Iterable[float]) -> Summary | None:
    """n, p50, p95, p99, max and mean of a sample (None when it is empty)."""
    sample = [float(v) for v in values]
    if not sample:
        return None
    return Summary(n=len(sample), p50=percentile(sample, 50), p95=percentile(sample, 95),
                   p99=percentile(sample, 99), max=max(sample), mean=sum(sample) / len(sample))


def fmt_ms(value: float | None, *, digits: int = 0) -> str:
    """A millisecond figure for a table ("-" when unknown)."""
    return "-" if value is None else f"{value:.{digits}f}"


def summary_cells(s: Summary | None) -> list[str]:
    """p50 / p95 / max cells for a table row."""
    if s is None:
        return ["-", "-", "-"]
    return [fmt_ms(s.p50), fmt_ms(s.p95), fmt_ms(s.max)]
