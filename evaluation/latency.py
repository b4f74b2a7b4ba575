"""Latency of one model on one runtime: warm-up runs, then timed runs on real inputs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass
class Latency:
    model: str               # the model's name (magenta_lite, realtime, magenta_published, ...)
    format: str
    variant: str
    runtime: str
    threads: int | None
    height: int
    width: int
    median_ms: float
    p90_ms: float
    std_ms: float
    fps: float
    runs: int
    device: str = "host"

    def as_dict(self) -> dict:
        return asdict(self)


def time_calls(call: Callable[[], object], warmup: int, runs: int) -> np.ndarray:
    """Milliseconds of `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        call()
        times[i] = (time.perf_counter() - start) * 1000.0
    return times


def time_alternating(calls: dict[str, Callable[[], object]], warmup: int, runs: int) -> dict[str, np.ndarray]:
    """Milliseconds of `runs` rounds that call each of `calls` once in turn, after `warmup` such rounds.

    Alternating spreads a shared host's background load over all of them alike, so their ratios hold.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {name: np.empty(runs) for name in calls}
    for i in range(runs):
        for name, call in calls.items():
            times[name][i] = time_calls(call, 0, 1)[0]
    return times


def summarize(times_ms: np.ndarray, **fields) -> Latency:
    median = float(np.median(times_ms))
    return Latency(median_ms=median, p90_ms=float(np.percentile(times_ms, 90)), std_ms=float(np.std(times_ms)),
                   fps=1000.0 / median, runs=int(len(times_ms)), **fields)
