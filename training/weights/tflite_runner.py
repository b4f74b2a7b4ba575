"""Run a TFLite model with LiteRT (XNNPACK) on fixed inputs: parity checks, scoring and latency share it."""

from __future__ import annotations

import numpy as np


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
