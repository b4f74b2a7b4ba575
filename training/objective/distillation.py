"""Distillation from a trained stylizer (the teacher) into the one being trained (the student).

The term: the student's stylized batch against the teacher's stylization of the same content batch,
a mean absolute (l1) or squared (l2) pixel error in [0, 1] units, times `teacher.weight`; the
objective adds it to the perceptual loss (training/objective/objective.py). A pixel error rewards a
blurred average of strokes the student cannot place exactly; `teacher.style_target=teacher`
makes the teacher's images the style loss's targets in place of the painting: each student image
is scored against the Gram matrices of the teacher's image of the same crop, so the student learns
the teacher's texture (its strokes, as the teacher paints them) rather than its own reading of the
painting. The same averaging leaves the student's colours flatter than the teacher's (yellow against
blue, in The Starry Night); `teacher.contrast_weight` adds, inside the term, the mean absolute
difference between the student's and the teacher's standard deviation of each image's channels,
so the student keeps the teacher's contrast where it cannot copy the strokes pixel for pixel.
The teacher is frozen and runs in
inference mode: only its transfer network runs in the step, with the bottleneck of each training
style computed once by its own style predictor. It is rebuilt from its file on every run, resumed
or not, and never saved: checkpoints hold the student and its optimizer only.

Teachers (`configs/teacher/`): Magenta's published arbitrary model (`magenta_published`, alpha 0.25,
the import stage's model file or the published TFLite files) or one of ours (`model`: a
`model.keras` written by `pipelines.train`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from training.schema import TEACHER_LOSSES, TEACHER_STYLE_TARGETS


def load_teacher(teacher_cfg, paths_cfg) -> keras.Model:
    """The teacher stylizer a `configs/teacher/` config names (a StylepipeError, one line, if unusable)."""
    if teacher_cfg.name == "magenta_published":
        from training.weights.magenta_import import published_stylizer

        return published_stylizer(paths_cfg.published_dir, teacher_cfg.get("model_path"))
    from training.network.stylizer import load_stylizer

    return load_stylizer(teacher_cfg.model_path)


def style_bottlenecks(teacher: keras.Model, style_images: list[np.ndarray]) -> np.ndarray:
    """(K, 1, 1, 100) float32: the teacher's bottleneck of each style image ((H, W, 3) in [0, 1]),
    in inference mode, one image at a time."""
    predictor = teacher.get_layer("style_predictor")
    rows = [ops.convert_to_numpy(predictor(np.asarray(image, np.float32)[None], training=False)) for image in style_images]
    return np.concatenate(rows).astype(np.float32)


def pixel_error(stylized, target, kind: str):
    """Mean absolute (l1) or squared (l2) error over every pixel and channel, float32."""
    diff = ops.cast(stylized, "float32") - ops.cast(target, "float32")
    return ops.mean(ops.abs(diff)) if kind == "l1" else ops.mean(ops.square(diff))


def contrast_error(stylized, target):
    """Mean absolute difference of each image's per-channel standard deviations (over H and W), float32."""
    def spread(images):
        return ops.std(ops.cast(images, "float32"), axis=(1, 2))

    return ops.mean(ops.abs(spread(stylized) - spread(target)))


