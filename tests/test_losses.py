"""Magenta's loss terms against direct numpy formulas."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np

from helpers import REPO
from training.objective import losses


def as_np(x):
    return keras.ops.convert_to_numpy(x)


def test_gram_matrix_is_ft_f_over_hw():
    f = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    flat = f.reshape(2, 12, 5)
    expected = np.einsum("bnc,bnd->bcd", flat, flat) / 12.0
    np.testing.assert_allclose(as_np(losses.gram_matrix(f)), expected, rtol=1e-5)


def test_total_variation_matches_magentas_normalisation():
    x = np.random.default_rng(1).random((2, 5, 6, 3)).astype(np.float32)
    dy, dx = x[:, 1:] - x[:, :-1], x[:, :, 1:] - x[:, :, :-1]
    expected = ((dy**2).sum() / 2 / (4 * 6 * 3) + (dx**2).sum() / 2 / (5 * 5 * 3)) / 2
    np.testing.assert_allclose(float(losses.total_variation_loss(x)), expected, rtol=1e-5)
    assert float(losses.total_variation_loss(np.ones((1, 4, 4, 3), np.float32))) == 0.0


def test_gram_of_a_tiny_tensor_by_hand():
    """One image, 2x1 pixels, 2 channels: pixels (1, 2) and (3, 4). G = F^T F / (H W) = [[10, 14], [14, 20]] / 2."""
    f = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]]], np.float32)  # (1, 2, 1, 2)
    np.testing.assert_allclose(as_np(losses.gram_matrix(f))[0], [[5.0, 7.0], [7.0, 10.0]], rtol=1e-6)


def test_relative_squared_error_by_hand():
    """Per example |a - t|^2 / |t|^2, then the batch mean: (1 + 4) / (9 + 16) = 0.2 and 0 / 4 = 0 -> 0.1."""
    values = np.array([[4.0, 2.0], [2.0, 0.0]], np.float32)
    targets = np.array([[3.0, 4.0], [2.0, 0.0]], np.float32)
    assert float(losses.relative_squared_error(values, targets)) == np.float32(0.1)
    # One target for a whole batch (one style image): broadcast over the examples.
    np.testing.assert_allclose(float(losses.relative_squared_error(values, targets[:1])), (0.2 + (1 + 16) / 25) / 2, rtol=1e-6)


def test_style_loss_is_the_weighted_sum_of_per_layer_relative_gram_errors():
    rng = np.random.default_rng(2)
    a = {k: rng.normal(size=(2, 4, 4, c)).astype(np.float32) for k, c in (("conv1", 2), ("conv2", 3))}
    b = {k: rng.normal(size=(1, 4, 4, v.shape[-1])).astype(np.float32) for k, v in a.items()}
    grams_b = {k: as_np(losses.gram_matrix(v)) for k, v in b.items()}
    weights = {"conv1": 0.5, "conv2": 2.0}

    def by_hand(k):
        flat = a[k].reshape(2, 16, -1)
        gram = np.einsum("bnc,bnd->bcd", flat, flat) / 16
        return np.mean(((gram - grams_b[k]) ** 2).sum((1, 2)) / (grams_b[k] ** 2).sum())

    expected = 0.5 * by_hand("conv1") + 2.0 * by_hand("conv2")
    np.testing.assert_allclose(float(losses.style_loss(a, grams_b, weights)), expected, rtol=1e-5)
    # Each layer counts the same whatever its features' magnitude: scaling a layer's features scales nothing.
    scaled = {**a, "conv2": 100.0 * a["conv2"]}
    scaled_targets = {**grams_b, "conv2": 1e4 * grams_b["conv2"]}
    np.testing.assert_allclose(float(losses.style_loss(scaled, scaled_targets, weights)), expected, rtol=1e-4)
    assert float(losses.style_loss(b, grams_b, {"conv1": 1.0, "conv2": 1.0})) < 1e-10


def test_content_loss_is_relative_to_the_photo_features():
    rng = np.random.default_rng(3)
    a = {"conv3": rng.normal(size=(2, 4, 3, 5)).astype(np.float32)}
    b = {"conv3": rng.normal(size=(2, 4, 3, 5)).astype(np.float32)}
    per_example = ((a["conv3"] - b["conv3"]) ** 2).sum((1, 2, 3)) / (b["conv3"] ** 2).sum((1, 2, 3))
    np.testing.assert_allclose(float(losses.content_loss(a, b, {"conv3": 3.0})), 3.0 * per_example.mean(), rtol=1e-5)


def test_style_strength_multiplies_every_style_layer_weight():
    from training.objective.objective import StylizationObjective

    objective = StylizationObjective(None, None, {"conv3": 1.0}, {"conv1": 0.1, "conv4": 0.2}, 10.0, style_strength=5)
    assert objective.style_weights == {"conv1": 0.5, "conv4": 1.0}
    assert objective.content_weights == {"conv3": 1.0}


BF16_GRAM = """
import jax, jax.numpy as jnp, numpy as np
from training.objective.losses import gram_matrix
f = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16, 16, 8)), jnp.bfloat16)
gram = gram_matrix(f)
flat = np.asarray(f, np.float64).reshape(2, 256, 8)
exact = np.einsum("bnc,bnd->bcd", flat, flat) / 256
grad = jax.grad(lambda f: jnp.sum(gram_matrix(f) ** 2))(f)
exact_grad = 4 * np.einsum("bnc,bcd->bnd", flat, exact) / 256  # d/dF sum(G^2), G = F^T F / N: F (4 G) / N
grad_error = float(np.abs(np.asarray(grad, np.float64).reshape(2, 256, 8) - exact_grad).max() / np.abs(exact_grad).max())
# The one-product gradient equals autodiff's, also for a loss that is not symmetric in the Gram.
f32 = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 5, 4)), jnp.float32)
weights = jnp.asarray(np.random.default_rng(6).normal(size=(2, 4, 4)), jnp.float32)
ours = jax.grad(lambda f: jnp.sum(gram_matrix(f) * weights))(f32)
autodiff = jax.grad(lambda f: jnp.sum(jnp.einsum("bhwc,bhwd->bcd", f, f) / 30 * weights))(f32)
print(gram.dtype, float(np.abs(np.asarray(gram) - exact).max() / np.abs(exact).max()), grad.dtype,
      grad_error, float(np.abs(ours - autodiff).max() / np.abs(autodiff).max()))
"""


def test_bf16_features_make_a_float32_gram_on_jax():
    """bf16 operands, float32 accumulation and result: within float32 rounding of the exact product
    (a bf16 result would be off by ~1e-3); the bf16 gradient is within bf16 rounding of the exact one
    and the one-product gradient is autodiff's."""
    result = subprocess.run([sys.executable, "-c", BF16_GRAM], cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    dtype, error, grad_dtype, grad_error, gradient_error = result.stdout.split()
    assert dtype == "float32" and float(error) < 1e-6
    assert grad_dtype == "bfloat16" and float(grad_error) < 1e-2  # bf16 rounding of operands and result
    assert float(gradient_error) < 1e-6
