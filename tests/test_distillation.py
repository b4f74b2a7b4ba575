"""Distillation (training/objective/distillation.py): the fast model trained against a frozen teacher."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from helpers import REPO, TINY_TRAINING, compose_train

PUBLISHED_DIR = REPO / "models" / "magenta-published"
# Tiny student runs (random loss network: nothing to download) distilling the published model; the
# distillation term dominates so that a dozen steps move it.
TINY_DISTILL = ["style=starry", "model=realtime", "teacher=magenta_published", "experiment=smoke", *TINY_TRAINING,
                "loss_network.weights=null", "data.heldout_count=1", "teacher.weight=100",
                "trainer.log_every=2", "trainer.checkpoint_every=6"]


def _teacher_and_term(loss="l1"):
    from training.objective.distillation import Distillation, style_bottlenecks
    from training.weights.magenta_import import published_stylizer

    teacher = published_stylizer(PUBLISHED_DIR)
    rng = np.random.default_rng(0)
    style = rng.random((64, 64, 3), dtype=np.float32)
    return teacher, style, Distillation(teacher, style_bottlenecks(teacher, [style]), weight=2.0, loss=loss)


def test_the_term_is_zero_on_the_teachers_own_images_and_weighted_otherwise():
    """Guards Distillation's target: the teacher's transfer network with the bottleneck of the painting,
    computed once by the teacher's predictor. Its own stylization scores 0; an image off by 0.1
    everywhere scores weight x 0.1 (l1) or weight x 0.01 (l2)."""
    from keras import ops

    teacher, style, term = _teacher_and_term()
    content = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    expected = ops.convert_to_numpy(teacher({"content": content, "style": np.repeat(style[None], 2, axis=0)}, training=False))
    assert float(term(content, expected)) == pytest.approx(0.0, abs=1e-6)
    shifted = expected - 0.1
    assert float(term(content, shifted)) == pytest.approx(2.0 * 0.1, rel=1e-4)
    _, _, squared = _teacher_and_term("l2")
    assert float(squared(content, shifted)) == pytest.approx(2.0 * 0.01, rel=1e-3)
    assert not term.teacher.trainable and not term.trainable_weights  # nothing of the teacher is trained
    photos = list(content)
    loss, teacher_images = term.heldout(photos, {"painting": list(expected)})
    assert loss == pytest.approx(0.0, abs=1e-6) and np.allclose(teacher_images["painting"], expected, atol=1e-6)


def test_teacher_style_target_scores_each_image_against_its_teacher_images_grams():
    """teacher.style_target=teacher: the style loss takes each example's teacher image as its style image
    (its Gram matrices) in place of the painting. The teacher as its own student scores 0 there, and
    above 0 against the painting; another student's style loss is exactly the loss with the teacher's
    images passed as the style images."""
    from keras import ops

    from training.network.vgg16 import build_loss_network
    from training.objective.distillation import Distillation, style_bottlenecks
    from training.objective.objective import StylizationObjective

    teacher, style, _ = _teacher_and_term()
    vgg, _ = build_loss_network(None, None)
    rng = np.random.default_rng(3)
    content = rng.random((2, 32, 32, 3), dtype=np.float32)

    def objective(target):
        term = Distillation(teacher, style_bottlenecks(teacher, [style]), weight=2.0, style_target=target)
        return StylizationObjective(teacher, vgg, {"conv3": 1.0}, {"conv1": 0.4, "conv3": 0.4}, 10.0, style_strength=5,
                                    distillation=term)

    own = {"content": content, "style": np.repeat(style[None], 2, axis=0)}
    by_teacher, by_painting = objective("teacher")(own), objective("painting")(own)
    assert float(by_teacher["style_loss"]) == pytest.approx(0.0, abs=1e-5) and float(by_teacher["distill_loss"]) < 1e-5
    assert float(by_painting["style_loss"]) > 0.1
    other_style = rng.random((64, 64, 3), dtype=np.float32)  # the student paints another style than the teacher's
    target = objective("teacher")
    out = target({"content": content, "style": np.repeat(other_style[None], 2, axis=0)})
    teacher_images = target.distillation.teacher_images(ops.convert_to_tensor(content))
    expected = target.loss_terms(out["stylized"], content, teacher_images)["style_loss"]
    assert float(out["style_loss"]) > 0.01 and float(out["style_loss"]) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="style_target='photo': one of painting, teacher"):
        Distillation(teacher, style_bottlenecks(teacher, [style]), weight=2.0, style_target="photo")


def test_contrast_weight_adds_the_difference_of_per_channel_spreads_to_the_term():
    """teacher.contrast_weight: inside the term, the mean |std(student) - std(teacher)| over each image's
    channels. The teacher's own images score 0; an image with 0.8 of the teacher's deviation from its
    channel means is off by 0.2 x the teacher's std, which a uniform shift (same spread) is not; a
    negative weight is refused."""
    from keras import ops

    from training.objective.distillation import Distillation, style_bottlenecks

    teacher, style, plain = _teacher_and_term()
    term = Distillation(teacher, style_bottlenecks(teacher, [style]), weight=2.0, contrast_weight=3.0)
    content = np.random.default_rng(4).random((2, 32, 32, 3), dtype=np.float32)
    expected = ops.convert_to_numpy(term.teacher_images(ops.convert_to_tensor(content)))
    assert float(term(content, expected)) == pytest.approx(0.0, abs=1e-6)
    means = expected.mean(axis=(1, 2), keepdims=True)
    flatter = means + 0.8 * (expected - means)
    contrast = 0.2 * float(expected.std(axis=(1, 2)).mean())
    assert contrast > 0.01
    assert float(term(content, flatter)) == pytest.approx(float(plain(content, flatter)) + 2.0 * 3.0 * contrast, rel=1e-4)
    assert float(term(content, expected - 0.01)) == pytest.approx(float(plain(content, expected - 0.01)), rel=1e-4)
    held_out, _ = term.heldout(list(content), {"painting": list(flatter)})  # the same term on held-out photos
    assert held_out == pytest.approx(float(term(content, flatter)), rel=1e-4)
    with pytest.raises(ValueError, match="contrast_weight=-1.0: a number >= 0"):
        Distillation(teacher, style_bottlenecks(teacher, [style]), weight=2.0, contrast_weight=-1.0)


@pytest.mark.slow
def test_distillation_trains_the_student_only_logs_its_term_and_resumes(tmp_path):
    """Guards the wiring (objective, train, checkpoints, MLflow): a student trained 6 steps, then resumed
    to 12 with the teacher rebuilt. The teacher's weights (moving statistics included) are as they were,
    checkpoints hold the student and its optimizer only, and distill_loss is in metrics.json's history and
    MLflow at every logged step, finite, and lower at the end than at the start; the held-out photos are
