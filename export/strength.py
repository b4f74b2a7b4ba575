"""The `strength` input of the baked exports: how much of the baked style, from 0 (neutral) to 1 (full).

A transfer network's style acts only through its conditional instance norms, whose gamma and beta are
linear 1x1 convolutions of the (1, 1, 1, 100) style bottleneck (Magenta's `style_params`; the realtime
network has the same). Blending the bottleneck, b(s) = neutral + s (style - neutral), therefore blends
every norm's parameters the same way: gamma(s) = gamma_n + s (gamma_style - gamma_n), likewise beta.

`fold_strength` rewires a transformer so that each layer reading the bottleneck is replaced by that
multiply-add with the strength, its two constants evaluated once: a 1x1 convolution of the (1, 1, 1, 1)
strength with kernel gamma_style - gamma_n and bias gamma_n. The baked network keeps none of the 100-d
`style_params` convolutions. A convolution rather than a MUL + ADD: the GPU delegate runs a MUL of a
runtime tensor by a constant at the runtime tensor's shape, and the (1, 1, 1, 1) strength is smaller
than the (1, 1, 1, C) result; a 1x1 CONV_2D (and Core ML's conv) broadcasts it the right way.

The neutral bottleneck is the mean of the model's own style predictor's bottlenecks over real photos
(data/samples/content): Magenta interpolates towards a photo's own bottleneck, and the mean over many
photos is the "photo style" one baked model can carry for every photo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from training.errors import StylepipeError
from training.network.layers import BOTTLENECK_DIM

log = logging.getLogger("stylepipe.export")

STRENGTH_INPUT = "strength"             # the input's name in every format, shape [1], float32
STRENGTH_SHAPE = (1,)
STRENGTH_DEFAULT = 1.0                  # full style: what the baked model without the input computes
PARITY_STRENGTHS = (0.0, 0.5, 1.0)      # the strengths every export is checked at
STRENGTH_SIGNATURE = "serve_strength"   # TFLite has no input defaults: `serve` stays strength 1, this one takes it
PREDICTOR_BATCH = 8                     # photos per predictor call (memory, not results)


def blend(neutral: np.ndarray, style: np.ndarray, strength: float) -> np.ndarray:
    """The bottleneck at `strength`: neutral + strength (style - neutral), (1, 1, 1, 100) float32."""
    neutral, style = (np.asarray(b, np.float32).reshape(1, 1, 1, BOTTLENECK_DIM) for b in (neutral, style))
    return (neutral + np.float32(strength) * (style - neutral)).astype(np.float32)


def strength_input(default: float | None, signature: str | None = None) -> dict:
    """A baked artifact's `strength` in the manifest: its input, range and default (None: it must be given)."""
    described = {"input": STRENGTH_INPUT, "shape": list(STRENGTH_SHAPE), "range": [0.0, 1.0], "default": default}
    if signature is not None:
        described["signature"] = signature
    return described


class StrengthFoldError(StylepipeError):
    """A transfer network whose bottleneck feeds something other than linear 1x1 convolutions."""


def _is_linear_1x1(layer) -> bool:
    return (isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)
            and layer.activation in (None, keras.activations.linear) and getattr(layer, "groups", 1) == 1)


def _linear_1x1(layer, bottleneck: np.ndarray) -> np.ndarray:
    """The layer's output for one bottleneck, in float32 whatever the layer's compute dtype."""
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float32)[0, 0]
    bias = keras.ops.convert_to_numpy(layer.bias).astype(np.float32) if layer.use_bias else 0.0
    return bottleneck.reshape(-1) @ kernel + bias


