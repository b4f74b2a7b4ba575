"""Magenta's arbitrary image stylization network (Ghiasi et al. 2017) in Keras 3.

The layer structure follows `magenta/models/arbitrary_image_stylization/nza_model.py`
and `image_stylization/ops.py`. Layer names are Magenta's variable scopes with "/"
written as "." (Keras forbids "/" in names), so `magenta_scope(layer)` gives the
scope a published weight belongs to.

Two models make up a stylizer, like Magenta's published pair:
- the style predictor: style image in [0, 1] -> bottleneck (B, 1, 1, 100);
- the transfer network: content image in [0, 1] + bottleneck -> stylized image in [0, 1].
  It holds the 26 `style_params` 1x1 convolutions that map the bottleneck to the
  gamma/beta of its 13 conditional instance norms.
"""

from __future__ import annotations

import contextlib
import zipfile

import keras
from keras import layers, ops

from training.distribute import tensorflow_replicas
from training.network.space_to_depth import block_for, conv2d_space_to_depth

BOTTLENECK_DIM = 100
PACKAGE = "stylepipe"


def magenta_scope(layer_or_name) -> str:
    """Magenta variable scope of a layer: its name with "." read as "/"."""
    name = layer_or_name if isinstance(layer_or_name, str) else layer_or_name.name
    return name.replace(".", "/")


