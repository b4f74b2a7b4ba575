"""Magenta's loss terms against direct numpy formulas."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np

from tests.conftest import REPO
from training import losses


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


def test_style_and_content_losses_are_weighted_sums():
    rng = np.random.default_rng(2)
    a = {"conv1": rng.normal(size=(1, 4, 4, 2)).astype(np.float32)}
    b = {"conv1": rng.normal(size=(1, 4, 4, 2)).astype(np.float32)}
    content = float(losses.content_loss(a, b, {"conv1": 2.0}))
    np.testing.assert_allclose(content, 2.0 * ((a["conv1"] - b["conv1"]) ** 2).mean(), rtol=1e-5)
    grams_b = {"conv1": losses.gram_matrix(b["conv1"])}
    style = float(losses.style_loss(a, grams_b, {"conv1": 0.5e-3}))
    expected = 0.5e-3 * ((as_np(losses.gram_matrix(a["conv1"])) - as_np(grams_b["conv1"])) ** 2).mean()
    np.testing.assert_allclose(style, expected, rtol=1e-5)
    assert float(losses.style_loss(b, grams_b, {"conv1": 1.0})) < 1e-10


def test_feature_scale_multiplies_the_features():
    rng = np.random.default_rng(3)
    a = {"conv1": rng.normal(size=(2, 4, 3, 5)).astype(np.float32)}
    b = {"conv1": rng.normal(size=(2, 4, 3, 5)).astype(np.float32)}
    scaled = lambda f: {k: 57.8 * v for k, v in f.items()}  # noqa: E731
    np.testing.assert_allclose(as_np(losses.gram_matrix(a["conv1"], 57.8)), as_np(losses.gram_matrix(57.8 * a["conv1"])),
                               rtol=1e-5)
    np.testing.assert_allclose(float(losses.content_loss(a, b, {"conv1": 1.0}, 57.8)),
                               float(losses.content_loss(scaled(a), scaled(b), {"conv1": 1.0})), rtol=1e-5)
    grams = {"conv1": losses.gram_matrix(b["conv1"], 57.8)}
    np.testing.assert_allclose(float(losses.style_loss(a, grams, {"conv1": 1.0}, 57.8)),
                               float(losses.style_loss(scaled(a), {"conv1": losses.gram_matrix(scaled(b)["conv1"])},
                                                       {"conv1": 1.0})), rtol=1e-5)


BF16_GRAM = """
import jax, jax.numpy as jnp, numpy as np
from training.losses import gram_matrix
f = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16, 16, 8)), jnp.bfloat16)
gram = gram_matrix(f, 2.0)
flat = np.asarray(f, np.float64).reshape(2, 256, 8)
exact = 4.0 * np.einsum("bnc,bnd->bcd", flat, flat) / 256
grad = jax.grad(lambda f: jnp.sum(gram_matrix(f) ** 2))(f)
exact_grad = np.einsum("bnc,bcd->bnd", flat, exact) / 256  # d/dF sum(G^2), G = F^T F / N: F (4 G) / N; exact is 4 G
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