class Distillation(keras.layers.Layer):
    """`distillation(content, stylized, style_index)` -> weight * (pixel error + contrast_weight * contrast
    error) against the teacher.

    Holds the teacher's transfer network, frozen (trainable=False: not in the optimizer's variables,
    its batch norms in inference mode), and the bottleneck table of the training styles, a constant
    of the compiled step like the objective's Gram targets. `style_index` picks each example's row
    (the batches' order of styles); without it every example takes row 0 (one style).
    """

    def __init__(self, teacher: keras.Model, bottlenecks: np.ndarray, weight: float, loss: str = "l1",
                 style_target: str = "painting", contrast_weight: float = 0.0, **kwargs):
        # float32: the content and stylized images come in as they are (no cast to a bf16/fp16 compute dtype)
        super().__init__(name="distillation", dtype="float32", **kwargs)
        if loss not in TEACHER_LOSSES:
            raise ValueError(f"loss={loss!r}: one of {', '.join(TEACHER_LOSSES)}")
        if style_target not in TEACHER_STYLE_TARGETS:
            raise ValueError(f"style_target={style_target!r}: one of {', '.join(TEACHER_STYLE_TARGETS)}")
        if not contrast_weight >= 0:
            raise ValueError(f"contrast_weight={contrast_weight!r}: a number >= 0")
        self.style_target = style_target  # read by the objective, which owns the style loss
        self.contrast_weight = float(contrast_weight)
        self.teacher = teacher.get_layer("transformer")
        self.teacher.trainable = False
        self.bottlenecks = np.asarray(bottlenecks, np.float32)
        self.weight = float(weight)
        self.loss = loss

    @classmethod
    def from_config_group(cls, teacher_cfg, paths_cfg, style_images: list[np.ndarray]) -> "Distillation":
        """The term a `configs/teacher/` config describes, for styles `style_images` (the batches' order)."""
        teacher = load_teacher(teacher_cfg, paths_cfg)
        return cls(teacher, style_bottlenecks(teacher, style_images), teacher_cfg.weight, teacher_cfg.loss,
                   teacher_cfg.get("style_target", "painting"), float(teacher_cfg.get("contrast_weight", 0.0)))

    def teacher_images(self, content, style_index=None):
        """The teacher's stylization of `content` ([0, 1]), in inference mode and without gradients."""
        if style_index is None:
            style_index = ops.zeros_like(ops.cast(content[:, 0, 0, 0], "int32"))
        bottleneck = ops.take(ops.convert_to_tensor(self.bottlenecks), style_index, axis=0)
        return ops.stop_gradient(self.teacher([content, bottleneck], training=False))

    def error(self, stylized, teacher_images):
        """The term before `weight`: the pixel error, plus contrast_weight x the contrast error."""
        error = pixel_error(stylized, teacher_images, self.loss)
        if self.contrast_weight:
            error = error + self.contrast_weight * contrast_error(stylized, teacher_images)
        return error

    def call(self, content, stylized, style_index=None, teacher_images=None):
        """The weighted error; `teacher_images` when the objective already has them."""
        if teacher_images is None:
            teacher_images = self.teacher_images(content, style_index)
        return self.weight * self.error(stylized, teacher_images)

    def stylize(self, photos: list[np.ndarray], style_index: int, batch_size: int = 4) -> list[np.ndarray]:
        """The teacher's stylization of photos (same size, [0, 1]) with training style `style_index`."""
        out = []
        for i in range(0, len(photos), batch_size):
            chunk = np.stack(photos[i : i + batch_size]).astype(np.float32)
            index = np.full((len(chunk),), style_index, np.int32)
            out.extend(ops.convert_to_numpy(self.teacher_images(ops.convert_to_tensor(chunk), index)))
        return out

    def heldout(self, photos: list[np.ndarray], stylized: dict[str, list[np.ndarray]]) -> tuple[float, dict]:
        """The term on held-out photos: (mean over styles of weight x error, {style: teacher images}).
        stylized: the student's images of `photos` per style, in the training styles' order."""
        teacher = {name: self.stylize(photos, i) for i, name in enumerate(stylized)}
        errors = [float(self.error(np.stack(stylized[name]), np.stack(teacher[name]))) for name in stylized]
        return self.weight * float(np.mean(errors)), teacher


def teacher_columns(styles: dict[str, np.ndarray], stylized: dict, teacher: dict) -> tuple[dict, dict]:
    """The sample grid's styles and columns with each style's teacher column before the student's."""
    columns, tiles = {}, {}
    for name in stylized:
        columns[f"teacher {name}"], tiles[f"teacher {name}"] = teacher[name], styles[name]
        columns[name], tiles[name] = stylized[name], styles[name]
    return tiles, columns
