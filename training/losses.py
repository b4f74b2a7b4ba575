"""Magenta's stylization losses (`arbitrary_image_stylization/arbitrary_image_stylization_losses.py`).

All computed in float32 on VGG-16 endpoints (times a feature scale), whatever the training precision:
- content: mean squared difference of features at the content layers (Magenta: conv3, weight 1);
- style: mean squared difference of Gram matrices F^T F / (H W) (conv1..conv4, 0.5e-3 each);
- total variation: (l2(dy) / ((H-1) W C) + l2(dx) / (H (W-1) C)) / B, l2 = sum of squares / 2.
"""

from __future__ import annotations

import functools

import keras
from keras import ops


def gram_matrix(features, scale: float = 1.0):
    """(B, H, W, C) -> (B, C, C) float32 Gram matrices of scale * features, normalised by H * W.

    On JAX, bf16/fp16 features stay the product's operands, accumulated and returned in float32
    (the tensor cores' rate at half the bytes of float32 operands), and the gradient is one
    product (`_jax_gram`). keras.ops has no accumulation type: other backends multiply in float32.
    """
    shape = ops.shape(features)
    flat = ops.reshape(features, (shape[0], shape[1] * shape[2], shape[3]))
    if keras.backend.backend() == "jax":
        gram = _jax_gram()(flat)
    else:
        flat = ops.cast(flat, "float32")
        gram = ops.matmul(ops.transpose(flat, (0, 2, 1)), flat)
    return gram * (scale * scale / ops.cast(shape[1] * shape[2], "float32"))


@functools.cache
def _jax_gram():
    """(B, N, C) -> float32 (B, C, C) F^T F with a one-product gradient F (G + G^T).

    Autodiff would differentiate each operand of F^T F on its own: two (B, N, C) products and
    their sum, where the largest (conv1's 65536 x 64 per image) are memory-bound (docs/benchmarks.md).
    """
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def gram(flat):
        return jnp.einsum("bnc,bnd->bcd", flat, flat, preferred_element_type=jnp.float32)

    def forward(flat):
        return gram(flat), flat

    def backward(flat, cotangent):
        # In the features' dtype, accumulated in float32: bf16 features give a bf16 product on the tensor
        # cores, as autodiff of a bf16 product would. The float32 product's kernels took 1.05 ms of the lite
        # model's step at batch 64 on an H200; the bf16 one trains it 1.02x faster (docs/benchmarks.md).
        symmetric = (cotangent + jnp.swapaxes(cotangent, 1, 2)).astype(flat.dtype)
        return (jnp.einsum("bnc,bcd->bnd", flat, symmetric, preferred_element_type=jnp.float32).astype(flat.dtype),)

    gram.defvjp(forward, backward)
    return gram


def mean_squared_difference(a, b):
    return ops.mean(ops.square(ops.cast(a, "float32") - ops.cast(b, "float32")))


def content_loss(stylized_features: dict, content_features: dict, weights: dict, scale: float = 1.0):
    """Content loss of scale * features (the features as they come, any dtype)."""
    return scale * scale * sum(w * mean_squared_difference(stylized_features[k], content_features[k]) for k, w in weights.items())


def style_loss(stylized_features: dict, style_grams: dict, weights: dict, scale: float = 1.0):
    """Style loss of scale * features against target Gram matrices made with the same scale."""
    return sum(w * mean_squared_difference(gram_matrix(stylized_features[k], scale), style_grams[k]) for k, w in weights.items())


def total_variation_loss(images):
    images = ops.cast(images, "float32")
    shape = ops.shape(images)
    b, h, w, c = (ops.cast(s, "float32") for s in (shape[0], shape[1], shape[2], shape[3]))
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    y_loss = ops.sum(ops.square(dy)) / 2.0 / ((h - 1.0) * w * c)
    x_loss = ops.sum(ops.square(dx)) / 2.0 / (h * (w - 1.0) * c)
    return (y_loss + x_loss) / b
