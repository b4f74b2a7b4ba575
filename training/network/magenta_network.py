"""Magenta's transfer network (Ghiasi et al. 2017) in Keras 3: `model.architecture: magenta`.

The layer structure follows `magenta/models/arbitrary_image_stylization/nza_model.py` and
`image_stylization/ops.py`; layer names are Magenta's variable scopes (training/network/layers.py),
so published weights load by name. Content image in [0, 1] + bottleneck (B, 1, 1, 100) -> stylized
image in [0, 1]. It holds the 26 `style_params` 1x1 convolutions that map the bottleneck to the
gamma/beta of its 13 conditional instance norms.
"""

from __future__ import annotations

import keras
from keras import layers

from training.distribute import tensorflow_replicas
from training.network.layers import (
    BOTTLENECK_DIM,
    ConditionalInstanceNorm,
    NearestUpsample,
    ReflectPadConv2D,
    dotted,
)


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
        prefix = dotted(f"style_params/{scope}/StyleNorm")
        beta = layers.Conv2D(depth, 1, name=f"{prefix}.Conv")(bottleneck)
        gamma = layers.Conv2D(depth, 1, name=f"{prefix}.Conv_1")(bottleneck)
        return gamma, beta

    def conv(x, scope, kernel, strides=1):
        return ReflectPadConv2D(depths[scope], kernel, strides=strides, name=dotted(scope))(x)

    def conv_cin(x, scope, kernel, activation):
        x = conv(x, scope, kernel)
        gamma, beta = style_params(scope)
        x = ConditionalInstanceNorm(name=dotted(f"{scope}/StyleNorm"))([x, gamma, beta])
        return layers.Activation(activation, name=dotted(f"{scope}/{activation}"))(x) if activation else x

    x = content
    # Contract: conv -> batch norm (center, no scale, eps 1e-3) -> ReLU; not style-conditioned.
    for i, (kernel, strides) in enumerate([(9, 1), (3, 2), (3, 2)], start=1):
        scope = f"transformer/contract/conv{i}"
        x = conv(x, scope, kernel, strides)
        # Frozen (inference mode) when it holds imported, folded weights.
        x = layers.BatchNormalization(
            scale=False, epsilon=1e-3, momentum=batch_norm_momentum, name=dotted(f"{scope}/BatchNorm"),
            trainable=not freeze_batch_norm,
            # Under a multi-device tf.distribute scope: statistics over the global batch, not each replica's.
            synchronized=tensorflow_replicas() > 1,
        )(x)
        x = layers.ReLU(name=dotted(f"{scope}/Relu"))(x)
    # Residual blocks: x + CIN(conv(ReLU(CIN(conv(x))))), no ReLU after the add.
    for i in range(1, 6):
        scope = f"transformer/residual/residual{i}"
        h = conv_cin(x, f"{scope}/conv1", 3, "relu")
        h = conv_cin(h, f"{scope}/conv2", 3, None)
        x = layers.Add(name=dotted(f"{scope}/add"))([x, h])
    # Expand: nearest x2 upsampling then conv -> CIN -> ReLU, twice; last conv -> CIN -> sigmoid.
    for i in (1, 2):
        scope = f"transformer/expand/conv{i}"
        x = NearestUpsample(2, name=dotted(f"{scope}/upsample"))(x)
        x = conv_cin(x, f"{scope}/conv", 3, "relu")
    x = conv_cin(x, "transformer/expand/conv3/conv", 9, "sigmoid")
    stylized = layers.Activation("linear", dtype="float32", name="stylized_image")(x)
    return keras.Model([content, bottleneck], stylized, name=name)
