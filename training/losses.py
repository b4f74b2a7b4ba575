"""Magenta's stylization losses (`arbitrary_image_stylization/arbitrary_image_stylization_losses.py`).

All computed in float32 on VGG-16 endpoints, whatever the training precision:
- content: mean squared difference of features at the content layers (Magenta: conv3, weight 1);
- style: mean squared difference of Gram matrices F^T F / (H W) (conv1..conv4, 0.5e-3 each);
- total variation: (l2(dy) / ((H-1) W C) + l2(dx) / (H (W-1) C)) / B, l2 = sum of squares / 2.
"""

from __future__ import annotations

from keras import ops


def gram_matrix(features):
    """(B, H, W, C) -> (B, C, C) Gram matrices normalised by H * W."""
    features = ops.cast(features, "float32")
    shape = ops.shape(features)
    flat = ops.reshape(features, (shape[0], shape[1] * shape[2], shape[3]))
    return ops.matmul(ops.transpose(flat, (0, 2, 1)), flat) / ops.cast(shape[1] * shape[2], "float32")


def mean_squared_difference(a, b):
    return ops.mean(ops.square(ops.cast(a, "float32") - ops.cast(b, "float32")))


def content_loss(stylized_features: dict, content_features: dict, weights: dict):
    return sum(w * mean_squared_difference(stylized_features[k], content_features[k]) for k, w in weights.items())


def style_loss(stylized_features: dict, style_grams: dict, weights: dict):
    return sum(w * mean_squared_difference(gram_matrix(stylized_features[k]), style_grams[k]) for k, w in weights.items())


def total_variation_loss(images):
    images = ops.cast(images, "float32")
    shape = ops.shape(images)
    b, h, w, c = (ops.cast(s, "float32") for s in (shape[0], shape[1], shape[2], shape[3]))
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    y_loss = ops.sum(ops.square(dy)) / 2.0 / ((h - 1.0) * w * c)
    x_loss = ops.sum(ops.square(dx)) / 2.0 / (h * (w - 1.0) * c)
    return (y_loss + x_loss) / b
