"""Percentiles, from samples or from histograms that several load generators can merge."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

__all__ = ["BUCKET_S", "bucket", "histogram_summary", "merge_histograms", "sample_summary"]

BUCKET_S: Final = 1e-5  # histogram resolution: 10 µs


def _rank(count: int, q: float) -> int:
    """The nearest-rank index of quantile `q` among `count` ordered values."""
    return min(count - 1, int(q * count))


def sample_summary(samples: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and mean of `samples` (seconds), in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
    figures = {
        f"p{round(q * 100)}_ms": round(ordered[_rank(len(ordered), q)] * 1000, 3)
        for q in (0.50, 0.90, 0.99)
    }
    figures["mean_ms"] = round(statistics.fmean(ordered) * 1000, 3)
    return figures


def bucket(seconds: float) -> int:
    return int(seconds / BUCKET_S)


def merge_histograms(histograms: Iterable[Mapping[str, int]]) -> dict[int, int]:
    """Sum histograms that went through JSON (bucket numbers as string keys)."""
    merged: dict[int, int] = {}
    for histogram in histograms:
        for key, count in histogram.items():
            merged[int(key)] = merged.get(int(key), 0) + count
    return merged


def histogram_summary(histogram: Mapping[int, int]) -> dict[str, float]:
    """p50 and p99 (the middle of their bucket) and mean, in milliseconds."""
    total = sum(histogram.values())
    if not total:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
    ordered = sorted(histogram.items())
    figures: dict[str, float] = {}
    for name, q in (("p50_ms", 0.50), ("p99_ms", 0.99)):
        rank, seen = _rank(total, q), 0
        for key, count in ordered:
            seen += count
            if seen > rank:
                figures[name] = round((key + 0.5) * BUCKET_S * 1000, 3)
                break
    mean = sum((key + 0.5) * count for key, count in ordered) / total
    figures["mean_ms"] = round(mean * BUCKET_S * 1000, 3)
    return figures
