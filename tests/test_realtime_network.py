"""The fast transfer network (model=realtime): interface, export op rules, float16 safety, style conditioning."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from helpers import REPO, compose_train, photo, realtime_stylizer
from helpers import random_bottleneck as bottleneck


@pytest.fixture(scope="module")
def stylizer():
    """A stylizer with the realtime transfer network as configs/model/realtime.yaml describes it."""
    return realtime_stylizer()


def test_model_choice_composes_and_validates(tmp_path):
    from training.config import validate_train_config

    cfg = compose_train(["model=realtime"], tmp_path)
    validate_train_config(cfg)
    assert cfg.model.name == "realtime" and cfg.model.architecture == "realtime"


@pytest.mark.parametrize("size", [(384, 384), (384, 768)])
def test_stylizer_interface_at_both_sizes(stylizer, size):
    transformer = stylizer.get_layer("transformer")
    assert [t.name for t in transformer.inputs] == ["content_image", "style_bottleneck"]
    assert tuple(transformer.inputs[1].shape) == (None, 1, 1, 100)
    assert not any(layer.name.endswith("BatchNorm") for layer in transformer.layers)
    out = np.asarray(transformer([photo(*size), bottleneck(0)], training=False))
    assert out.shape == (1, *size, 3)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    # The whole stylizer (style predictor + transformer) runs end to end, as training calls it.
    style = photo(64, 64, "baboon.jpg")
    assert tuple(stylizer({"content": photo(64, 96), "style": style}).shape) == (1, 64, 96, 3)


def test_bottleneck_sets_the_style(stylizer):
    transformer = stylizer.get_layer("transformer")
    image = photo(128, 128)
    a, b = (np.asarray(transformer([image, bottleneck(seed)], training=False)) for seed in (1, 2))
    same = np.asarray(transformer([image, bottleneck(1)], training=False))
    np.testing.assert_array_equal(a, same)
    assert np.abs(a - b).mean() > 1e-3


def test_saved_and_loaded_in_safe_mode(stylizer, tmp_path):
    from training.network.stylizer import load_stylizer

    stylizer.save(tmp_path / "model.keras")
    loaded = load_stylizer(tmp_path / "model.keras").get_layer("transformer")
    image = photo(64, 64)
    np.testing.assert_allclose(loaded([image, bottleneck(0)]), stylizer.get_layer("transformer")([image, bottleneck(0)]),
                               atol=1e-6)


# configs/model/realtime.yaml's design (a separable block at 1/2 resolution, an 8-channel full-resolution
# stage with a 5x5 conv to RGB, the photo reflect-padded by 16 px) and the plain one with all three off.
DESIGN_KEYS = ("half_res_blocks", "full_res_channels", "full_res_kernel", "border_pad")
CONFIGURED = {key: OmegaConf.load(REPO / "configs" / "model" / "realtime.yaml")[key] for key in DESIGN_KEYS}
DESIGNS = {"configured": CONFIGURED, "plain": {"half_res_blocks": 0, "full_res_channels": 0, "border_pad": 0}}


@pytest.fixture(scope="module")
def design_stylizers(stylizer):
    return {"configured": stylizer, "plain": realtime_stylizer(seed=5, **DESIGNS["plain"])}


@pytest.mark.parametrize("design", list(DESIGNS))
@pytest.mark.parametrize("variant", ["baked", "transfer"])
def test_tflite_fp16_export_meets_gpu_rules_and_matches_float32(design_stylizers, design, variant):
    from export.tf_graph import constant_module, make_module
    from export.tflite import check_gpu_delegate_rules, convert
    from training.weights.tflite_runner import tflite_runner

    stylizer = design_stylizers[design]
    style = bottleneck(3)
    flatbuffer = convert(constant_module(make_module(variant, stylizer, 384, 384, style if variant == "baked" else None)),
                         "serve", fp16=True)
    report = check_gpu_delegate_rules(flatbuffer)
    assert report.ok, report.problems
    assert "RESIZE_NEAREST_NEIGHBOR" not in report.ops
    # border_pad: one MIRROR_PAD (REFLECT) and one SLICE with constant bounds (the Bender graph builds both
    # from one-hot convs); half_res_blocks: one more depthwise conv
    options = DESIGNS[design]
    border = int(options["border_pad"] > 0)
    assert (report.ops.get("MIRROR_PAD", 0), report.ops.get("SLICE", 0)) == (border, border)
    assert "STRIDED_SLICE" not in report.ops
    assert report.ops["TRANSPOSE_CONV"] == 2 and report.ops["DEPTHWISE_CONV_2D"] == 10 + options["half_res_blocks"]
    image = photo(384, 384)
    inputs = {"content_image": image} | ({"style_bottleneck": style} if variant == "transfer" else {})
    got = tflite_runner(flatbuffer, "serve", inputs, threads=2)()["stylized_image"]
    want = np.asarray(stylizer.get_layer("transformer")([image, style], training=False))
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() < 0.02, np.abs(got - want).max()


@pytest.mark.parametrize("design", list(DESIGNS))
def test_float16_network_is_finite_and_close_to_float32(design_stylizers, design):
    """The whole network computed in float16 (as a phone GPU does) on a real photo."""
    import keras

    from training.network.realtime_network import build_realtime_network

    transformer = design_stylizers[design].get_layer("transformer")
    half = build_realtime_network(dtype="float16", **DESIGNS[design])
    half.set_weights(transformer.get_weights())
    assert half.get_layer("transformer.residual.residual1.conv1.StyleNorm").compute_dtype == "float16"
    image = photo(256, 384, "astronaut.jpg")
    want = np.asarray(transformer([image, bottleneck(4)], training=False))
    got = keras.ops.convert_to_numpy(half([image.astype(np.float16), bottleneck(4).astype(np.float16)], training=False))
    assert np.isfinite(got).all()
    assert np.abs(got.astype(np.float32) - want).max() < 0.03, np.abs(got.astype(np.float32) - want).max()


def test_instance_norm_in_float16_does_not_overflow_where_unscaled_squares_would():
    """Activations of several hundred (a real photo's features, scaled): (x - mean)^2 overflows float16
    (65504) unless pre-scaled; E[x^2] overflows even sooner."""
    import keras

    from training.network.realtime_network import PrescaledConditionalInstanceNorm

    image = photo(96, 96, "astronaut.jpg")[0]
    x = (image @ np.array([[600.0, -160.0], [240.0, 400.0], [-100.0, 300.0]], np.float32))[None] + 200.0  # (1, 96, 96, 2)
    x64 = x.astype(np.float64)
    assert np.abs(x64 - x64.mean((1, 2), keepdims=True)).max() > 256  # its centred squares exceed float16's range
    gamma = np.array([1.5, 0.5], np.float32).reshape(1, 1, 1, 2)
    beta = np.array([0.1, -0.2], np.float32).reshape(1, 1, 1, 2)
    want = gamma * (x64 - x64.mean((1, 2), keepdims=True)) / np.sqrt(x64.var((1, 2), keepdims=True) + 1e-3) + beta
    x16, gamma16, beta16 = x.astype(np.float16), gamma.astype(np.float16), beta.astype(np.float16)

    # Unscaled, the variance overflows to inf, rsqrt(inf) = 0, and the image collapses to beta.
    unscaled = keras.ops.convert_to_numpy(PrescaledConditionalInstanceNorm(prescale=1.0, dtype="float16")([x16, gamma16, beta16]))
    assert np.abs(unscaled.astype(np.float64) - want).max() > 1.0

    norm = PrescaledConditionalInstanceNorm(dtype="float16")
    got = keras.ops.convert_to_numpy(norm([x16, gamma16, beta16]))
    assert got.dtype == np.float16 and np.isfinite(got).all()
    np.testing.assert_allclose(got.astype(np.float64), want, atol=0.02)
    # A constant channel (variance far below eps) stays finite too: eps * prescale^2 is no float16 subnormal.
    flat = np.full((1, 32, 32, 1), 7.0, np.float16)
    out = keras.ops.convert_to_numpy(norm([flat, np.ones((1, 1, 1, 1), np.float16), np.zeros((1, 1, 1, 1), np.float16)]))
    assert np.isfinite(out).all() and np.abs(out).max() == 0.0


def test_tflite_cost_counts_convolution_flops(stylizer):
    """Analytic FLOPs per frame at 384x384: Magenta's published model and the realtime network's baked export."""
    from export.tf_graph import constant_module, make_module
    from export.tflite import convert, tflite_cost

    conv = lambda side, k, cin, cout: 2 * side * side * k * k * cin * cout  # noqa: E731 - output side x side
    published = (REPO / "models" / "magenta-published" / "style_transfer_f16_384.tflite").read_bytes()
    magenta = (conv(384, 9, 3, 8) + conv(192, 3, 8, 16) + conv(96, 3, 16, 32) + 10 * conv(96, 3, 32, 32)
               + conv(192, 3, 32, 16) + conv(384, 3, 16, 8) + conv(384, 9, 8, 3))
    style_params = 2 * 2 * 100 * (10 * 32 + 16 + 8 + 3)  # the 26 gamma/beta 1x1 convs of the bottleneck
    cost = tflite_cost(published)
    assert cost.flops == magenta + style_params
    assert cost.largest_activation_bytes == 386 * 386 * 16 * 4  # the reflect-padded full-resolution 16 channels of expand/conv2

    # The configured design: the photo reflect-padded to 416 for the stem and the residual blocks (cropped to
    # 96 after them), two 2x2 stride-2 transposed convs (to 24, then 8 channels) around the separable block
    # at 192, and the 5x5 conv to RGB at 384.
    separable = lambda side, c: 2 * side * side * 9 * c + conv(side, 1, c, c)  # noqa: E731
    realtime = (conv(208, 3, 3, 16) + conv(104, 3, 16, 48) + 10 * separable(104, 48)
                + 2 * 96 * 96 * 48 * 4 * 24 + separable(192, 24) + 2 * 192 * 192 * 24 * 4 * 8 + conv(384, 5, 8, 3))
    baked = convert(constant_module(make_module("baked", stylizer, 384, 384, bottleneck(0))), "serve", fp16=True)
    assert tflite_cost(baked).flops == realtime
