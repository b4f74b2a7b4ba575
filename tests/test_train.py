"""The training stage end to end on the real sample photos (experiment=smoke)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import CACHE_DIR, REPO, TINY_TRAINING, compose_train, tracking_uri

pytestmark = pytest.mark.slow


def run_cli(args: list[str], tmp_path, env_extra: dict | None = None, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    cmd = [sys.executable, "-m", "pipelines.train", f"paths.output_dir={tmp_path / 'outputs'}",
           f"paths.cache_dir={CACHE_DIR}", f"mlflow.tracking_uri={tracking_uri(tmp_path)}",
           "trainer.progress=false", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kwargs)


def test_smoke_training_writes_model_metrics_grid_and_mlflow_run(tmp_path):
    from training.loop.train import train

    untrained = train(compose_train(["style=starry", "experiment=smoke", "trainer.steps=0", *TINY_TRAINING], tmp_path / "untrained"))
    cfg = compose_train(["style=starry", "experiment=smoke", "trainer.steps=16", "trainer.log_every=1", *TINY_TRAINING], tmp_path)
    metrics = train(cfg)

    train_dir = tmp_path / "outputs" / "train"
    for name in ("model.keras", "metrics.json", "samples.png"):
        assert (train_dir / name).is_file(), name
    assert json.loads((train_dir / "metrics.json").read_text())["steps"] == 16
    from training.network.stylizer import load_stylizer

    reloaded = load_stylizer(train_dir / "model.keras")  # what the export stage does, in safe mode
    assert {"style_predictor", "transformer"} <= {layer.name for layer in reloaded.layers}
    # The loss falls on real photos: held-out loss and its style term after 16 steps vs the same network
    # untrained (same seed, same initial weights); every step is logged.
    assert metrics["heldout"]["loss"] < 0.85 * untrained["heldout"]["loss"], (metrics["heldout"], untrained["heldout"])
    assert metrics["heldout"]["style_loss"] < 0.8 * untrained["heldout"]["style_loss"], (metrics["heldout"], untrained["heldout"])
    assert len(metrics["history"]) == 16
    assert metrics["images_per_second"] > 0

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert run.data.params["style"] == "starry"
    assert run.data.params["model"] == "magenta_lite"
    assert "loss" in run.data.metrics and "style_loss" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"samples", "model", "config", "metrics.json"} <= artifacts
    machine_paths = (str(REPO), str(tmp_path), str(Path.home()))
    assert not [v for v in run.data.params.values() if any(p in v for p in machine_paths)], "absolute paths logged"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and modification time."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_run_goes_to_its_own_folder_and_leaves_the_first_untouched(tmp_path):
    """`dvc repro` leaves a finished run in outputs/train; a hand run with other data (or config) used
    to fail on its checkpoints, or resume them and train 0 steps. It writes to its own folder instead,
    Hydra's .hydra/ and train.log included, and a rerun of it resumes there."""
    tiny = ["experiment=smoke", *TINY_TRAINING, "loss_network.weights=null", "data.heldout_count=1"]
    first = run_cli([*tiny, "trainer.steps=2"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    train_dir = tmp_path / "outputs" / "train"
    before = snapshot(train_dir)
    assert {"model.keras", "metrics.json", "run.json", ".hydra/config.yaml", "train.log",
            "checkpoints/ckpt-00000002.npz"} <= set(before)

    photos = tmp_path / "photos"  # other data: three of the sample photos
    photos.mkdir()
    for photo in sorted((REPO / "data" / "samples" / "content").glob("*.jpg"))[:3]:
        (photos / photo.name).write_bytes(photo.read_bytes())
    other = [*tiny, f"data.content_dir={photos}"]
    second = run_cli([*other, "trainer.steps=2"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    [moved] = [line for line in second.stderr.splitlines() if "-> this run writes to" in line]
    own = Path(moved.rsplit(" ", 1)[1])
    assert moved == f"{train_dir} is taken by another run (differs in: data) -> this run writes to {own}"
    assert own.parent == tmp_path / "outputs" / "runs" and own.name.startswith("train-starry-magenta_lite-")
    assert json.loads((own / "metrics.json").read_text())["trained_steps"] == 2
    assert f"content_dir: {photos}" in (own / ".hydra" / "config.yaml").read_text()
    assert "resuming" not in (own / "train.log").read_text()
    assert snapshot(train_dir) == before  # the first run's files, Hydra's included, as they were

    third = run_cli([*other, "trainer.steps=3"], tmp_path)  # the same run, longer: resumed in its folder
    assert third.returncode == 0, third.stderr[-2000:]
    assert moved in third.stderr.splitlines()  # the same folder
    metrics = json.loads((own / "metrics.json").read_text())
    assert (metrics["resumed_from_step"], metrics["trained_steps"]) == (2, 1)
    assert snapshot(train_dir) == before
    assert sorted(p.name for p in (tmp_path / "outputs" / "runs").iterdir()) == [own.name]


def test_a_resumed_run_continues_from_the_last_checkpoint_at_the_configured_learning_rate(tmp_path, caplog):
    """A longer run in the same folder resumes from the last checkpoint. The checkpoint holds Adam's learning
    rate with its state; resuming with another trainer.learning_rate used to train on at the old one."""
    from training.loop.train import train

    tiny = ["experiment=smoke", *TINY_TRAINING, "loss_network.weights=null", "data.heldout_count=1"]
    first = train(compose_train([*tiny, "trainer.steps=6", "trainer.learning_rate=1e-3"], tmp_path))
    assert first["trained_steps"] == 6
    assert (tmp_path / "outputs" / "train" / "checkpoints" / "ckpt-00000006.npz").is_file()
    with caplog.at_level("INFO", logger="stylepipe.train"):
        resumed = train(compose_train([*tiny, "trainer.steps=10", "trainer.learning_rate=2e-4"], tmp_path))
    assert (resumed["resumed_from_step"], resumed["trained_steps"]) == (6, 4)
    assert "learning rate 0.0002 (trainer.learning_rate), not the checkpoint's 0.001" in caplog.messages
    with np.load(tmp_path / "outputs" / "train" / "checkpoints" / "ckpt-00000010.npz") as f:
        # Adam's float scalars: its learning rate (the step count is an integer)
        rates = [float(f[k]) for k in f.files if k.startswith("optimizer/") and f[k].ndim == 0 and f[k].dtype.kind == "f"]
    assert rates == [pytest.approx(2e-4)]


def test_a_cosine_schedule_slows_the_last_steps_and_resumes_on_its_curve(tmp_path):
    """trainer.learning_rate_schedule=cosine: each step's weight change follows the rate down to 0 at
    trainer.steps; a resumed run picks the curve up at its restored step, not at its start."""
    from training.loop.runs import fingerprint
    from training.loop.train import learning_rate, train

    tiny = ["experiment=smoke", *TINY_TRAINING, "loss_network.weights=null", "data.heldout_count=1",
            "trainer.learning_rate=1e-3", "trainer.learning_rate_schedule=cosine", "trainer.checkpoint_every=1",
            "trainer.keep_checkpoints=10"]
    schedule = learning_rate(compose_train([*tiny, "trainer.steps=8"], tmp_path).trainer)
    assert [float(schedule(step)) for step in (0, 4, 8)] == pytest.approx([1e-3, 5e-4, 0.0], abs=1e-9)
    assert "learning_rate_schedule" in fingerprint(compose_train([*tiny, "trainer.steps=8"], tmp_path))

    train(compose_train([*tiny, "trainer.steps=4"], tmp_path))
    train(compose_train([*tiny, "trainer.steps=8"], tmp_path))  # resumed at step 4: rate 5e-4 falling to 0

    def weights(step):
        with np.load(tmp_path / "outputs" / "train" / "checkpoints" / f"ckpt-{step:08d}.npz") as f:
            return [f[k] for k in sorted(f.files) if k.startswith("model/")]

    def change(step):  # the median change of the weights the step moved (Adam moves each by about the rate)
        moved = np.concatenate([np.abs(a - b).ravel() for a, b in zip(weights(step), weights(step - 1))])
        return float(np.median(moved[moved > 0]))

    # Step 4 ends the 4-step curve (rate 0.15e-3); the 8-step run resumes it at step 5 (rate 0.5e-3)
    # and ends at 0.04e-3. At a constant rate each step moves the weights a little less than the last.
    assert change(5) > 2 * change(4)
    assert change(8) < 0.1 * change(2)


def test_checkpoints_are_also_written_by_wall_time(tmp_path):
    """trainer.checkpoint_minutes: a run between step checkpoints still saves when that much time has
    passed (here a few milliseconds: every step), so a kill loses at most that much work."""
    from training.loop.train import train

    tiny = ["experiment=smoke", *TINY_TRAINING, "loss_network.weights=null", "data.heldout_count=1",
            "trainer.steps=3", "trainer.checkpoint_every=1000", "trainer.keep_checkpoints=5"]
    train(compose_train([*tiny, "trainer.checkpoint_minutes=1e-5"], tmp_path / "timed"))
    train(compose_train([*tiny, "trainer.checkpoint_minutes=null"], tmp_path / "steps"))
    def names(run):
        return sorted(p.name for p in (tmp_path / run / "outputs" / "train" / "checkpoints").glob("ckpt-*.npz"))

    assert names("timed") == ["ckpt-00000001.npz", "ckpt-00000002.npz", "ckpt-00000003.npz"]
    assert names("steps") == ["ckpt-00000003.npz"]  # the last step's only


def test_non_default_backbone_completes_a_smoke_run(tmp_path):
    # No internet here: MobileNetV2 without ImageNet weights (the code path is the same).
    result = run_cli(["experiment=smoke", "trainer.steps=4", *TINY_TRAINING, "backbone=mobilenet_v2", "backbone.weights=null"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "outputs" / "train" / "model.keras").is_file()


def test_uint8_input_trains_like_float32(tmp_path, monkeypatch):
    """Batches sent as uint8 (made [0, 1] floats on the device) give the float32 run's losses.

    Crops are made in uint8 either way and become floats once (training/data/datasets.py unit_float32), on the
    host for float32 and on the device for uint8: the same floats, so the losses agree to rounding.
    What fit was fed is read from the real batches as they are made."""
    from training.data import datasets as data_lib
    from training.loop.train import train

    made = []
    real_batch = data_lib.TrainingBatches.batch

    def batch_as_made(self, *args, **kwargs):
        out = real_batch(self, *args, **kwargs)
        made.append(out["content"].dtype)
        return out

    monkeypatch.setattr(data_lib.TrainingBatches, "batch", batch_as_made)
    runs, fed = {}, {}
    for dtype in ("float32", "uint8"):
        cfg = compose_train(["experiment=smoke", *TINY_TRAINING, "trainer.steps=2", "trainer.log_every=1",
                             "loss_network.weights=null", "data.heldout_count=1", f"trainer.input_dtype={dtype}"],
                            tmp_path / dtype)
        made.clear()
        runs[dtype] = train(cfg)["history"]
        fed[dtype] = {str(d) for d in made}
    assert fed == {"float32": {"float32"}, "uint8": {"uint8"}}  # the uint8 batches really were used
    assert [h["step"] for h in runs["uint8"]] == [1, 2]
    first, second = zip(runs["float32"], runs["uint8"])
    # The same floats reach the compiled step either way, but the step then differs (a cast and a
    # scale before the style's colour jitter), so the compiler may order the float math differently:
    # rounding at the first step, which one Adam step (about lr * sign(gradient)) amplifies.
    assert first[1]["loss"] == pytest.approx(first[0]["loss"], rel=1e-6), first
    assert second[1]["loss"] == pytest.approx(second[0]["loss"], rel=1e-4), second


def train_alike(tmp_path, settings: dict[str, list[str]], common: tuple[str, ...] = ()) -> None:
    """Two-step runs under each of two `settings` (name -> overrides) give the same losses."""
    from training.loop.train import train

    runs = [train(compose_train(["experiment=smoke", *TINY_TRAINING, "trainer.steps=2", "trainer.log_every=1",
                                 "loss_network.weights=null", "data.heldout_count=1", *common, *overrides],
                                tmp_path / name))
            for name, overrides in settings.items()]
    first, *later = zip(runs[0]["history"], runs[1]["history"], strict=True)
    # The first step's loss is computed from the same weights and batch: equal to rounding. Each Adam
    # step moves every weight by about lr * sign(gradient), so a rounding-sized gradient difference
    # near zero becomes a full step: float summation order alone moves later losses by about 1e-4,
    # and the held-out loss after two steps by a few parts in 1e4.
    assert first[1]["loss"] == pytest.approx(first[0]["loss"], rel=1e-5), first
    for a, b in later:
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-4), (a, b)
    assert runs[1]["heldout"]["loss"] == pytest.approx(runs[0]["heldout"]["loss"], rel=2e-3)


def test_convolutions_on_pixel_blocks_train_like_plain_ones(tmp_path):
    """trainer.space_to_depth_channels=32 (the GPU default) trains through fit with the plain run's losses,
    and the model it saves holds plain convolutions under Magenta's names."""
    from training.network.layers import ReflectPadConv2D
    from training.network.stylizer import load_stylizer

    train_alike(tmp_path, {"blocks0": ["trainer.space_to_depth_channels=0"],
                           "blocks32": ["trainer.space_to_depth_channels=32"]})
    saved = load_stylizer(tmp_path / "blocks32" / "outputs" / "train" / "model.keras").get_layer("transformer")
    assert {l.space_to_depth_block for l in saved.layers if isinstance(l, ReflectPadConv2D)} == {(1, 1)}


def test_gpu_speed_settings_train_like_plain_layers(tmp_path):
    """The GPU defaults trainer.shifted_sum_depthwise=strided and relu_gradient_from_output=true fine-tune
    Magenta's published model through fit with the plain layers' losses. Its real MobileNetV2 weights:
    with a random one (backbone.weights=null) a transposed depthwise kernel passed unseen. Without the
    fine-tune's teacher (~teacher): the student starts equal to it, where its L1 term's gradient is the
    sign of rounding differences, and those are what the two settings differ in."""
    train_alike(tmp_path, {"plain": ["trainer.shifted_sum_depthwise=none", "trainer.relu_gradient_from_output=false"],
                           "fast": ["trainer.shifted_sum_depthwise=strided", "trainer.relu_gradient_from_output=true"]},
                common=("init=magenta_published", "~teacher"))


def test_several_steps_per_execution_train_the_same_steps(tmp_path):
    """trainer.steps_per_execution=2: the callback sees every other step, yet logs, checkpoints and
    losses land on the same steps with the same values as one step per execution.

    At one step per execution the callback reads steps 1 and 3 one execution late (LaggedCallbackList)
    and steps 2 and 4 at once, for their checkpoints: these hold the same weights in both runs."""
    from training.loop.train import train

    runs = {}
    for per_execution in (1, 2):
        out = tmp_path / f"spe{per_execution}"
        cfg = compose_train(["experiment=smoke", *TINY_TRAINING, "trainer.steps=5", "trainer.log_every=2",
                             "trainer.checkpoint_every=2", "trainer.keep_checkpoints=5", "loss_network.weights=null",
                             "data.heldout_count=1", f"trainer.steps_per_execution={per_execution}"], out)
        metrics = train(cfg)
        checkpoints = sorted(p.name for p in (out / "outputs" / "train" / "checkpoints").glob("ckpt-*.npz"))
        runs[per_execution] = metrics, checkpoints
    (one, one_ckpts), (two, two_ckpts) = runs[1], runs[2]
    assert [h["step"] for h in two["history"]] == [h["step"] for h in one["history"]] == [2, 4, 5]
    assert two_ckpts == one_ckpts == ["ckpt-00000002.npz", "ckpt-00000004.npz", "ckpt-00000005.npz"]
    assert two["trained_steps"] == 5
    for a, b in zip(one["history"], two["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    assert two["heldout"]["loss"] == pytest.approx(one["heldout"]["loss"], rel=1e-4)

    def weights(per_execution, step):
        with np.load(tmp_path / f"spe{per_execution}" / "outputs" / "train" / "checkpoints" / f"ckpt-{step:08d}.npz") as f:
            return np.concatenate([f[k].ravel() for k in sorted(f.files) if k.startswith("model/")])

    one_step_change = np.abs(weights(1, 4) - weights(1, 2)).max()  # how far weights move in two steps
    for step in (2, 4):
        assert np.abs(weights(2, step) - weights(1, step)).max() < 0.01 * one_step_change, step


def test_fixed_style_targets_train_like_targets_from_every_batch(tmp_path):
    """trainer.fixed_style_targets: a style without augmentation gets its Gram targets once, with the
    losses of running VGG-16 on every batch's copies; two fixed styles each keep their own targets."""
    from training.loop.train import train

    runs = {}
    for styles in ("starry", "two"):
        extra = ["+style.images.wave=${paths.data_dir}/samples/style/great_wave.jpg", "style.name=two"] if styles == "two" else []
        for fixed in (False, True):
            cfg = compose_train(["experiment=smoke", *TINY_TRAINING, "trainer.steps=2", "trainer.log_every=1",
                                 "loss_network.weights=null", "data.heldout_count=1", *extra,
                                 f"trainer.fixed_style_targets={str(fixed).lower()}"], tmp_path / f"{styles}{fixed}")
            runs[styles, fixed] = train(cfg)
    for styles in ("starry", "two"):
        plain, fixed = runs[styles, False], runs[styles, True]
        assert fixed["fixed_style_targets"] is True and plain["fixed_style_targets"] is False
        assert len(plain["history"]) == len(fixed["history"]) == 2
        for a, b in zip(plain["history"], fixed["history"]):
            assert b["style_loss"] == pytest.approx(a["style_loss"], rel=1e-4), (styles, a, b)
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (styles, a, b)
        # After two Adam steps (each weight moves by about lr * sign(gradient)) float summation order
        # alone moves the held-out loss by a few parts in 1e3 (the first steps' losses agree to 1e-4).
        assert fixed["heldout"]["loss"] == pytest.approx(plain["heldout"]["loss"], rel=5e-3)
    # The two-style runs are not the one-style run: the second painting's targets were used.
    assert runs["two", True]["history"][0]["style_loss"] != pytest.approx(runs["starry", True]["history"][0]["style_loss"],
                                                                            rel=1e-3)


def test_fit_reads_style_targets_from_the_fixed_table(tmp_path, monkeypatch):
    """The batches `fit` reads carry style_index, and the objective then takes the fixed table's targets:
    fixed from another image, the style loss is that image's, not the batch's style crops'. A table
    over the size cap is refused before VGG-16 runs, from its size known in advance."""
    from training.data import datasets as data_lib
    from training.loop import train as train_lib
    from training.loop.train import _build, _build_objective

    cfg = compose_train(["experiment=smoke", *TINY_TRAINING, "loss_network.weights=null", "data.heldout_count=1"], tmp_path)
    objective, optimizer, _ = _build_objective(cfg, CACHE_DIR)
    _build(objective, optimizer, 64)
    styles, _ = data_lib.load_style_images(cfg.style)
    batches = data_lib.TrainingBatches(data_lib.load_content(cfg.data), styles, cfg.data, cfg.style, 2, seed=0)
    batch = batches.batch(0)
    other = 1.0 - batch["style"][:1]  # the crop's negative: other Gram matrices (turning it would keep them)

    def style_loss(feed):
        return objective.evaluate(feed, verbose=0, return_dict=True)["style_loss"]

    from_batch = style_loss(batches.training_input(0, 1, workers=1))
    objective.fix_style_targets(other)
    from_table = style_loss(batches.training_input(0, 1, workers=1))
    # The stylizer still sees the batch's style; only the targets come from the table.
    stylized = objective.stylizer({"content": batch["content"], "style": batch["style"]})
    expected = float(objective.loss_terms(stylized, batch["content"], np.repeat(other, 2, axis=0))["style_loss"])
    assert from_table == pytest.approx(expected, rel=1e-5)
    assert abs(from_table - from_batch) > 0.05 * from_batch
    objective.fix_style_targets(batches.styles)  # the real targets: the batch's own losses again
    assert style_loss(batches.training_input(0, 1, workers=1)) == pytest.approx(from_batch, rel=1e-5)

    size = sum(table.nbytes for table in objective.style_gram_table.values())
    assert size == objective.style_gram_table_bytes(len(batches.styles)) == 4 * (64**2 + 128**2 + 256**2 + 512**2)
    objective.style_gram_table = None
    monkeypatch.setattr(train_lib, "MAX_FIXED_STYLE_TARGET_BYTES", size - 1)  # one style over the cap
    assert train_lib.fix_style_targets(objective, batches, enabled=True, textures=batches.styles) is False
    assert objective.style_gram_table is None
    monkeypatch.setattr(train_lib, "MAX_FIXED_STYLE_TARGET_BYTES", size)
    assert train_lib.fix_style_targets(objective, batches, enabled=True, textures=batches.styles) is True
    assert objective.style_gram_table is not None


def test_fit_applies_each_style_crops_colour_jitter(tmp_path):
    """Augmented styles (style=all) reach the device as plain crops with their jitter: the losses fit
    computes are those of the jittered crops, not of the crops as sent."""
    from keras import ops

    from training.data import datasets as data_lib
    from training.data.color_jitter import jitter_colours
    from training.loop.train import _build, _build_objective

    cfg = compose_train(["experiment=smoke", *TINY_TRAINING, "style=all", "loss_network.weights=null",
                         "data.heldout_count=1", "trainer.input_dtype=uint8"], tmp_path)
    objective, optimizer, _ = _build_objective(cfg, CACHE_DIR)
    _build(objective, optimizer, 64)
    styles, _ = data_lib.load_style_images(cfg.style)
    batches = data_lib.TrainingBatches(data_lib.load_content(cfg.data), styles, cfg.data, cfg.style, 2, seed=0)
    batch = batches.batch(0)
    assert batch["style"].dtype == np.float32 and batch["style_jitter"].shape == (2, 3)

    def losses(content, style):
        terms = objective.loss_terms(objective.stylizer({"content": content, "style": style}), content, style)
        return {k: float(v) for k, v in terms.items()}

    fed = objective.evaluate(batches.training_input(0, 1, workers=1, dtype="uint8"), verbose=0, return_dict=True)
    jittered = losses(batch["content"], ops.convert_to_numpy(jitter_colours(batch["style"], batch["style_jitter"])))
    as_sent = losses(batch["content"], batch["style"])
    for name in ("content_loss", "style_loss"):
        assert fed[name] == pytest.approx(jittered[name], rel=1e-4), name
    assert abs(fed["style_loss"] - as_sent["style_loss"]) > 0.01 * as_sent["style_loss"]


def test_data_workers_auto_is_one_thread_per_core_up_to_eight(monkeypatch):
    import os

    from training.config import data_workers

    assert data_workers("auto") == min(os.cpu_count(), 8) >= 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # the H200 host's CPUs: 8 threads beat 16 there
    assert data_workers("auto") == 8
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert data_workers("auto") == 3
    assert data_workers(12) == 12
    # Worker processes share no GIL: all cores but 2 (the training thread, the accelerator runtime), at least 1.
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert data_workers("auto", processes=True) == 14
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert data_workers("auto", processes=True) == 1
    assert data_workers(12, processes=True) == 12