@keras.saving.register_keras_serializable(PACKAGE)
class PixelBlockConv2D(layers.Conv2D):
    """A Conv2D that training may compute on pixel blocks (training/network/space_to_depth.py).

    `space_to_depth_block` other than (1, 1) (set by `use_space_to_depth` for training, never
    saved) computes the same stride-1 convolution on pixel blocks, where it has channels enough for the
    tensor cores. "same" padding is then made explicit (zeros), as the blocked convolution is VALID.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.space_to_depth_block = (1, 1)  # (rows, columns)

    def call(self, inputs):
        block = self.space_to_depth_block
        if block == (1, 1) or None in inputs.shape[1:3]:
            return super().call(inputs)
        if self.padding == "same":
            ph, pw = self.kernel.shape[0] // 2, self.kernel.shape[1] // 2
            inputs = ops.pad(inputs, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        return conv2d_space_to_depth(inputs, self.kernel, block, self.bias if self.use_bias else None, self.activation)


@keras.saving.register_keras_serializable(PACKAGE)
class ReflectPadConv2D(PixelBlockConv2D):
    """Magenta's `conv2d`: REFLECT-pad by kernel_size // 2, then a VALID convolution.

    Reflect padding keeps borders free of the dark frame that zero padding paints.
    """

    def __init__(self, filters, kernel_size, strides=1, use_bias=False, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(
            filters, kernel_size, strides=strides, padding="valid", use_bias=use_bias, **kwargs
        )

    @property
    def pad(self) -> tuple[int, int]:
        return self.kernel_size[0] // 2, self.kernel_size[1] // 2

    def call(self, inputs):
        ph, pw = self.pad
        padded = ops.pad(inputs, [[0, 0], [ph, ph], [pw, pw], [0, 0]], mode="reflect")
        return super().call(padded)

    def compute_output_shape(self, input_shape):
        ph, pw = self.pad
        b, h, w, c = input_shape
        grow = lambda d, p: None if d is None else d + 2 * p  # noqa: E731
        return super().compute_output_shape((b, grow(h, ph), grow(w, pw), c))

    def get_config(self):
        config = super().get_config()
        config.pop("padding", None)
        return config


FOLDED_CHANNELS = 512  # ConditionalInstanceNorm's folded view in training: at most this many channels


def fold_groups(pixels: int, channels: int) -> int:
    """How many pixels to put side by side: the largest power of 2 dividing `pixels` whose view
    keeps at most FOLDED_CHANNELS channels (1 when channels alone reach it)."""
    groups = 1
    while groups * 2 * channels <= FOLDED_CHANNELS and pixels % (groups * 2) == 0:
        groups *= 2
    return groups


@keras.saving.register_keras_serializable(PACKAGE)
class ConditionalInstanceNorm(layers.Layer):
    """Magenta's `conditional_style_norm`: instance norm with per-example gamma and beta.

    inputs: [x (B, H, W, C), gamma (B, 1, 1, C), beta (B, 1, 1, C)].
    gamma is used as is (no 1 + gamma), variance is the biased one, eps 1e-5.
    Moments are taken in float32 so that bf16/fp16 training keeps them accurate.
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs, training=None):
        x, gamma, beta = inputs
        if training:
            return self._training_norm(x, gamma, beta)
        x32 = ops.cast(x, "float32")
        mean = ops.mean(x32, axis=(1, 2), keepdims=True)
        variance = ops.mean(ops.square(x32 - mean), axis=(1, 2), keepdims=True)
        normalized = (x32 - mean) * ops.rsqrt(variance + self.epsilon)
        out = ops.cast(gamma, "float32") * normalized + ops.cast(beta, "float32")
        return ops.cast(out, self.compute_dtype)

    def _training_norm(self, x, gamma, beta):
        """The same normalisation, computed on a folded view of x for GPU speed.

        Both moments come from one pass over x: one multi-output reduction on a GPU (the lite model
        trains 2% faster on an H200). In float32 the cancellation in E[x^2] - E[x]^2 stays far below
        bf16 resolution; inference and export keep the two-pass form, which fp16 on phones needs.

        The view (B, H*W/G, G*C) puts G neighbouring pixels side by side along the channels. XLA runs a
        mean over H and W of (B, H, W, C) on a GPU as one block per image: 64 blocks at batch 64, for
        the moments and for the backward pass's sums (about 2 ms of the lite model's 28.6 ms step at
        batch 64 on an H200). Over the folded axis the work is spread over G times as many blocks; the G
        partial means of each channel are then averaged in a small reduction. The lite model trains
        1.10x faster on an H200.
        """
        _, height, width, channels = x.shape
        groups = fold_groups(height * width, channels) if height and width else 1
        batch = ops.shape(x)[0]

        def per_channel(t):  # (B, H*W/G, G*C) -> (B, 1, G*C): each channel's mean over all H*W, G times
            partial = ops.mean(t, axis=1, keepdims=True)
            if groups == 1:
                return partial
            return ops.tile(ops.mean(ops.reshape(partial, (batch, groups, channels)), axis=1, keepdims=True), (1, 1, groups))

        x32 = ops.reshape(ops.cast(x, "float32"), (batch, -1, groups * channels))
        mean = per_channel(x32)
        variance = ops.maximum(per_channel(ops.square(x32)) - ops.square(mean), 0.0)
        # gamma and beta (B, 1, 1, C) are per channel: G copies side by side match the view.
        gamma, beta = (ops.tile(ops.reshape(ops.cast(t, "float32"), (batch, 1, channels)), (1, 1, groups))
                       for t in (gamma, beta))
        out = gamma * (x32 - mean) * ops.rsqrt(variance + self.epsilon) + beta
        return ops.cast(ops.reshape(out, ops.shape(x)), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(PACKAGE)
class SpatialMean(layers.Layer):
    """Mean over H and W, keeping them as 1x1 (Magenta: reduce_mean(axis=[1, 2], keepdims))."""

    def call(self, inputs):
        return ops.mean(inputs, axis=(1, 2), keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, input_shape[3])


@keras.saving.register_keras_serializable(PACKAGE)
class NearestUpsample(layers.Layer):
    """Nearest-neighbour resize by an integer factor (Magenta: resize_nearest_neighbor).

    Inference is written as an image resize, so exports get one RESIZE_NEAREST_NEIGHBOR
    (TFLite, constant size with static shapes) / upsample_nearest_neighbor (Core ML) op.
    Training repeats the pixels instead (the same values): its gradient is a sum over each
    block, where the resize's is a scatter-add, slow on GPUs.
    """

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs, training=None):
        height, width = inputs.shape[1], inputs.shape[2]
        if training or height is None or width is None:  # (unknown size while tracing, too)
            return ops.repeat(ops.repeat(inputs, self.factor, axis=1), self.factor, axis=2)
        return ops.image.resize(inputs, (height * self.factor, width * self.factor), interpolation="nearest")

    def compute_output_shape(self, input_shape):
        grow = lambda d: None if d is None else d * self.factor  # noqa: E731
        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def transfer_layer_depths(alpha: float) -> dict[str, int]:
    """Output channels of every conv of the transfer network, by Magenta scope."""
    if alpha <= 0:
        raise ValueError(f"model.alpha must be > 0, got {alpha}")
    d = lambda n: max(1, int(round(n * alpha)))  # noqa: E731
    depths = {
        "transformer/contract/conv1": d(32),
        "transformer/contract/conv2": d(64),
        "transformer/contract/conv3": d(128),
    }
    for i in range(1, 6):
        for j in (1, 2):
            depths[f"transformer/residual/residual{i}/conv{j}"] = d(128)
    depths["transformer/expand/conv1/conv"] = d(64)
    depths["transformer/expand/conv2/conv"] = d(32)
    depths["transformer/expand/conv3/conv"] = 3
    return depths


