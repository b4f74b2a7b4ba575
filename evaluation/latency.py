"""Latency of one model on one runtime: warm-up runs, then timed runs on real inputs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass
class Latency:
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


def summarize(times_ms: np.ndarray, **fields) -> Latency:
    median = float(np.median(times_ms))
    return Latency(median_ms=median, p90_ms=float(np.percentile(times_ms, 90)), std_ms=float(np.std(times_ms)),
                   fps=1000.0 / median, runs=int(len(times_ms)), **fields)
