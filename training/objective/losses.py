"""The stylization losses on VGG-16 endpoints, computed in float32 whatever the training precision.

Magenta's layers and Gram matrices (`arbitrary_image_stylization_losses.py`), with each layer's error
taken relative to its target (docs/objective.md explains why):
- content: |F(stylized) - F(photo)|^2 / |F(photo)|^2 at the content layers (conv3);
- style: |G(stylized) - G(style)|^2 / |G(style)|^2 per style layer (conv1..conv4), G = F^T F / (H W);
- total variation: Magenta's (l2(dy) / ((H-1) W C) + l2(dx) / (H (W-1) C)) / B, l2 = sum of squares / 2.
Each per-example ratio is averaged over the batch.
"""

from __future__ import annotations

import functools

import keras
from keras import ops


def gram_matrix(features):
    """(B, H, W, C) -> (B, C, C) float32 Gram matrices F^T F / (H W) of the features.

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
    return gram / ops.cast(shape[1] * shape[2], "float32")


@functools.cache
def _jax_gram():
    """(B, N, C) -> float32 (B, C, C) F^T F with a one-product gradient F (G + G^T).

    Autodiff would differentiate each operand of F^T F on its own: two (B, N, C) products and
    their sum, where the largest (conv1's 65536 x 64 per image) are memory-bound.
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
        # model's step at batch 64 on an H200; the bf16 one trains it 1.02x faster.
        symmetric = (cotangent + jnp.swapaxes(cotangent, 1, 2)).astype(flat.dtype)
        return (jnp.einsum("bnc,bcd->bnd", flat, symmetric, preferred_element_type=jnp.float32).astype(flat.dtype),)

    gram.defvjp(forward, backward)
    return gram


def relative_squared_error(values, targets):
    """Mean over the batch of |values - targets|^2 / |targets|^2, each example summed over its other axes.

    Scale-free: a layer whose features are small counts as much as one whose features are large, and a
    dark painting's style as much as a bright one's. `targets` may have a batch of 1 (one style for all).
    """
    values, targets = ops.cast(values, "float32"), ops.cast(targets, "float32")
    axes = tuple(range(1, len(values.shape)))
    error = ops.sum(ops.square(values - targets), axis=axes)
    return ops.mean(error / (ops.sum(ops.square(targets), axis=axes) + 1e-12))


def content_loss(stylized_features: dict, content_features: dict, weights: dict):
    """Weighted relative error of the stylized image's features against the photo's."""
    return sum(w * relative_squared_error(stylized_features[k], content_features[k]) for k, w in weights.items())


def style_loss(stylized_features: dict, style_grams: dict, weights: dict):
    """Weighted relative error of the stylized image's Gram matrices against the style targets."""
    return sum(w * relative_squared_error(gram_matrix(stylized_features[k]), style_grams[k]) for k, w in weights.items())


def total_variation_loss(images):
    images = ops.cast(images, "float32")
    shape = ops.shape(images)
    b, h, w, c = (ops.cast(s, "float32") for s in (shape[0], shape[1], shape[2], shape[3]))
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    y_loss = ops.sum(ops.square(dy)) / 2.0 / ((h - 1.0) * w * c)
    x_loss = ops.sum(ops.square(dx)) / 2.0 / (h * (w - 1.0) * c)
    return (y_loss + x_loss) / b
