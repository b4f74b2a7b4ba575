"""Magenta's style colour augmentation (brightness, saturation, hue), applied on the device.

The host draws each style crop's three parameters with its crop (`draw`); the objective applies
them to the batch (`jitter_colours`). Colour jitter is per-pixel arithmetic: in NumPy on the host it
took most of a style crop's time, and arbitrary-style training on the real pipeline ran at 613
images/s, a quarter of what one H200 consumes. Moved here, the pipeline made 2.7-2.9x more on 2 CPUs
and the step is 0.2% slower (docs/performance.md).
"""

from __future__ import annotations

import numpy as np
from keras import ops

BRIGHTNESS_MAX_DELTA = 0.8  # tf.image.random_brightness(max_delta=0.8)
SATURATION_RANGE = (0.5, 1.5)  # tf.image.random_saturation(0.5, 1.5)
HUE_MAX_DELTA = 0.2  # tf.image.random_hue(max_delta=0.2)


def draw(rng: np.random.Generator) -> np.ndarray:
    """One crop's parameters: float32 [brightness delta, saturation factor, hue delta]."""
    return np.array([rng.uniform(-BRIGHTNESS_MAX_DELTA, BRIGHTNESS_MAX_DELTA), rng.uniform(*SATURATION_RANGE),
                     rng.uniform(-HUE_MAX_DELTA, HUE_MAX_DELTA)], np.float32)


def jitter_colours(images, params):
    """Images (B, H, W, 3) in [0, 1], params (B, 3) from `draw` -> float32 images in [0, 1].

    Per example: add the brightness delta and clip to [0, 1], then tf.image.adjust_saturation and
    adjust_hue (HSV: s *= saturation, clipped; h += hue), fused without a full HSV round trip.
    """
    params = ops.cast(params, "float32")
    brightness, saturation, hue = (ops.reshape(params[:, i], (-1, 1, 1)) for i in range(3))
    x = ops.clip(ops.cast(images, "float32") + brightness[..., None], 0.0, 1.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = ops.maximum(ops.maximum(r, g), b)
    delta = v - ops.minimum(ops.minimum(r, g), b)
    inv = (1 / 6) / ops.where(delta > 0, delta, 1.0)
    h = ops.where(v == r, (g - b) * inv, ops.where(v == g, (b - r) * inv + 1 / 3, (r - g) * inv + 2 / 3))
    h6 = (h + hue) * 6
    chroma = ops.minimum(delta * saturation, v)  # v * clip(s * saturation, 0, 1)
    channels = []
    for offset in (5, 3, 1):  # hsv -> rgb: c = v - chroma * clip(min(k, 4 - k), 0, 1), k = (h6 + offset) mod 6
        k = h6 + offset
        k = k - 6 * ops.floor(k / 6)
        channels.append(v - chroma * ops.clip(ops.minimum(k, 4 - k), 0.0, 1.0))
    return ops.stack(channels, axis=-1)
