"""Depthwise convolutions as shifted sums (trainer.shifted_sum_depthwise) are Keras' own."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.network.depthwise import use_shifted_sum_depthwise


@pytest.mark.parametrize("kernel, use_bias, activation, strides, padding", [
    (3, False, None, 1, "same"), (5, True, "relu", 1, "same"), (4, True, None, 1, "same"),
    (3, False, None, 2, "valid"),  # MobileNetV2's stride-2 depthwise convs (after a ZeroPadding2D)
    (3, True, None, 2, "same"), (4, False, None, 2, "same")])
def test_shifted_sum_depthwise_gives_keras_values_and_gradients(kernel, use_bias, activation, strides, padding):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradients are checked with tf.GradientTape")
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.Variable(rng.normal(size=(2, 9, 7, 6)).astype(np.float32))

    def layer_pair():
        image = keras.Input((None, None, 6))
        conv = keras.layers.DepthwiseConv2D(kernel, strides=strides, padding=padding, use_bias=use_bias, activation=activation)
        model = keras.Model(image, conv(image))
        conv.set_weights([w + rng.normal(size=w.shape).astype(np.float32) for w in conv.get_weights()])
        return model, conv

    def values_and_gradients(model, conv):
        weights = tf.constant(np.random.default_rng(1).normal(size=model(x).shape).astype(np.float32))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x) * weights)
        return [model(x).numpy()] + [g.numpy() for g in tape.gradient(loss, [x, *conv.trainable_weights])]

    model, conv = layer_pair()
    plain = values_and_gradients(model, conv)
    assert use_shifted_sum_depthwise(model) == [conv.name]
    shifted = values_and_gradients(model, conv)
    for a, b in zip(plain, shifted):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    assert model.get_config() == keras.Model.from_config(model.get_config()).get_config()  # nothing saved changes


def test_shifted_sum_depthwise_selects_strided_or_all_and_finds_nested_ones():
    def model():
        image = keras.Input((16, 16, 4))
        inner_input = keras.Input((16, 16, 4))
        inner = keras.Model(inner_input, keras.layers.DepthwiseConv2D(3, padding="same", name="nested")(inner_input))
        strided = keras.layers.DepthwiseConv2D(3, strides=2, name="strided")(inner(image))
        return keras.Model(image, strided)

    assert use_shifted_sum_depthwise(model(), which="all") == ["nested", "strided"]
    only_strided = model()
    assert use_shifted_sum_depthwise(only_strided, which="strided") == ["strided"]
    assert "call" not in vars(only_strided.layers[1].get_layer("nested"))
    assert use_shifted_sum_depthwise(model(), which="none") == []
    with pytest.raises(ValueError, match="none, strided, all"):
        use_shifted_sum_depthwise(model(), which="yes")


def test_mobilenet_style_predictor_gives_the_same_style_vector_with_shifted_sums():
    """Where training uses them: MobileNetV2's style predictor on a real painting (random weights, as
    the benchmark's) gives the same style vector with its strided or all depthwise convs as shifted sums."""
    from omegaconf import OmegaConf
    from PIL import Image

    from helpers import CACHE_DIR, STYLE_DIR
    from training.network.backbones import build_backbone
    from training.network.stylizer import build_style_predictor

    painting = Image.open(sorted(STYLE_DIR.glob("*.jpg"))[0]).convert("RGB").resize((96, 96), Image.Resampling.BICUBIC)
    style = np.asarray(painting, np.float32)[None] / 255.0
    backbone_cfg = OmegaConf.create({"name": "mobilenet_v2", "weights": None, "trainable": False})

    def style_vector(which):
        keras.utils.set_random_seed(0)
        predictor = build_style_predictor(build_backbone(backbone_cfg, CACHE_DIR), "mobilenet_v2")
        assert len(use_shifted_sum_depthwise(predictor, which=which)) == {"none": 0, "strided": 4, "all": 17}[which]
        return keras.ops.convert_to_numpy(predictor(style))

    plain = style_vector("none")
    assert np.abs(plain).max() > 0
    for which in ("strided", "all"):
        np.testing.assert_allclose(style_vector(which), plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())
