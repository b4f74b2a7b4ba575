"""Read the constant tensors of a TFLite flatbuffer by name, dequantised to float32.

Used to import Magenta's published mobile model: its tensor names are Magenta's variable
scopes, conv filters are stored OHWI, int8 tensors carry per-channel scales.
"""

from __future__ import annotations

import os

import numpy as np

from training.errors import StylepipeError


class TFLiteWeightsError(StylepipeError):
    """A TFLite file does not hold the tensors expected of it."""


def read_constant_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: float32 array} for every constant (weight/bias) tensor of the model."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    except Exception as err:
        raise TFLiteWeightsError(f"{path} is not a readable TFLite model ({type(err).__name__}: {err})") from None
    tensors = {}
    for detail in interpreter.get_tensor_details():
        name = detail["name"]
        if name.endswith("_dequantize") or not name.endswith(("weights", "_bias", "depthwise_weights")):
            continue
        try:
            array = interpreter.get_tensor(detail["index"])
        except ValueError:  # an activation, not a constant
            continue
        quant = detail["quantization_parameters"]
        if array.dtype in (np.int8, np.uint8, np.int32) and len(quant["scales"]):
            scales, zeros = quant["scales"], quant["zero_points"]
            axis = quant["quantized_dimension"]
            shape = [1] * array.ndim
            if array.ndim:
                shape[axis] = -1
            array = (array.astype(np.float32) - zeros.reshape(shape)) * scales.reshape(shape).astype(np.float32)
        tensors[name] = array.astype(np.float32)
    return tensors


def ohwi_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """TFLite CONV_2D filter (O, H, W, I) -> Keras Conv2D kernel (H, W, I, O)."""
    return np.transpose(kernel, (1, 2, 3, 0))


def depthwise_to_keras(kernel: np.ndarray) -> np.ndarray:
    """TFLite DEPTHWISE_CONV_2D filter (1, H, W, C) -> Keras DepthwiseConv2D kernel (H, W, C, 1)."""
    return np.transpose(kernel, (1, 2, 3, 0))
