"""The Keras network is Magenta's: names, shapes and layer maths."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from helpers import REPO
from training.network.layers import ConditionalInstanceNorm, ReflectPadConv2D, fold_groups, magenta_scope
from training.network.magenta_network import build_transfer_network, cin_scopes

PUBLISHED_TRANSFER = REPO / "models" / "magenta-published" / "style_transfer_f16_384.tflite"


def published_weight_shapes() -> dict[str, tuple]:
    """Magenta's conv weight tensors in the published TFLite transfer model, as HWIO shapes."""
    shapes = {}
    for detail in Interpreter(model_path=str(PUBLISHED_TRANSFER)).get_tensor_details():
        name = detail["name"]
        if name.endswith("/weights"):
            o, h, w, i = detail["shape"]  # TFLite stores conv filters OHWI
            shapes[name[: -len("/weights")]] = (h, w, i, o)
    return shapes


def test_lite_network_has_magentas_scopes_and_shapes():
    published = published_weight_shapes()
    model = build_transfer_network(alpha=0.25)
    ours = {magenta_scope(l): tuple(l.kernel.shape) for l in model.layers if isinstance(l, keras.layers.Conv2D)}
    assert len(published) == 42  # 16 transformer convs + 26 style_params convs
    assert ours == published


def test_thirteen_conditional_norms_with_magentas_depths():
    assert list(cin_scopes(1.0).values()) == [128] * 10 + [64, 32, 3]
    model = build_transfer_network(alpha=1.0)
    norms = [l for l in model.layers if isinstance(l, ConditionalInstanceNorm)]
    assert len(norms) == 13


def test_reflect_pad_conv_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 7, 6, 2)).astype(np.float32)
    layer = ReflectPadConv2D(3, 3, strides=2)
    y = keras.ops.convert_to_numpy(layer(x))
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    k = keras.ops.convert_to_numpy(layer.kernel)
    expected = np.zeros((1, 4, 3, 3), np.float32)
    for i in range(4):
        for j in range(3):
            patch = padded[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            expected[0, i, j] = np.einsum("hwc,hwco->o", patch, k)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert layer.compute_output_shape((1, 7, 6, 2)) == y.shape


def _magentas_instance_norm(x, gamma, beta):
    mean = x.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    var = x.var(axis=(1, 2), keepdims=True, dtype=np.float64)  # biased, as tf.nn.moments
    return gamma * (x - mean) / np.sqrt(var + 1e-5) + beta


@pytest.mark.parametrize("training", [False, True])
def test_conditional_instance_norm_is_magentas_formula(training):
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(2, 5, 4, 3)).astype(np.float32)
    gamma = rng.normal(size=(2, 1, 1, 3)).astype(np.float32)
    beta = rng.normal(size=(2, 1, 1, 3)).astype(np.float32)
    y = keras.ops.convert_to_numpy(ConditionalInstanceNorm()([x, gamma, beta], training=training))
    np.testing.assert_allclose(y, _magentas_instance_norm(x, gamma, beta), rtol=1e-4, atol=1e-4)


def test_conditional_instance_norm_inference_is_exact_far_from_zero():
    # Training takes both moments in one pass (E[x^2] - E[x]^2); inference, which export traces,
    # keeps the two-pass variance, exact even when the mean dwarfs the spread.
    rng = np.random.default_rng(2)
    x = rng.normal(3000.0, 1.0, size=(1, 16, 16, 4)).astype(np.float32)
    gamma, beta = np.ones((1, 1, 1, 4), np.float32), np.zeros((1, 1, 1, 4), np.float32)
    expected = _magentas_instance_norm(x, gamma, beta)
    inference = keras.ops.convert_to_numpy(ConditionalInstanceNorm()([x, gamma, beta], training=False))
    np.testing.assert_allclose(inference, expected, atol=2e-3)
    training = keras.ops.convert_to_numpy(ConditionalInstanceNorm()([x, gamma, beta], training=True))
    assert np.abs(training - expected).max() > 1e-2  # the one-pass form's cancellation, why export avoids it


