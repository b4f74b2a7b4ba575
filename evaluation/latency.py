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


def tflite_runner(path_or_bytes, signature_key: str | None, inputs: dict[str, np.ndarray], threads: int):
    """A zero-argument call running a TFLite model with LiteRT/XNNPACK on fixed inputs.

    With a signature key inputs go by name; without one (Magenta's published files) by shape,
    and the call returns the first output.
    """
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": str(path_or_bytes)}
    interpreter = Interpreter(num_threads=threads, **kwargs)
    if signature_key:
        runner = interpreter.get_signature_runner(signature_key)
        feeds = {k: np.asarray(v, np.float32) for k, v in inputs.items()}
        return lambda: runner(**feeds)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    values = list(inputs.values())

    output = interpreter.get_output_details()[0]["index"]
    feeds = []
    for detail in details:  # match by shape: Magenta's published files name their inputs by scope
        match = [v for v in values if tuple(v.shape) == tuple(detail["shape"])]
        if not match:
            raise ValueError(f"{path_or_bytes if not isinstance(path_or_bytes, bytes) else 'model'}: "
                             f"no input of shape {tuple(detail['shape'])} given")
        feeds.append((detail["index"], np.asarray(match[0], np.float32)))

    def call():
        for index, value in feeds:
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    return call
