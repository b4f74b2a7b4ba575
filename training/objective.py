"""The training objective as a Keras model: stylizer + frozen VGG-16 loss network.

Written with `keras.ops` and the standard `compute_loss`/`compute_metrics` hooks, so
`model.fit` trains it unchanged on the TensorFlow and JAX backends.
"""

from __future__ import annotations

import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution  # not exported by keras 3.15

from training import losses

LOSS_NAMES = ("content_loss", "style_loss", "tv_loss")


class StylizationObjective(keras.Model):
    """Calls the stylizer on {content, style} and returns its weighted loss terms.

    VGG-16 runs on the stylized images (differentiated) and, separately and under stop_gradient,
    on the content and style images stacked along the batch: the targets need no gradients, and
    one stacked call would make autodiff compute input gradients through VGG-16 for all three
    (about a third of the step's FLOPs wasted).
    """

    def __init__(self, stylizer, loss_network, content_weights, style_weights, tv_weight, feature_scale=1.0, **kwargs):
        super().__init__(name="stylization_objective", **kwargs)
        self.stylizer = stylizer
        self.loss_network = loss_network
        self.content_weights = dict(content_weights)
        self.style_weights = dict(style_weights)
        self.tv_weight = float(tv_weight)
        self.feature_scale = float(feature_scale)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}

    def _features(self, images):
        return {k: ops.cast(v, "float32") * self.feature_scale for k, v in self.loss_network(images, training=False).items()}

    def call(self, inputs, training=False):
        content, style = inputs["content"], inputs["style"]
        stylized = self.stylizer({"content": content, "style": style}, training=training)
        batch = ops.shape(content)[0]
        targets = ops.stop_gradient(ops.concatenate([content, style], axis=0))
        target_f = self._features(ops.cast(targets, stylized.dtype))
        stylized_f = self._features(stylized)
        content_f = {k: v[:batch] for k, v in target_f.items()}
        style_grams = {k: losses.gram_matrix(target_f[k][batch:]) for k in self.style_weights}
        return {
            "stylized": stylized,
            "content_loss": losses.content_loss(stylized_f, content_f, self.content_weights),
            "style_loss": losses.style_loss(stylized_f, style_grams, self.style_weights),
            "tv_loss": self.tv_weight * losses.total_variation_loss(stylized),
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Under tf.distribute each replica's gradients are summed: scale by 1/replicas as Keras' own
        # compute_loss does (Keras unscales the reported loss again). A no-op on JAX and one device.
        return scale_loss_for_distribution(sum(y_pred[name] for name in LOSS_NAMES))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for name, tracker in self.trackers.items():
            tracker.update_state(y_pred[name])
        return self.get_metrics_result()