def cin_scopes(alpha: float) -> dict[str, int]:
    """The 13 conditionally normalised convs (residual + expand) and their depths."""
    return {k: v for k, v in transfer_layer_depths(alpha).items() if "/contract/" not in k}


def _dotted(scope: str) -> str:
    return scope.replace("/", ".")


def build_transfer_network(
    alpha: float = 1.0,
    batch_norm_momentum: float = 0.99,
    freeze_batch_norm: bool = False,
    input_shape=(None, None, 3),
    name: str = "transformer",
) -> keras.Model:
    """Content image + bottleneck -> stylized image (Magenta `nza_model.transform`)."""
    depths = transfer_layer_depths(alpha)
    content = keras.Input(shape=input_shape, name="content_image")
    bottleneck = keras.Input(shape=(1, 1, BOTTLENECK_DIM), name="style_bottleneck")

    def style_params(scope):
        # beta = StyleNorm/Conv, gamma = StyleNorm/Conv_1: linear 1x1 convs with bias.
        depth = depths[scope]
        prefix = _dotted(f"style_params/{scope}/StyleNorm")
        beta = layers.Conv2D(depth, 1, name=f"{prefix}.Conv")(bottleneck)
        gamma = layers.Conv2D(depth, 1, name=f"{prefix}.Conv_1")(bottleneck)
        return gamma, beta

    def conv(x, scope, kernel, strides=1):
        return ReflectPadConv2D(depths[scope], kernel, strides=strides, name=_dotted(scope))(x)

    def conv_cin(x, scope, kernel, activation):
        x = conv(x, scope, kernel)
        gamma, beta = style_params(scope)
        x = ConditionalInstanceNorm(name=_dotted(f"{scope}/StyleNorm"))([x, gamma, beta])
        return layers.Activation(activation, name=_dotted(f"{scope}/{activation}"))(x) if activation else x

    x = content
    # Contract: conv -> batch norm (center, no scale, eps 1e-3) -> ReLU; not style-conditioned.
    for i, (kernel, strides) in enumerate([(9, 1), (3, 2), (3, 2)], start=1):
        scope = f"transformer/contract/conv{i}"
        x = conv(x, scope, kernel, strides)
        # Frozen (inference mode) when it holds imported, folded weights.
        x = layers.BatchNormalization(
            scale=False, epsilon=1e-3, momentum=batch_norm_momentum, name=_dotted(f"{scope}/BatchNorm"),
            trainable=not freeze_batch_norm,
            # Under a multi-device tf.distribute scope: statistics over the global batch, not each replica's.
            synchronized=tensorflow_replicas() > 1,
        )(x)
        x = layers.ReLU(name=_dotted(f"{scope}/Relu"))(x)
    # Residual blocks: x + CIN(conv(ReLU(CIN(conv(x))))), no ReLU after the add.
    for i in range(1, 6):
        scope = f"transformer/residual/residual{i}"
        h = conv_cin(x, f"{scope}/conv1", 3, "relu")
        h = conv_cin(h, f"{scope}/conv2", 3, None)
        x = layers.Add(name=_dotted(f"{scope}/add"))([x, h])
    # Expand: nearest x2 upsampling then conv -> CIN -> ReLU, twice; last conv -> CIN -> sigmoid.
    for i in (1, 2):
        scope = f"transformer/expand/conv{i}"
        x = NearestUpsample(2, name=_dotted(f"{scope}/upsample"))(x)
        x = conv_cin(x, f"{scope}/conv", 3, "relu")
    x = conv_cin(x, "transformer/expand/conv3/conv", 9, "sigmoid")
    stylized = layers.Activation("linear", dtype="float32", name="stylized_image")(x)
    return keras.Model([content, bottleneck], stylized, name=name)


def _pixel_block_convs(*models: keras.Model):
    """The PixelBlockConv2D layers of `models` and of the models nested in them."""
    for model in models:
        for layer in model.layers:
            if isinstance(layer, PixelBlockConv2D):
                yield layer
            elif isinstance(layer, keras.Model):
                yield from _pixel_block_convs(layer)


