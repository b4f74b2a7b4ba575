"""Convolutions on pixel blocks (trainer.space_to_depth_channels): the same maths, never saved."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.network.layers import ReflectPadConv2D, plain_convolutions, use_space_to_depth

from training.network.magenta_network import build_transfer_network
from training.network.space_to_depth import conv2d_space_to_depth

# (height, width, kernel, in, out, block): the transfer network's 9x9 and 3x3 cases, sizes that
# leave partial blocks on both axes, and rectangular blocks (a side or (rows, columns)).
SHAPES = [(40, 36, 9, 3, 8, 4), (25, 27, 9, 8, 3, 4), (30, 33, 3, 16, 8, 2), (17, 20, 3, 5, 7, 4),
          (21, 38, 3, 3, 16, (1, 4)), (19, 22, 5, 4, 6, (3, 2))]


def blocks(model) -> set[int]:
    return {layer.space_to_depth_block for layer in model.layers if isinstance(layer, ReflectPadConv2D)}


@pytest.mark.parametrize("height, width, kernel, cin, cout, block", SHAPES)
def test_blocked_convolution_and_its_gradients_equal_the_plain_one(height, width, kernel, cin, cout, block):
    """With a bias and ReLU, which act on the blocked output (the bias repeated per pixel of a block)."""
    rng = np.random.default_rng(kernel * cin + cout)
    x = rng.normal(size=(2, height, width, cin)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, cin, cout)).astype(np.float32)
    b = rng.normal(size=(cout,)).astype(np.float32) * 3.0  # large enough that a misplaced bias shows
    relu = keras.activations.relu

    def plain_conv(a, k):
        return relu(keras.ops.conv(a, k, padding="valid") + b)

    def blocked_conv(a, k):
        return conv2d_space_to_depth(a, k, block, b, relu)

    plain = keras.ops.convert_to_numpy(plain_conv(x, w))
    assert 0.2 < (plain > 0).mean() < 0.8  # the ReLU both passes and stops values
    blocked = keras.ops.convert_to_numpy(blocked_conv(x, w))
    assert blocked.shape == plain.shape == (2, height - kernel + 1, width - kernel + 1, cout)
    np.testing.assert_allclose(blocked, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradients are checked with tf.GradientTape")
    import tensorflow as tf

    def gradients(conv):
        xv, wv = tf.Variable(x), tf.Variable(w)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(conv(xv, wv)))
        return [g.numpy() for g in tape.gradient(loss, [xv, wv])]

    for plain_grad, blocked_grad in zip(gradients(plain_conv), gradients(blocked_conv)):
        np.testing.assert_allclose(blocked_grad, plain_grad, rtol=1e-4, atol=1e-4 * np.abs(plain_grad).max())


def test_transfer_network_on_blocks_gives_the_same_image_and_saves_plain(tmp_path, real_photo):
    model = build_transfer_network(alpha=0.25)
    photo = real_photo[None, :64, :96]
    bottleneck = np.random.default_rng(0).normal(size=(1, 1, 1, 100)).astype(np.float32)
    plain = keras.ops.convert_to_numpy(model([photo, bottleneck]))

    # At alpha 0.25: both 9x9 convs (3 -> 8, 8 -> 3) and the 16 -> 8 one; stride-2 convs never.
    assert use_space_to_depth(model, max_channels=8) == ["transformer.contract.conv1", "transformer.expand.conv2.conv",
                                            "transformer.expand.conv3.conv"]
    blocked = keras.ops.convert_to_numpy(model([photo, bottleneck]))
    np.testing.assert_allclose(blocked, plain, atol=1e-4)  # summation order only: within 2e-5 here
    with plain_convolutions(model):
        assert blocks(model) == {(1, 1)}
    assert model.get_layer("transformer.contract.conv1").space_to_depth_block == (4, 4)  # restored on leaving

    path = tmp_path / "transfer.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    assert blocks(reloaded) == {(1, 1)}
    assert use_space_to_depth(model, max_channels=0) == []
    assert blocks(model) == {(1, 1)}


def test_vgg16_first_conv_on_blocks_gives_the_same_features(real_photo):
    """Zero ("same") padding made explicit: VGG-16's 3-channel first conv on 2x2 blocks, partial blocks included."""
    from training.network.vgg16 import build_vgg16_features, set_seeded_random_weights, vgg_features

    model = build_vgg16_features(last_block=2)
    set_seeded_random_weights(model)
    photo = real_photo[None, :37, :50]
    plain = vgg_features(model, photo, {"conv1": 1.0, "conv2": 1.0})
    assert use_space_to_depth(model, max_channels=8) == ["block1_conv1"]
    assert model.get_layer("block1_conv1").space_to_depth_block == (1, 4)  # no transpose back
    blocked = vgg_features(model, photo, {"conv1": 1.0, "conv2": 1.0})
    for name in plain:
        expected = keras.ops.convert_to_numpy(plain[name])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(blocked[name]), expected, atol=1e-4 * np.abs(expected).max())