def fold_strength(transformer: keras.Model, neutral: np.ndarray, style: np.ndarray) -> keras.Model:
    """[content image, strength (B, 1, 1, 1)] -> stylized image, sharing `transformer`'s layers.

    Equal to `transformer([content, blend(neutral, style, strength)])`; works for any transformer
    whose bottleneck input feeds only linear 1x1 convolutions (StrengthFoldError otherwise).
    """
    content = keras.Input(shape=transformer.inputs[0].shape[1:], name="content_image")
    strength = keras.Input(shape=(1, 1, 1), name=STRENGTH_INPUT)
    neutral, style = (np.asarray(b, np.float32).reshape(1, 1, 1, BOTTLENECK_DIM) for b in (neutral, style))
    folded = []

    # In the clone the strength input takes the bottleneck input's place: a layer called on it is one
    # that read the bottleneck, and is replaced by its blend.
    def call(layer, *args, **kwargs):
        reads_bottleneck = any(t is strength for t in keras.tree.flatten((args, kwargs)))
        if not reads_bottleneck:
            return layer(*args, **kwargs)
        if not (_is_linear_1x1(layer) and args and args[0] is strength):
            raise StrengthFoldError(f"{transformer.name}: layer {layer.name} ({type(layer).__name__}) reads the style "
                                    "bottleneck and is not a linear 1x1 convolution: strength cannot be folded into it")
        at_neutral, at_style = (_linear_1x1(layer, b) for b in (neutral, style))
        blend_conv = keras.layers.Conv2D(at_neutral.shape[-1], 1, dtype=layer.dtype_policy, name=f"strength.{layer.name}")
        blend_conv.build((None, 1, 1, 1))
        blend_conv.set_weights([(at_style - at_neutral).reshape(1, 1, 1, -1), at_neutral.reshape(-1)])
        folded.append(layer.name)
        return blend_conv(args[0])

    model = keras.models.clone_model(transformer, input_tensors=[content, strength],
                                     clone_function=lambda layer: layer, call_function=call)
    if not folded:
        raise StrengthFoldError(f"{transformer.name}: no layer reads the style bottleneck: nothing for strength to blend")
    return model


@dataclass
class NeutralBottleneck:
    """Strength 0 of the baked models: the mean style bottleneck of real photos."""

    values: np.ndarray          # (1, 1, 1, 100) float32
    photos_dir: str
    photos: int                 # photos averaged
    skipped: list[str]          # unreadable files, with why

    def manifest(self) -> dict:
        return {"source": f"mean style bottleneck of the model's style predictor over the photos in {self.photos_dir}",
                "photos_dir": self.photos_dir, "photos": self.photos, "skipped": self.skipped,
                "values": [round(float(v), 7) for v in self.values.reshape(-1)]}


def neutral_bottleneck(predictor: keras.Model, photos_dir, style_size: int) -> NeutralBottleneck:
    """The mean of `predictor`'s bottlenecks over every photo in `photos_dir` (short side to `style_size`,
    centre crop, as a style image is fed); unreadable photos are skipped and named."""
    from training.data.datasets import DataError, find_images, load_image, style_crop

    crops, skipped = [], []
    for path in find_images(photos_dir, "export.neutral_photos"):
        try:
            crops.append(style_crop(load_image(path), style_size))
        except DataError as err:
            skipped.append(str(err))
    for reason in skipped:
        log.warning("neutral bottleneck: skipped %s", reason)
    if not crops:
        raise StylepipeError(f"export.neutral_photos={photos_dir}: no readable photo to average (the baked models' "
                             "strength 0); point it at a folder of photos")
    total = np.zeros((1, 1, 1, BOTTLENECK_DIM), np.float64)
    for start in range(0, len(crops), PREDICTOR_BATCH):
        batch = np.stack(crops[start:start + PREDICTOR_BATCH]).astype(np.float32)
        total += keras.ops.convert_to_numpy(predictor(batch, training=False)).astype(np.float64).sum(axis=0, keepdims=True)
    values = (total / len(crops)).astype(np.float32)
    log.info("neutral bottleneck (strength 0): mean of %d photos in %s", len(crops), photos_dir)
    return NeutralBottleneck(values, str(Path(photos_dir)), len(crops), skipped)