def use_space_to_depth(*models: keras.Model, max_channels: int) -> list[str]:
    """Compute the stride-1 convs of `models` whose input or output has <= max_channels channels on pixel blocks.

    A training-speed setting (`trainer.space_to_depth_channels`; 0 turns it off): the same
    results, the same weights. Returns the names of the convs it applies to.
    """
    names = []
    for layer in _pixel_block_convs(*models):
        kh, kw, cin, cout = layer.kernel.shape
        on = (tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1) and kh == kw
              and (layer.padding == "valid" or kh % 2 == 1) and min(cin, cout) <= max_channels)
        layer.space_to_depth_block = block_for(kh, cin) if on else (1, 1)
        names += [layer.name] if on else []
    return names


@contextlib.contextmanager
def plain_convolutions(*models: keras.Model):
    """Within: every conv of `models` runs as the plain convolution (for counting the model's own FLOPs)."""
    convs = list(_pixel_block_convs(*models))
    blocks = [conv.space_to_depth_block for conv in convs]
    for conv in convs:
        conv.space_to_depth_block = (1, 1)
    try:
        yield
    finally:
        for conv, block in zip(convs, blocks):
            conv.space_to_depth_block = block


def bottleneck_scope(backbone_name: str) -> str:
    """Magenta's name of the 1x1 conv to the 100-d bottleneck."""
    return "mobilenet_conv/Conv" if backbone_name == "mobilenet_v2" else "Conv"


def build_style_predictor(backbone: keras.Model, backbone_name: str, name: str = "style_predictor") -> keras.Model:
    """Style image in [0, 1] -> backbone -> spatial mean -> 1x1 conv -> bottleneck (B, 1, 1, 100)."""
    style = keras.Input(shape=(None, None, 3), name="style_image")
    pooled = SpatialMean(name="spatial_mean")(backbone(style))
    bottleneck = layers.Conv2D(BOTTLENECK_DIM, 1, name=_dotted(bottleneck_scope(backbone_name)))(pooled)
    bottleneck = layers.Activation("linear", dtype="float32", name="style_bottleneck")(bottleneck)
    return keras.Model(style, bottleneck, name=name)


def build_stylizer(model_cfg, backbone_cfg, cache_dir) -> keras.Model:
    """The arbitrary stylization model: {content, style} images in [0, 1] -> stylized image.

    Its sub-models `style_predictor` and `transformer` are what the export stage writes. The transformer
    is Magenta's (`model.architecture: magenta`, the default) or the fast one of
    training/network/realtime_network.py (`model.architecture: realtime`).
    """
    from training.network.backbones import build_backbone  # keeps network.py free of weight loading

    predictor = build_style_predictor(build_backbone(backbone_cfg, cache_dir), backbone_cfg.name)
    if model_cfg.get("architecture", "magenta") == "realtime":
        from training.network.realtime_network import build_realtime_from_config

        transformer = build_realtime_from_config(model_cfg)
    else:
        transformer = build_transfer_network(
            alpha=model_cfg.alpha,
            batch_norm_momentum=model_cfg.get("batch_norm_momentum", 0.99),
            freeze_batch_norm=model_cfg.get("freeze_batch_norm", False),
        )
    content = keras.Input(shape=(None, None, 3), name="content")
    style = keras.Input(shape=(None, None, 3), name="style")
    stylized = transformer([content, predictor(style)])
    return keras.Model({"content": content, "style": style}, stylized, name="stylizer")


def load_stylizer(path) -> keras.Model:
    """Load a stylizer written by the training or import stage (safe mode), or explain why not."""
    from pathlib import Path

    from training.network import vgg16  # noqa: F401 - registers VGGPreprocess, used by the vgg16 backbone
    from training.errors import StylepipeError

    path = Path(path)
    if not path.is_file():
        raise StylepipeError(f"{path}: no such model file (run `python -m pipelines.train` or `python -m pipelines.import_magenta` first)")
    if not zipfile.is_zipfile(path):  # Keras would call a truncated archive "File not found"
        raise StylepipeError(f"{path}: not a readable Keras model file (not a whole .keras zip archive: "
                             "truncated, damaged or another format)")
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise StylepipeError(f"{path}: not a readable Keras model file ({first_line})") from None
    names = {layer.name for layer in model.layers}
    if not {"style_predictor", "transformer"} <= names:
        raise StylepipeError(f"{path}: a Keras model, but not a stylepipe stylizer (it has no style_predictor/transformer)")
    return model