@pytest.mark.parametrize("shape", [(2, 8, 6, 5), (3, 5, 7, 4), (2, 16, 16, 600)])
def test_conditional_instance_norm_training_view_has_inferences_values_and_gradients(shape):
    # Training normalises a folded view (G pixels side by side, for the GPU's reductions); its values
    # and gradients must be those of the plain form that inference and export use.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradients are checked with tf.GradientTape")
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = tf.Variable(rng.normal(0.5, 2.0, size=shape).astype(np.float32))
    gamma = tf.Variable(rng.normal(size=(shape[0], 1, 1, shape[3])).astype(np.float32))
    beta = tf.Variable(rng.normal(size=(shape[0], 1, 1, shape[3])).astype(np.float32))
    weights = tf.constant(rng.normal(size=shape).astype(np.float32))  # a loss that weighs every output

    def values_and_gradients(training):
        with tf.GradientTape() as tape:
            y = ConditionalInstanceNorm()([x, gamma, beta], training=training)
            loss = tf.reduce_sum(y * weights)
        return [y.numpy()] + [g.numpy() for g in tape.gradient(loss, [x, gamma, beta])]

    for plain, folded in zip(values_and_gradients(False), values_and_gradients(True)):
        np.testing.assert_allclose(folded, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())


def test_fold_groups_divides_the_pixels_and_caps_the_channels():
    assert fold_groups(8 * 6, 5) == 16  # the test above folds: (2, 48, 5) -> (2, 3, 80)
    assert fold_groups(5 * 7, 4) == 1  # an odd pixel count: no fold
    assert fold_groups(16 * 16, 600) == 1  # channels alone reach the cap
    assert fold_groups(64 * 64, 32) == 16  # the lite model's residual blocks at 256x256
    assert fold_groups(256 * 256, 8) == 64


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_transfer_network_keeps_size_and_outputs_in_unit_range(size, real_photo):
    model = build_transfer_network(alpha=0.25)
    photo = real_photo[None, : size[0], : size[1]]
    bottleneck = np.random.default_rng(0).normal(size=(1, 1, 1, 100)).astype(np.float32)
    y = keras.ops.convert_to_numpy(model([photo, bottleneck]))
    assert y.shape == photo.shape
    assert 0.0 <= y.min() and y.max() <= 1.0


def test_saved_stylizer_reloads_in_safe_mode_with_same_output(tmp_path, real_photo):
    model = build_transfer_network(alpha=0.25)
    photo = real_photo[None, :64, :64]
    bottleneck = np.ones((1, 1, 1, 100), np.float32)
    path = tmp_path / "transfer.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded([photo, bottleneck])),
        keras.ops.convert_to_numpy(model([photo, bottleneck])),
        atol=1e-6,
    )


@pytest.mark.parametrize("model", ["magenta_lite", "realtime"])
def test_a_stylizer_trained_in_mixed_precision_loads_computing_in_float32(tmp_path, real_photo, model):
    """A model.keras written by a bf16 GPU run (layers saved with the mixed_bfloat16 policy) loads as
    float32 layers with the same weights: what export, stylize and a teacher need (a bf16 graph would
    hold Cast ops and lose precision)."""
    from helpers import CACHE_DIR, compose_train
    from training.network.stylizer import build_stylizer, load_stylizer

    cfg = compose_train([f"model={model}", "backbone.weights=null", "experiment=smoke"], tmp_path)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        trained = build_stylizer(cfg.model, cfg.backbone, CACHE_DIR)
    finally:
        keras.config.set_dtype_policy(previous)
    trained.save(tmp_path / "model.keras")

    loaded = load_stylizer(tmp_path / "model.keras")
    policies = {layer.dtype_policy.name for part in ("transformer", "style_predictor")
                for layer in loaded.get_layer(part).layers}
    assert policies == {"float32"}
    reference = build_stylizer(cfg.model, cfg.backbone, CACHE_DIR)  # float32, the trained weights
    reference.set_weights(trained.get_weights())
    images = {"content": real_photo[None, :64, :64], "style": real_photo[None, :64, :64]}
    stylized = loaded(images)
    assert keras.backend.standardize_dtype(stylized.dtype) == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stylized), keras.ops.convert_to_numpy(reference(images)),
                               atol=1e-5)


def test_alpha_must_be_positive():
    with pytest.raises(ValueError, match="model.alpha"):
        build_transfer_network(alpha=0.0)


def test_nearest_upsample_repeats_pixels(real_photo):
    from training.network.layers import NearestUpsample

    x = real_photo[None, :24, :20]
    expected = x.repeat(2, axis=1).repeat(2, axis=2)
    # Inference (a resize, for export) and training (a repeat, for a cheap gradient): the same pixels.
    for training in (False, True):
        y = keras.ops.convert_to_numpy(NearestUpsample(2)(x, training=training))
        np.testing.assert_array_equal(y, expected)
