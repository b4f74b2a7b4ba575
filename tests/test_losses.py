"""Magenta's loss terms against direct numpy formulas."""

from __future__ import annotations

import keras
import numpy as np

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
