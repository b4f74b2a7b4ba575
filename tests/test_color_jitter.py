"""Magenta's style colour augmentation on the device (training/data/color_jitter.py) against TensorFlow's image ops."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, STYLE_DIR
from training.data.color_jitter import BRIGHTNESS_MAX_DELTA, HUE_MAX_DELTA, SATURATION_RANGE, draw, jitter_colours
from training.data.datasets import load_image, style_crop

# Each row one example of the batch: the range's ends, and values in between.
PARAMS = np.array([[0.3, 0.5, -0.2], [-0.5, 1.5, 0.2], [0.0, 1.1, 0.05], [0.8, 0.7, -0.13]], np.float32)

ON_JAX = """
import sys
import numpy as np
from keras import ops
from training.data.color_jitter import jitter_colours
images, params = np.load(sys.argv[1]), np.load(sys.argv[2])
np.save(sys.argv[3], ops.convert_to_numpy(jitter_colours(images, params)))
"""


@pytest.fixture(scope="module")
def crops():
    """Four real paintings' 64-pixel crops, in [0, 1]."""
    paths = sorted(STYLE_DIR.glob("*.jpg"))[:4]
    return np.stack([style_crop(load_image(p), 64) for p in paths])


def tensorflow_jitter(image, brightness, saturation, hue):
    """Magenta's order with TensorFlow's ops: brightness (clipped to [0, 1]), saturation, hue."""
    import tensorflow as tf

    x = tf.clip_by_value(tf.image.adjust_brightness(image, brightness), 0.0, 1.0)
    return tf.image.adjust_hue(tf.image.adjust_saturation(x, saturation), hue).numpy()


def test_each_example_gets_its_own_jitter_as_tensorflow_computes_it(crops):
    from keras import ops

    expected = np.stack([tensorflow_jitter(image, *params) for image, params in zip(crops, PARAMS)])
    out = ops.convert_to_numpy(jitter_colours(crops, PARAMS))
    assert out.dtype == np.float32 and out.shape == crops.shape
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.abs(out - crops).max() > 0.3  # the jitter changed the colours


def test_uint8_crops_made_float_on_the_device_jitter_alike(crops):
    """What the objective does with uint8 batches: unit_float, then the jitter."""
    from keras import ops

    from training.objective.objective import unit_float

    quantised = np.round(crops * 255).astype(np.uint8)
    out = ops.convert_to_numpy(jitter_colours(unit_float(ops.convert_to_tensor(quantised)), PARAMS))
    expected = np.stack([tensorflow_jitter(image / np.float32(255), *params) for image, params in zip(quantised, PARAMS)])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_the_jax_backend_jitters_alike(crops, tmp_path):
    np.save(tmp_path / "images.npy", crops)
    np.save(tmp_path / "params.npy", PARAMS)
    result = subprocess.run([sys.executable, "-c", ON_JAX, *(str(tmp_path / f) for f in ("images.npy", "params.npy", "out.npy"))],
                            cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = np.stack([tensorflow_jitter(image, *params) for image, params in zip(crops, PARAMS)])
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)


def test_drawn_parameters_cover_magentas_ranges():
    rng = np.random.default_rng(0)
    drawn = np.stack([draw(rng) for _ in range(2000)])
    assert drawn.dtype == np.float32
    for column, (lo, hi) in enumerate([(-BRIGHTNESS_MAX_DELTA, BRIGHTNESS_MAX_DELTA), SATURATION_RANGE,
                                       (-HUE_MAX_DELTA, HUE_MAX_DELTA)]):
        assert lo <= drawn[:, column].min() < lo + 0.02 * (hi - lo)
        assert hi - 0.02 * (hi - lo) < drawn[:, column].max() <= hi
