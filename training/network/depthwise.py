"""Depthwise convolutions as sums of shifted copies: a training-speed setting for GPUs.

cuDNN ran MobileNetV2's first depthwise convolution (3x3, stride 1, 32 channels at 128x128; the lite
model's style predictor) at about 140 GB/s: 0.48 ms of the lite model's 28.6 ms step at batch 64
on an H200 (a profile of the step), for a few MFLOP. The algorithm XLA's autotuner picks for the
stride-2 `block_3_depthwise` varies by process: 0.041 ms in two processes, 0.55 ms in a third.
The same convolution written as kh * kw shifted (and, for strides, subsampled), scaled copies of the
padded input is elementwise work XLA fuses into one pass over the input, with no pick to vary.
On an H200 the four stride-2 ones so ("strided") beat cuDNN by 0.3-0.7% of the step; all 17 lost 0.8-1.2%
(docs/performance.md).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from training.schema import SHIFTED_SUM_DEPTHWISE


def _padding(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(before, after, output size) along one axis, as Keras/TensorFlow pad ("same": the extra goes last)."""
    if padding == "valid":
        return 0, 0, (size - kernel) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def depthwise_shifted_sum(inputs, kernel, strides=(1, 1), padding="same"):
    """A depthwise convolution (depth multiplier 1, no dilation) of NHWC `inputs`: the sum over kernel
    taps (i, j) of the padded input shifted by (i, j), subsampled by `strides`, times kernel[i, j], in float32."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    sh, sw = strides
    top, bottom, out_h = _padding(inputs.shape[1], kh, sh, padding)
    left, right, out_w = _padding(inputs.shape[2], kw, sw, padding)
    padded = ops.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]]) if top + bottom + left + right else inputs
    taps = ops.cast(kernel[:, :, :, 0], "float32")
    out = None
    for i in range(kh):
        for j in range(kw):
            shifted = padded[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
            term = ops.cast(shifted, "float32") * taps[i, j]
            out = term if out is None else out + term
    return out


def _shifted_sum_call(layer: layers.DepthwiseConv2D, inputs):
    if None in inputs.shape[1:3]:  # shapes unknown while Keras builds a model: the plain op
        return type(layer).call(layer, inputs)
    out = depthwise_shifted_sum(inputs, layer.kernel, tuple(layer.strides), layer.padding)
    if layer.use_bias:
        out = out + ops.cast(layer.bias, "float32")
    out = ops.cast(out, layer.compute_dtype)
    return layer.activation(out) if layer.activation is not None else out


def _depthwise_layers(models):
    for model in models:
        for layer in model.layers:
            if isinstance(layer, layers.DepthwiseConv2D):
                yield layer
            elif isinstance(layer, keras.Model):
                yield from _depthwise_layers([layer])


def use_shifted_sum_depthwise(*models: keras.Model, which: str = "all") -> list[str]:
    """Compute depthwise convolutions of `models` (and of models nested in them) as shifted sums.

    which: "all" depthwise convolutions, only the "strided" ones, or "none".
    A training-speed setting (`trainer.shifted_sum_depthwise`): the same results, the same weights.
    Keras' DepthwiseConv2D has no hook for it, so it replaces `call` on the layer objects of this
    process; configs, weights and saved models are unchanged. Returns the names of the layers.
    """
    if which not in SHIFTED_SUM_DEPTHWISE:
        raise ValueError(f"shifted_sum_depthwise must be one of {', '.join(SHIFTED_SUM_DEPTHWISE)}, got {which!r}")
    names = []
    for layer in _depthwise_layers(models):
        strided = tuple(layer.strides) != (1, 1)
        if which == "none" or (which == "strided" and not strided):
            continue
        if (tuple(layer.dilation_rate) == (1, 1) and layer.depth_multiplier == 1
                and layer.data_format == "channels_last"):
            layer.call = _shifted_sum_call.__get__(layer)
            names.append(layer.name)
    return names
