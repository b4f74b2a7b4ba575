"""A fast transfer network for live video (`model=realtime`), with the interface of Magenta's.

Same contract as `training.network.magenta_network.build_transfer_network`: a Keras model named "transformer"
taking [content image in [0, 1] (B, H, W, 3), style bottleneck (B, 1, 1, 100)] and returning the
stylized image in [0, 1]; H and W multiples of 4. The style still acts through conditional
instance norms whose gamma/beta are 1x1 convolutions of the bottleneck, as in Magenta's network.

Where Magenta's network spends its time on a phone (a 9x9 convolution, reflect pads and instance
norms at full resolution, 3x3 convolutions at 1/2 resolution), this one does little:

- stem: two strided 3x3 convolutions (bias + ReLU, no norm) take the image to 1/4 resolution;
- body: residual blocks at 1/4 resolution, each two depthwise-separable 3x3 convolutions
  (depthwise 3x3, pointwise 1x1) with conditional instance norms, x + CIN(sep(ReLU(CIN(sep(x)))));
- head: two x2 upsamplings, the first with a conditional instance norm at 1/2 resolution, the last
  a plain conv + sigmoid, so no normalisation and no mean reduction runs at full resolution.
  Options for finer detail: `half_res_blocks` separable 3x3 convs with conditional instance norms at
  1/2 resolution, and `full_res_channels` > 0, where the last upsampling gives that many channels
  (ReLU) and a `full_res_kernel` conv at full resolution makes the RGB image. configs/model/realtime.yaml
  sets one block, 8 channels and a 5x5 kernel, and `border_pad` 16; this builder's defaults are the
  plain design, every option off. The upsamplings are 2x2 stride-2 transposed convolutions (a 1x1
  conv to 4x the channels followed by depth-to-space: every output pixel of a 2x2 block has its own
  weights); `upsample="nearest"` (resize + 3x3 conv, as Magenta) is about twice as slow, nearly all
  of it at full resolution (benchmarks/realtime_speed.py).

Every convolution is zero "same" padded (no MIRROR_PAD: padding folds into the conv on every
runtime, and Bender maps SAME convolutions but skips Pad/MirrorPad). Zero padding tells the network
where the photo's edge is, and a network trained with a style loss can learn to paint there (rings of
colour in the corners); `border_pad` reflects the photo outwards by that many pixels first and crops
the features back after the residual blocks (a MIRROR_PAD and a SLICE; Bender gets the pad as
one-hot convolutions and concatenations, and the crop as a one-hot depthwise convolution). With
static input shapes the baked TFLite fp16 export is CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV,
MEAN, SUB, SQUARED_DIFFERENCE, MUL, ADD, RSQRT and LOGISTIC (ReLUs fused), MIRROR_PAD and SLICE
(`border_pad`), plus DEQUANTIZE of the fp16 weights: all within the GPU delegate's rules
(tests/test_realtime_network.py checks them). Of the TF ops, Bender's converter maps Conv2D,
DepthwiseConv2dNative, Conv2DBackpropInput, Relu, Sigmoid and Add; the instance norms and the last
transposed convolution's bias (Bender's has none) are left to a Bender rewrite, as Magenta's
network needs one for its norms and upsampling.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from training.network.layers import BOTTLENECK_DIM, NearestUpsample, PACKAGE

# Instance norm moments are taken of (x - mean) * NORM_PRESCALE: its squares stay below fp16's
# 65504 up to |x - mean| = 256 / NORM_PRESCALE = 1024, and eps * NORM_PRESCALE^2 (6.25e-5 for the
# default eps 1e-3) is still a normal fp16 number, so neither overflow nor flush-to-zero occurs.
NORM_PRESCALE = 0.25
UPSAMPLE_MODES = ("nearest", "transpose")


@keras.saving.register_keras_serializable(PACKAGE)
class PrescaledConditionalInstanceNorm(layers.Layer):
    """Conditional instance norm, `gamma * (x - mean) / sqrt(var + eps) + beta`, safe in float16.

    inputs: [x (B, H, W, C), gamma (B, 1, 1, C), beta (B, 1, 1, C)]; biased variance over H, W.
    Computed as d = x s - mean(x s), var_s = mean(d^2), d * (gamma rsqrt(var_s + eps s^2)) + beta: the same
    value, but the mean is subtracted before squaring and the squares are pre-scaled, so the float16 path
    of a phone's GPU neither overflows (E[x^2] would from |x| = 256) nor loses small variances.
    Runs in the layer's compute dtype (float16 included), in float32 under bfloat16 training.
    """

    def __init__(self, epsilon=1e-3, prescale=NORM_PRESCALE, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.prescale = float(prescale)

    def call(self, inputs):
        x, gamma, beta = inputs
        dtype = "float32" if self.compute_dtype == "bfloat16" else self.compute_dtype
        scaled = ops.cast(x, dtype) * self.prescale
        centred = scaled - ops.mean(scaled, axis=(1, 2), keepdims=True)
        variance = ops.mean(ops.square(centred), axis=(1, 2), keepdims=True)
        # gamma / sqrt(var + eps) is per channel (B, 1, 1, C): one full-size multiply and add remain.
        scale = ops.cast(gamma, dtype) * ops.rsqrt(variance + self.epsilon * self.prescale ** 2)
        return ops.cast(centred * scale + ops.cast(beta, dtype), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "prescale": self.prescale}


@keras.saving.register_keras_serializable(PACKAGE)
class ReflectBorder(layers.Layer):
    """Reflect-pads an image by `pad` pixels on every side (one MIRROR_PAD / Core ML `pad` reflect)."""

    def __init__(self, pad: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, inputs):
        p = self.pad
        return ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        grow = lambda d: None if d is None else d + 2 * self.pad  # noqa: E731
        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


@keras.saving.register_keras_serializable(PACKAGE)
class BorderCrop(layers.Layer):
    """Removes `crop` pixels from every side: one SLICE in TFLite (STRIDED_SLICE is what dynamic shapes
    add; this slice has constant bounds), slice_by_size in Core ML. Bender has no slice op: its graph
    writes the crop as a VALID depthwise convolution with a one-hot filter (export/bender/graph.py)."""

    def __init__(self, crop: int, **kwargs):
        super().__init__(**kwargs)
        self.crop = int(crop)

    def call(self, inputs):
        c = self.crop
        shape = ops.shape(inputs)
        return ops.slice(inputs, [0, c, c, 0], [shape[0], shape[1] - 2 * c, shape[2] - 2 * c, shape[3]])

    def compute_output_shape(self, input_shape):
        shrink = lambda d: None if d is None else d - 2 * self.crop  # noqa: E731
        return (input_shape[0], shrink(input_shape[1]), shrink(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "crop": self.crop}


def build_realtime_network(
    channels: int = 48,
    stem_channels: int = 16,
    residual_blocks: int = 5,
    head_channels: int = 24,
    upsample: str = "transpose",
    half_res_blocks: int = 0,
    full_res_channels: int = 0,
    full_res_kernel: int = 3,
    border_pad: int = 0,
    input_shape=(None, None, 3),
    dtype=None,
    name: str = "transformer",
) -> keras.Model:
    """Content image + bottleneck -> stylized image, at a fraction of Magenta's cost (module docstring)."""
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"model.upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
    for key, value in (("channels", channels), ("stem_channels", stem_channels), ("head_channels", head_channels)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"model.{key} must be an integer >= 1, got {value!r}")
    for key, value in (("residual_blocks", residual_blocks), ("half_res_blocks", half_res_blocks),
                       ("full_res_channels", full_res_channels)):
        if not (isinstance(value, int) and value >= 0):
            raise ValueError(f"model.{key} must be an integer >= 0, got {value!r}")
    if not (isinstance(border_pad, int) and border_pad >= 0 and border_pad % 4 == 0):
        raise ValueError(f"model.border_pad must be a multiple of 4 >= 0, got {border_pad!r}")
    if not (isinstance(full_res_kernel, int) and full_res_kernel >= 1 and full_res_kernel % 2):
        raise ValueError(f"model.full_res_kernel must be an odd integer >= 1, got {full_res_kernel!r}")
    kw = {"dtype": dtype} if dtype else {}
    content = keras.Input(shape=input_shape, name="content_image")
    bottleneck = keras.Input(shape=(1, 1, BOTTLENECK_DIM), name="style_bottleneck")

    def cin(x, scope, depth):
        # As Magenta: beta = StyleNorm.Conv, gamma = StyleNorm.Conv_1, linear 1x1 convs of the bottleneck.
        # gamma's bias starts at 1, so an untrained network starts near the identity norm.
        prefix = f"style_params.{scope}.StyleNorm"
        beta = layers.Conv2D(depth, 1, name=f"{prefix}.Conv", **kw)(bottleneck)
        gamma = layers.Conv2D(depth, 1, bias_initializer="ones", name=f"{prefix}.Conv_1", **kw)(bottleneck)
        return PrescaledConditionalInstanceNorm(name=f"{scope}.StyleNorm", **kw)([x, gamma, beta])

    def separable(x, scope, depth):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{scope}.depthwise", **kw)(x)
        return layers.Conv2D(depth, 1, use_bias=False, name=f"{scope}.pointwise", **kw)(x)

    x = content
    if border_pad:  # the photo's edges reflected outwards, so the convolutions' zero padding falls outside it
        x = ReflectBorder(border_pad, name="transformer.border_pad", **kw)(x)
    # Stem: to 1/4 resolution by two strided convolutions, no style conditioning (as Magenta's contract).
    for i, depth in enumerate((stem_channels, channels), start=1):
        x = layers.Conv2D(depth, 3, strides=2, padding="same", activation="relu",
                          name=f"transformer.contract.conv{i}", **kw)(x)
    # Residual blocks at 1/4 resolution: x + CIN(sep(ReLU(CIN(sep(x))))), no ReLU after the add.
    for i in range(1, residual_blocks + 1):
        scope = f"transformer.residual.residual{i}"
        h = separable(x, f"{scope}.conv1", channels)
        h = layers.ReLU(name=f"{scope}.conv1.Relu", **kw)(cin(h, f"{scope}.conv1", channels))
        h = separable(h, f"{scope}.conv2", channels)
        h = cin(h, f"{scope}.conv2", channels)
        x = layers.Add(name=f"{scope}.add", **kw)([x, h])

    if border_pad:  # back to the photo's own pixels before the head
        x = BorderCrop(border_pad // 4, name="transformer.border_crop", **kw)(x)

    def up(x, scope, depth, use_bias):
        if upsample == "nearest":
            x = NearestUpsample(2, name=f"{scope}.upsample", **kw)(x)
            return layers.Conv2D(depth, 3, padding="same", use_bias=use_bias, name=f"{scope}.conv", **kw)(x)
        return layers.Conv2DTranspose(depth, 2, strides=2, padding="same", use_bias=use_bias,
                                      name=f"{scope}.conv", **kw)(x)

    # Head: x2 with a conditional norm at 1/2 resolution, then x2 to full resolution with a plain conv.
    x = up(x, "transformer.expand.conv1", head_channels, use_bias=False)
    x = layers.ReLU(name="transformer.expand.conv1.Relu", **kw)(cin(x, "transformer.expand.conv1.conv", head_channels))
    # Optional separable blocks at 1/2 resolution: spatial mixing the transposed convolutions do not have.
    for i in range(1, half_res_blocks + 1):
        scope = f"transformer.expand.half{i}"
        x = layers.ReLU(name=f"{scope}.Relu", **kw)(cin(separable(x, scope, head_channels), scope, head_channels))
    if full_res_channels:
        # Full-resolution detail: x2 to full_res_channels features, then a full_res_kernel conv to RGB.
        x = layers.ReLU(name="transformer.expand.conv2.Relu", **kw)(
            up(x, "transformer.expand.conv2", full_res_channels, use_bias=True))
        x = layers.Conv2D(3, full_res_kernel, padding="same", name="transformer.expand.conv3.conv", **kw)(x)
        x = layers.Activation("sigmoid", name="transformer.expand.conv3.Sigmoid", **kw)(x)
    else:
        x = up(x, "transformer.expand.conv2", 3, use_bias=True)
        x = layers.Activation("sigmoid", name="transformer.expand.conv2.Sigmoid", **kw)(x)
    stylized = layers.Activation("linear", dtype="float32", name="stylized_image")(x)
    return keras.Model([content, bottleneck], stylized, name=name)


def build_realtime_from_config(model_cfg, input_shape=(None, None, 3)) -> keras.Model:
    """The network a `configs/model/realtime.yaml`-style config describes (alpha scales every width)."""
    alpha = float(model_cfg.get("alpha", 1.0))
    width = lambda n: max(1, int(round(n * alpha)))  # noqa: E731
    return build_realtime_network(
        channels=width(int(model_cfg.get("channels", 48))),
        stem_channels=width(int(model_cfg.get("stem_channels", 16))),
        residual_blocks=int(model_cfg.get("residual_blocks", 5)),
        head_channels=width(int(model_cfg.get("head_channels", 24))),
        upsample=str(model_cfg.get("upsample", "transpose")),
        half_res_blocks=int(model_cfg.get("half_res_blocks", 0)),
        full_res_channels=width(int(model_cfg.get("full_res_channels", 0))) if model_cfg.get("full_res_channels") else 0,
        full_res_kernel=int(model_cfg.get("full_res_kernel", 3)),
        border_pad=int(model_cfg.get("border_pad", 0)),
        input_shape=input_shape,
    )
