"""The training objective as a Keras model: stylizer + frozen VGG-16 loss network.

Written with `keras.ops` and the standard `compute_loss`/`compute_metrics` hooks, so
`model.fit` trains it unchanged on the TensorFlow and JAX backends.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution  # not exported by keras 3.15

from training.objective import losses
from training.data.color_jitter import jitter_colours
from training.network.vgg16 import ENDPOINTS, vgg_features

LOSS_NAMES = ("content_loss", "style_loss", "tv_loss")
DISTILL_LOSS = "distill_loss"  # teacher.weight x the error against the teacher's images (with a teacher only)


def unit_float(images):
    """Images in [0, 1]: uint8 batches (trainer.input_dtype=uint8) become float32 here, on the device."""
    if keras.backend.standardize_dtype(images.dtype) == "uint8":
        return ops.cast(images, "float32") / 255.0
    return images


class StylizationObjective(keras.Model):
    """Calls the stylizer on {content, style} and returns its weighted loss terms.

    VGG-16 runs on the stylized images (differentiated) and, in calls of their own under
    stop_gradient, on the content and style images: the targets need no gradients (one stacked
    call would make autodiff compute input gradients through VGG-16 for all three, about a third
    of the step's FLOPs wasted), and each runs only as deep as its loss layers.
    """

    def __init__(self, stylizer, loss_network, content_weights, style_weights, tv_weight, style_strength=1.0,
                 distillation=None, **kwargs):
        super().__init__(name="stylization_objective", **kwargs)
        self.stylizer = stylizer
        self.loss_network = loss_network
        self.content_weights = dict(content_weights)
        # style.strength scales every style layer's weight: the one knob between the painting and the photo.
        self.style_weights = {k: float(w) * float(style_strength) for k, w in style_weights.items()}
        self.tv_weight = float(tv_weight)
        # training/objective/distillation.py's term against a frozen teacher, added to the perceptual loss (None: none).
        self.distillation = distillation
        self.loss_names = LOSS_NAMES + ((DISTILL_LOSS,) if distillation is not None else ())
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}
        self.style_gram_table: dict | None = None  # fix_style_targets

    @classmethod
    def from_config(cls, stylizer, loss_network, loss_cfg, style_strength: float = 1.0,
                    distillation=None) -> "StylizationObjective":
        """The objective with the loss weights of a `loss_network` config group and a style strength
        (and a distillation term, training/objective/distillation.py)."""
        return cls(stylizer, loss_network, content_weights=loss_cfg.content_weights, style_weights=loss_cfg.style_weights,
                   tv_weight=loss_cfg.total_variation_weight, style_strength=style_strength, distillation=distillation)

    def _features(self, images, endpoints):
        # In the compute dtype: the losses take float32 where it matters.
        return vgg_features(self.loss_network, images, endpoints)

    def _style_grams(self, style) -> dict:
        """The style targets: Gram matrices of the style images' features at the style layers."""
        features = self._features(style, self.style_weights)
        return {k: losses.gram_matrix(features[k]) for k in self.style_weights}

    def style_targets(self, style_images) -> dict:
        """{layer: (K, C, C) float32 NumPy Gram targets} of K style images, each of any size, one at a time
        (the memory of one VGG-16 pass); uint8 or [0, 1] floats."""
        compute_dtype = keras.mixed_precision.global_policy().compute_dtype
        grams = [self._style_grams(ops.cast(unit_float(ops.convert_to_tensor(image[None])), compute_dtype))
                 for image in style_images]
        return {k: np.concatenate([ops.convert_to_numpy(g[k]) for g in grams]) for k in self.style_weights}

    def style_gram_table_bytes(self, count: int) -> int:
        """Bytes of `fix_style_targets`' table for `count` style images, known before computing it:
        a float32 C x C Gram matrix per style layer and image."""
        channels = [self.loss_network.get_layer(ENDPOINTS[k]).filters for k in self.style_weights]
        return count * 4 * sum(c * c for c in channels)

    def fix_style_targets(self, style_images) -> None:
        """Style targets computed once: the Gram matrices of each fixed style image.

        style_images: K images (H, W, 3), each of any size, in [0, 1] or uint8, in the order of the
        batches' `style_index`. A style without augmentation is the same image in every example of every
        batch; VGG-16 then runs on it once here instead of on each batch's copies (about a third of
        VGG-16's forward work), and at the size style.texture_size gives it. Batches carrying
        `style_index` then take their targets from this table; batches without it still run VGG-16 on
        their style images.
        """
        self.style_gram_table = self.style_targets(style_images)
        # The table is a constant of the compiled steps: steps compiled before it must be traced again.
        self.train_function = self.test_function = self.predict_function = None

    def call(self, inputs, training=False):
        content, style = unit_float(inputs["content"]), unit_float(inputs["style"])
        if "style_jitter" in inputs:  # Magenta's style colour augmentation, drawn on the host with the crop
            style = jitter_colours(style, inputs["style_jitter"])
        stylized = self.stylizer({"content": content, "style": style}, training=training)
        style_grams = None
        if self.style_gram_table is not None and "style_index" in inputs:
            index = inputs["style_index"]
            style_grams = {k: ops.take(table, index, axis=0) for k, table in self.style_gram_table.items()}
        if self.distillation is None:
            return {"stylized": stylized, **self.loss_terms(stylized, content, style, style_grams)}
        teacher_images = self.distillation.teacher_images(content, inputs.get("style_index"))
        if self.distillation.style_target == "teacher":  # each example's own target: its teacher image's Grams
            style_grams = self._style_grams(ops.stop_gradient(ops.cast(teacher_images, stylized.dtype)))
        terms = self.loss_terms(stylized, content, style, style_grams)
        terms[DISTILL_LOSS] = self.distillation(content, stylized, teacher_images=teacher_images)
        return {"stylized": stylized, **terms}

    def loss_terms(self, stylized, content, style, style_grams: dict | None = None) -> dict:
        """Content, style and total variation losses of stylized images (the same code scores held-out photos).

        style_grams: the style targets when already known (fix_style_targets); else VGG-16 runs on `style`.
        """
        content_f = self._features(ops.stop_gradient(ops.cast(content, stylized.dtype)), self.content_weights)
        stylized_f = self._features(stylized, {**self.content_weights, **self.style_weights})
        if style_grams is None:
            style_grams = self._style_grams(ops.stop_gradient(ops.cast(style, stylized.dtype)))
        return {
            "content_loss": losses.content_loss(stylized_f, content_f, self.content_weights),
            "style_loss": losses.style_loss(stylized_f, style_grams, self.style_weights),
            "tv_loss": self.tv_weight * losses.total_variation_loss(stylized),
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Under tf.distribute each replica's gradients are summed: scale by 1/replicas as Keras' own
        # compute_loss does (Keras unscales the reported loss again). A no-op on JAX and one device.
        return scale_loss_for_distribution(sum(y_pred[name] for name in self.loss_names))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for name, tracker in self.trackers.items():
            tracker.update_state(y_pred[name])
        return self.get_metrics_result()
