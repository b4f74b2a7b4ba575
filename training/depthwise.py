"""Depthwise convolutions as sums of shifted copies: a training-speed setting for GPUs.

cuDNN ran MobileNetV2's first depthwise convolution (3x3, stride 1, 32 channels at 128x128; the lite
model's style predictor) at about 140 GB/s: 0.48 ms of the lite model's 28.6 ms step at batch 64
on an H200 (session 10's profile), for a few MFLOP. The same convolution written as kh * kw shifted,
scaled copies of the padded input is elementwise work XLA fuses into one pass over the input.
"""

from __future__ import annotations

import keras
from keras import layers, ops


def depthwise_shifted_sum(inputs, kernel):
    """A stride-1, "same"-padded depthwise convolution (depth multiplier 1) of NHWC `inputs`:
    sum over kernel taps (i, j) of the input shifted by (i, j) times kernel[i, j], in float32."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    top, left = (kh - 1) // 2, (kw - 1) // 2  # "same": the extra row or column of even kernels goes last
    padded = ops.pad(inputs, [[0, 0], [top, kh - 1 - top], [left, kw - 1 - left], [0, 0]])
    height, width = inputs.shape[1], inputs.shape[2]
    taps = ops.cast(kernel[:, :, :, 0], "float32")
    out = None
    for i in range(kh):
        for j in range(kw):
            term = ops.cast(padded[:, i : i + height, j : j + width, :], "float32") * taps[i, j]
            out = term if out is None else out + term
    return out


def _shifted_sum_call(layer: layers.DepthwiseConv2D, inputs):
    if None in inputs.shape[1:3]:  # shapes unknown while Keras builds a model: the plain op
        return type(layer).call(layer, inputs)
    out = depthwise_shifted_sum(inputs, layer.kernel)
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


def use_shifted_sum_depthwise(*models: keras.Model) -> list[str]:
    """Compute the stride-1 depthwise convolutions of `models` (and of models nested in them) as shifted sums.

    A training-speed setting (`trainer.shifted_sum_depthwise`): the same results, the same weights.
    Keras' DepthwiseConv2D has no hook for it, so it replaces `call` on the layer objects of this
    process; configs, weights and saved models are unchanged. Returns the names of the layers.
    """
    names = []
    for layer in _depthwise_layers(models):
        if (tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1) and layer.depth_multiplier == 1
                and layer.padding == "same" and layer.data_format == "channels_last"):
            layer.call = _shifted_sum_call.__get__(layer)
            names.append(layer.name)
    return names