scored against the teacher and the sample grid shows its column."""
    from training.objective.distillation import load_teacher
    from training.network.stylizer import load_stylizer
    from training.loop.train import train

    first = compose_train([*TINY_DISTILL, "trainer.steps=6"], tmp_path)
    teacher = load_teacher(first.teacher, first.paths)
    assert teacher is load_teacher(first.teacher, first.paths)  # one shared object: the one train() uses
    before = [w.copy() for w in teacher.get_weights()]

    early = train(first)
    resumed = train(compose_train([*TINY_DISTILL, "trainer.steps=12"], tmp_path))

    after = teacher.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after)) and len(before) == len(after)
    assert resumed["resumed_from_step"] == 6
    history = resumed["history"]  # the whole run's, the earlier part's first
    assert early["history"] == history[:3] and [h["step"] for h in history] == [2, 4, 6, 8, 10, 12]
    distill = [h["distill_loss"] for h in history]
    assert all(np.isfinite(distill)), distill
    assert distill[-1] < distill[0], distill
    train_dir = tmp_path / "outputs" / "train"
    assert json.loads((train_dir / "metrics.json").read_text())["history"][-1]["distill_loss"] == distill[-1]

    assert np.isfinite(resumed["heldout"]["distill_loss"])  # the held-out photos against the teacher's
    from PIL import Image

    assert Image.open(train_dir / "samples.png").width == 3 * 160  # photo | teacher | student

    student = load_stylizer(train_dir / "model.keras")
    with np.load(train_dir / "checkpoints" / "ckpt-00000012.npz") as stored:
        model = [stored[k] for k in sorted(k for k in stored.files if k.startswith("model/"))]
        optimizer = [stored[k] for k in sorted(k for k in stored.files if k.startswith("optimizer/"))]
    assert [a.shape for a in model] == [tuple(w.shape) for w in student.weights]
    trainable = sum(int(np.prod(w.shape)) for w in student.trainable_weights)
    # Adam: two moments per trainable weight of the student, plus its step count and learning rate.
    assert sum(a.size for a in optimizer) == 2 * trainable + 2

    client = mlflow.MlflowClient(first.mlflow.tracking_uri)
    points = client.get_metric_history(resumed["mlflow_run_id"], "distill_loss")
    assert resumed["mlflow_run_id"] == early["mlflow_run_id"]  # the resume continues the run
    assert [p.step for p in points] == [2, 4, 6, 8, 10, 12]
    assert client.get_run(resumed["mlflow_run_id"]).data.params["teacher"] == "magenta_published"


def test_a_fine_tune_of_the_published_model_keeps_it_as_its_teacher(tmp_path):
    """init=magenta_published brings the published model in as the teacher at init.teacher_weight (5;
    init.smoke_teacher_weight, 20, at experiment=smoke), so the fine-tune adds the painting's style to its rendering (docs/objective.md); `~teacher` trains
    without it, teacher.weight= still sets it, and a realtime student keeps the teacher's own weight."""
    fine_tune = compose_train(["style=starry", "init=magenta_published"], tmp_path)
    assert (fine_tune.teacher.name, fine_tune.teacher.weight) == ("magenta_published", 5.0)
    smoke = compose_train(["style=starry", "init=magenta_published", "experiment=smoke"], tmp_path)
    assert smoke.teacher.weight == 20  # 24 noisy steps of batch 4 need a firmer hold
    assert compose_train(["style=starry", "init=magenta_published", "~teacher"], tmp_path).get("teacher") is None
    assert compose_train(["style=starry", "init=magenta_published", "teacher.weight=2"], tmp_path).teacher.weight == 2
    student = compose_train(["style=starry", "model=realtime", "teacher=magenta_published"], tmp_path)
    assert student.teacher.weight == 20
    assert (fine_tune.style.strength, fine_tune.teacher.contrast_weight) == (5, 0)


def test_a_realtime_student_trains_with_a_stronger_style_and_the_contrast_term(tmp_path):
    """With a teacher, model=realtime's distilled_style_strength (9) and distilled_contrast_weight (2.5)
    become style.strength's and teacher.contrast_weight's defaults (docs/realtime.md); without a teacher,
    or for another network, style.strength stays 5 and the term has no contrast part; the command line wins."""
    for teacher in (["teacher=magenta_published"], ["teacher=model", "teacher.model_path=teacher.keras"]):
        student = compose_train(["style=starry", "model=realtime", *teacher], tmp_path)
        assert (student.style.strength, student.teacher.contrast_weight) == (9, 2.5)
        magenta = compose_train(["style=starry", *teacher], tmp_path)
        assert (magenta.style.strength, magenta.teacher.contrast_weight) == (5, 0)
    assert compose_train(["style=starry", "model=realtime"], tmp_path).style.strength == 5
    chosen = compose_train(["style=starry", "model=realtime", "teacher=magenta_published", "style.strength=7",
                            "teacher.contrast_weight=0"], tmp_path)
    assert (chosen.style.strength, chosen.teacher.contrast_weight) == (7, 0)
