"""`train(cfg) -> metrics`: the training stage, callable from Hydra and from tests."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig

from training.data.batch_processes import fork_available
from training.loop.callbacks import lagged_callbacks
from training.loop.checkpoints import CheckpointManager, NonFiniteWeightsError
from training.loop.interrupt import stop_fit_on_ctrl_c
from training.config import check_cpu_memory, check_device_memory, data_workers, out_of_memory, validate_train_config
from training.errors import Interrupted, StylepipeError
from training.fileio import atomic_write_bytes, atomic_write_text, save_keras_atomically
from training.objective.objective import DISTILL_LOSS, LOSS_NAMES
from training.loop.runs import (HISTORY_RECORD, STYLE_RECORD, fingerprint, read_history, run_folder, style_record,
                                write_run_record)

log = logging.getLogger("stylepipe.train")


class TrainingDivergedError(StylepipeError):
    """The loss became NaN or infinite."""


class TrainingProgress(keras.callbacks.Callback):
    """Progress bar (or log lines when not on a terminal), MLflow metrics, checkpoints, NaN guard."""

    def __init__(self, start_step, total_steps, checkpoints, optimizer, log_every, checkpoint_every, show_bar, mlflow_module,
                 checkpoint_minutes=None, history=(), history_path=None, mlflow_logged_through=0):
        super().__init__()
        self.step = start_step
        self.start_step = start_step
        self.total_steps = total_steps
        self.checkpoints = checkpoints
        self.optimizer_ref = optimizer
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = None if checkpoint_minutes is None else 60.0 * checkpoint_minutes
        self.last_checkpoint_time = time.monotonic()
        self.timed_checkpoint_step: int | None = None  # a step needs_current_state found due by wall time
        self.mlflow = mlflow_module
        # A run killed after its last checkpoint logged steps it now trains again: MLflow keeps the first points.
        self.mlflow_logged_through = mlflow_logged_through
        self.history: list[dict] = list(history)  # mean losses of each logging interval, a resumed run's earlier ones first
        self.history_path = history_path  # rewritten at each interval, for a resume to continue the history
        self.last_logs: dict = {}
        self.logged_sums: dict = {}
        self.logged_batches = 0
        self.diverged_at: int | None = None
        self.timer_start: float | None = None
        self.timer_end: float | None = None  # the fit's end: images/s counts training steps only
        self.timed_steps = 0
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        disable=None if show_bar else True, dynamic_ncols=True)

    def _step_after(self, batch) -> int:
        # `batch` is an execution's last step (trainer.steps_per_execution may be > 1; Keras numbers a
        # short last execution as if it were full, hence the min).
        return min(self.start_step + batch + 1, self.total_steps)

    def _checkpoint_due(self, previous: int, step: int) -> bool:
        return (_crossed(previous, step, self.checkpoint_every) or step == self.total_steps
                or step == self.timed_checkpoint_step)

    def needs_current_state(self, batch) -> bool:
        """Whether execution `batch` must be handled before the next is dispatched (LaggedCallbackList):
        a checkpoint saves the weights of the step it is named after."""
        step = self._step_after(batch)
        # Wall time is read here only: the execution handed over at once is the one checkpointed.
        if self.checkpoint_seconds is not None and time.monotonic() - self.last_checkpoint_time >= self.checkpoint_seconds:
            self.timed_checkpoint_step = step
        return self._checkpoint_due(self.step, step)

    def on_train_batch_end(self, batch, logs=None):
        # Called once per execution, one execution late unless needs_current_state (LaggedCallbackList).
        if self.diverged_at is not None:  # training stops one execution after the NaN was read
            return
        previous, self.step = self.step, self._step_after(batch)
        # Keras reports running means over the epoch; keep their sums to recover interval means.
        done = self.step - self.start_step  # steps of this fit so far
        sums = {k: float(v) * done for k, v in (logs or {}).items()}
        # The first execution includes tracing/compilation: time the rest for images/s.
        if self.timer_start is None:
            self.timer_start = time.perf_counter()
        else:
            self.timed_steps += self.step - previous
        self.bar.update(self.step - previous)
        self.bar.set_postfix(loss=f"{float((logs or {}).get('loss', float('nan'))):.4g}")
        if not all(math.isfinite(v) for v in sums.values()):
            self.diverged_at = self.step
            self.last_logs = {k: float(v) for k, v in (logs or {}).items()}
            self.model.stop_training = True
            return
        if _crossed(previous, self.step, self.log_every) or self.step == self.total_steps:
            n = done - self.logged_batches
            interval = {k: (v - self.logged_sums.get(k, 0.0)) / n for k, v in sums.items()}
            self.logged_sums, self.logged_batches = sums, done
            self.last_logs = interval
            self.history.append({"step": self.step, **interval})
            if self.history_path is not None:
                atomic_write_text(self.history_path, json.dumps(self.history))
            if self.bar.disable:
                log.info("step %d/%d %s", self.step, self.total_steps,
                         " ".join(f"{k}={v:.4g}" for k, v in interval.items()))
            if self.mlflow is not None and self.step > self.mlflow_logged_through:
                self.mlflow.log_metrics(interval, step=self.step)
        if self._checkpoint_due(previous, self.step):
            try:
                self.checkpoints.save(self.step, self.model.stylizer, self.optimizer_ref)
                self.last_checkpoint_time = time.monotonic()
            except NonFiniteWeightsError as err:  # a finite loss, but the update broke the weights
                self.diverged_at = self.step
                self.last_logs = {"weights": str(err)}
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.timer_end = time.perf_counter()
        self.bar.close()

    def images_per_second(self, batch_size) -> float | None:
        if not self.timed_steps or self.timer_start is None or self.timer_end is None:
            return None
        return self.timed_steps * batch_size / (self.timer_end - self.timer_start)


def _weights_in_variables(objective) -> bool:
    """Put the weights of the last finished step back into the model's variables, where JAX's fit keeps
    them outside while it runs; False when the backend has already given those arrays to a step."""
    try:
        if hasattr(objective, "jax_state_sync"):
            objective.jax_state_sync()
        keras.ops.convert_to_numpy(objective.optimizer.iterations)
    except RuntimeError:  # JAX: "Array has been deleted"
        return False
    return True


def interrupted_run(checkpoints, objective, stylizer, total_steps: int) -> str:
    """Ctrl-C during training: checkpoint the step the weights are at (unless one holds it already) and
    say how to go on. The optimizer counts every step applied, resumed ones included."""
    optimizer = objective.optimizer
    if not _weights_in_variables(objective):
        latest = checkpoints.latest()
        if latest is None:
            return "stopped during a step, before any checkpoint: nothing saved; the same command starts again"
        return (f"stopped during a step: the newest checkpoint is step {latest[0]} of {total_steps} ({latest[1]}); "
                "the same command resumes from it")
    step = int(keras.ops.convert_to_numpy(optimizer.iterations))
    latest = checkpoints.latest()
    if latest is None or latest[0] < step:
        path = checkpoints.save(step, stylizer, optimizer)
    else:
        path = latest[1]
    return f"stopped at step {step} of {total_steps}: saved {path}; the same command resumes from it"


def _crossed(previous: int, step: int, every: int) -> bool:
    """Whether steps previous+1 .. step include a multiple of `every`."""
    return step // every > previous // every


def stylize(stylizer: keras.Model, photos: list[np.ndarray], style: np.ndarray, batch_size: int = 4) -> list[np.ndarray]:
    """Stylize photos (same size) with one style image; inference mode."""
    predictor = stylizer.get_layer("style_predictor")
    transformer = stylizer.get_layer("transformer")
    bottleneck = predictor(style[None], training=False)
    out = []
    for i in range(0, len(photos), batch_size):
        chunk = keras.ops.convert_to_tensor(np.stack(photos[i : i + batch_size]))
        repeated = keras.ops.repeat(bottleneck, len(photos[i : i + batch_size]), axis=0)
        out.extend(keras.ops.convert_to_numpy(transformer([chunk, repeated], training=False)))
    return out


def heldout_losses(objective, stylized: list[list[np.ndarray]], photos: list[np.ndarray], textures: list[np.ndarray]) -> dict[str, float]:
    """The training losses of held-out photos stylized with each style (stylized[i]: the photos with style i),
    against each style's targets at its texture size."""
    totals = {name: 0.0 for name in LOSS_NAMES}
    for images, texture in zip(stylized, textures):
        targets = objective.style_targets([texture])
        out = objective.loss_terms(np.stack(images), np.stack(photos), None, targets)
        for name in LOSS_NAMES:
            totals[name] += float(out[name]) / len(textures)
    return {"loss": sum(totals.values()), **totals}


def _build_objective(cfg, cache_dir, style_images=()):
    """The objective, its optimizer and the loss network's weights origin; style_images: each training
    style at data.style_size in the batches' order, the teacher's styles when `teacher` is set."""
    from training.network.depthwise import use_shifted_sum_depthwise
    from training.network.layers import use_space_to_depth
    from training.network.stylizer import build_stylizer
    from training.objective.objective import StylizationObjective
    from training.network.vgg16 import build_loss_network, use_relu_gradient_from_output

    keras.mixed_precision.set_global_policy(cfg.trainer.precision)
    stylizer = build_stylizer(cfg.model, cfg.backbone, cache_dir)
    loss_network, vgg_origin = build_loss_network(cfg.loss_network.weights, cache_dir)
    blocked = use_space_to_depth(stylizer.get_layer("transformer"), loss_network,
                                 max_channels=int(cfg.trainer.space_to_depth_channels))
    if blocked:
        log.info("convolutions on pixel blocks (trainer.space_to_depth_channels): %s", ", ".join(blocked))
    shifted = use_shifted_sum_depthwise(stylizer.get_layer("style_predictor"), which=cfg.trainer.shifted_sum_depthwise)
    if shifted:
        log.info("depthwise convolutions as shifted sums (trainer.shifted_sum_depthwise): %s", ", ".join(shifted))
    if cfg.trainer.relu_gradient_from_output:
        use_relu_gradient_from_output(loss_network)
    distillation = None
    if cfg.get("teacher"):
        from training.objective.distillation import Distillation

        distillation = Distillation.from_config_group(cfg.teacher, cfg.paths, list(style_images))
        log.info("distillation from teacher %s (teacher.weight=%g, %s%s; style loss against the %s)", cfg.teacher.name,
                 distillation.weight, distillation.loss,
                 f" + {distillation.contrast_weight:g} x contrast" if distillation.contrast_weight else "",
                 "teacher's images" if distillation.style_target == "teacher" else "painting")
    objective = StylizationObjective.from_config(stylizer, loss_network, cfg.loss_network, cfg.style.strength,
                                                 distillation=distillation)
    optimizer = keras.optimizers.Adam(learning_rate(cfg.trainer), clipnorm=cfg.trainer.clipnorm)
    jit = cfg.trainer.jit_compile
    # Several steps per execution: Keras hands the losses to callbacks (a device sync) once per execution.
    objective.compile(optimizer=optimizer, jit_compile=jit if isinstance(jit, bool) else "auto",
                      steps_per_execution=int(cfg.trainer.steps_per_execution))
    return objective, optimizer, vgg_origin


# Style targets are constants of the compiled step; beyond this, VGG-16 runs on the batch's style images.
MAX_FIXED_STYLE_TARGET_BYTES = 64 << 20


def fix_style_targets(objective, batches, enabled: bool, textures: list[np.ndarray]) -> bool:
    """Give `objective` the Gram targets of `batches`' styles when they are fixed crops (no augmentation).

    textures: each style image as its targets are measured (`training.data.datasets.texture_image`), in the batches' order.

    Returns whether it did. The losses are the same; VGG-16 no longer runs on each batch's copies.
    """
    if not enabled or batches.augment:
        return False
    size = objective.style_gram_table_bytes(len(batches.styles))
    if size > MAX_FIXED_STYLE_TARGET_BYTES:  # checked first: past it, VGG-16 would run on every style for nothing
        log.info("style targets: %d styles' Gram matrices (%.0f MB) are too many to fix; VGG-16 runs on every batch",
                 len(batches.styles), size / 2**20)
        return False
    objective.fix_style_targets(textures)
    log.info("style targets: fixed for %d style image(s) (trainer.fixed_style_targets)", len(batches.styles))
    return True


def learning_rate(trainer_cfg):
    """Adam's learning rate: trainer.learning_rate on every step (constant), or a schedule from it down
    to 0 at trainer.steps along a half cosine (cosine), computed from the step count inside the step."""
    rate = float(trainer_cfg.learning_rate)
    if trainer_cfg.learning_rate_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(1, int(trainer_cfg.steps)))
    return rate


def use_configured_learning_rate(optimizer, learning_rate: float) -> None:
    """A checkpoint restores Adam's learning rate with its state: the configured one wins."""
    restored = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    if not math.isclose(restored, learning_rate, rel_tol=1e-6):
        optimizer.learning_rate.assign(learning_rate)
        log.info("learning rate %g (trainer.learning_rate), not the checkpoint's %g", learning_rate, restored)


def _build(objective, optimizer, image_size, style_size=None):
    """Create every variable (model and optimizer) so a checkpoint can be restored into them."""
    style_size = style_size or image_size
    objective({"content": np.zeros((1, image_size, image_size, 3), np.float32),
               "style": np.zeros((1, style_size, style_size, 3), np.float32)})
    optimizer.build(objective.trainable_variables)


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the stylization network as configured; returns the final metrics (metrics.json)
    with this run's `images_per_second` and `mlflow_run_id`."""
    validate_train_config(cfg)
    from training.tracking import (check_tracking_store, last_logged_step, log_skipped_files, mlflow_run, record_run_id,
                                   recorded_run_id, scrub_path)

    check_tracking_store(cfg.mlflow.tracking_uri)
    from training.distribute import accelerators, device_memory

    if not accelerators():  # the step's activations live in this machine's memory
        check_cpu_memory(cfg)
    elif (memory := device_memory()) is not None and memory[1]:  # or in each GPU's
        check_device_memory(cfg, memory[1])
    from training.data import datasets as data_lib

    keras.utils.set_random_seed(int(cfg.seed))
    # The CLI's preflight has chosen the folder already (Hydra's files are there); a direct call chooses here.
    train_dir, moved = run_folder(cfg)
    if moved:
        log.warning("%s", moved)
    cache_dir = Path(cfg.paths.cache_dir)

    content = data_lib.load_content(cfg.data)
    styles, style_skips = data_lib.load_style_images(cfg.style, min_side=cfg.data.min_side, max_pixels=cfg.data.max_pixels)
    textures = [data_lib.texture_image(image, int(cfg.style.texture_size)) for image in styles.values()]
    style_files = data_lib.style_paths(cfg.style)[0]
    trained_style = style_record(cfg.style, {name: style_files[name] for name in styles})
    skipped = content.skipped.merge(style_skips)
    if skipped.count():
        log.warning("skipped %d unusable file(s): %s", skipped.count(), skipped.summary())
    log.info("content: %d training photos, %d held out; styles: %s", len(content.train), len(content.heldout), ", ".join(styles))

    from training.distribute import data_parallel

    # Everything that creates variables or runs steps happens under the data-parallel scope.
    with data_parallel(int(cfg.trainer.devices), int(cfg.trainer.batch_size)):
        style_crops = {name: data_lib.style_crop(image, cfg.data.style_size) for name, image in styles.items()}
        objective, optimizer, vgg_origin = _build_objective(cfg, cache_dir, style_crops.values())
        _build(objective, optimizer, cfg.data.image_size, cfg.data.style_size)
        stylizer = objective.stylizer
        if cfg.get("init") and cfg.init.name == "magenta_published":
            from training.weights.magenta_import import load_published_into

            log.info("initialised from Magenta's published model: %s", load_published_into(stylizer, cfg.paths.published_dir))
        elif cfg.get("init") and cfg.init.name == "tfhub":
            from training.weights.tfhub_import import load_tfhub_into

            log.info("initialised from the TF Hub module %s: %s", cfg.init.handle, load_tfhub_into(stylizer, cfg.init.handle))

        run_fingerprint = fingerprint(cfg)
        checkpoints = CheckpointManager(train_dir / "checkpoints", run_fingerprint, keep=cfg.trainer.keep_checkpoints)
        start_step = 0
        for partial in checkpoints.remove_partial_saves():
            log.info("removed %s, left by a run killed while saving", partial.name)
        # run_folder gave a folder of this run or a free one: any checkpoint there is this run's.
        if (latest := checkpoints.latest()) is not None:
            start_step = checkpoints.restore(latest[1], stylizer, optimizer)
            log.info("resuming from %s (step %d)", latest[1], start_step)
            if cfg.trainer.learning_rate_schedule == "constant":  # a schedule follows the restored step count
                use_configured_learning_rate(optimizer, float(cfg.trainer.learning_rate))
        # A resume continues the earlier part's MLflow run and loss history.
        earlier_run = recorded_run_id(train_dir) if start_step else None
        earlier_history = read_history(train_dir, start_step) if start_step else []
        write_run_record(train_dir, cfg.run_name, run_fingerprint)
        total_steps = int(cfg.trainer.steps)
        remaining = max(0, total_steps - start_step)

        import mlflow

        tags = {"stage": "train", "style": cfg.style.name, "model": cfg.model.name, "resumed_from_step": str(start_step)}
        with mlflow_run(cfg, cfg.run_name, tags=tags, continue_run_id=earlier_run) as run:
            record_run_id(train_dir, run.info.run_id)
            mlflow.log_params({"style": cfg.style.name, "model": cfg.model.name, "backbone": cfg.backbone.name,
                               "keras_backend": keras.backend.backend(), "vgg16_weights_origin": vgg_origin,
                               "style_images": len(trained_style["images"]),
                               **({"style_image": scrub_path(trained_style["image"]), "style_sha256": trained_style["sha256"]}
                                  if trained_style["single"] else {})})
            if cfg.get("teacher"):
                mlflow.log_params({"teacher": cfg.teacher.name, "teacher_weight": float(cfg.teacher.weight),
                                   "teacher_loss": cfg.teacher.loss})
            mlflow.log_metric("skipped_files", skipped.count())
            log_skipped_files(skipped)

            progress = TrainingProgress(
                start_step, total_steps, checkpoints, optimizer, cfg.trainer.log_every,
                cfg.trainer.checkpoint_every, cfg.trainer.progress, mlflow, cfg.trainer.checkpoint_minutes,
                history=earlier_history, history_path=train_dir / HISTORY_RECORD,
                mlflow_logged_through=last_logged_step(run.info.run_id) if earlier_run else 0,
            )
            fixed_targets = False
            if remaining:
                batches = data_lib.TrainingBatches(content, styles, cfg.data, cfg.style, cfg.trainer.batch_size,
                                                   seed=int(cfg.seed))
                fixed_targets = fix_style_targets(objective, batches, cfg.trainer.fixed_style_targets, textures)
                mlflow.log_param("fixed_style_targets", fixed_targets)
                # A resumed run continues the same batch sequence (folders): batch i is a function of (seed, i).
                processes = cfg.trainer.data_worker_processes and batches.random_access and fork_available()
                workers = data_workers(cfg.trainer.data_workers, processes)
                log.info("input: %d batch %s (trainer.data_workers=%s), %s batches", workers,
                         "process(es)" if processes else "thread(s)", cfg.trainer.data_workers, cfg.trainer.input_dtype)
                dataset = batches.training_input(start_step, remaining, workers=workers, dtype=cfg.trainer.input_dtype,
                                                 processes=processes)
                try:
                    with stop_fit_on_ctrl_c() as ctrl_c:
                        objective.fit(dataset, steps_per_epoch=remaining, epochs=1, verbose=0, shuffle=False,
                                      callbacks=lagged_callbacks([progress, ctrl_c], objective))
                    if ctrl_c.requested and progress.step < total_steps:
                        raise KeyboardInterrupt
                except KeyboardInterrupt:
                    raise Interrupted(interrupted_run(checkpoints, objective, stylizer, total_steps)) from None
                except Exception as err:  # the step's activations did not fit: one line, the checkpoints kept
                    if (refusal := out_of_memory(err, cfg)) is None:
                        raise
                    raise refusal from None
            if progress.diverged_at is not None:
                last = checkpoints.latest()
                raise TrainingDivergedError(
                    f"training diverged at step {progress.diverged_at}: loss or weights became NaN/Inf ({progress.last_logs}); "
                    f"last good checkpoint: {last[1] if last else 'none'}. Lower trainer.learning_rate or set trainer.clipnorm."
                )

            model_path = save_keras_atomically(stylizer, train_dir / "model.keras")
            # What the export bakes by default (export/style.py); written with the model it describes.
            atomic_write_text(train_dir / STYLE_RECORD, json.dumps(trained_style, indent=2))

            # Scored as the evaluation and the published model see them: photos at data.heldout_size,
            # styles at data.style_size, whatever size the training crops had.
            size = int(cfg.data.heldout_size)
            photos = [data_lib.fit_crop(photo, size, size) for photo in content.heldout_full]
            stylized = {name: stylize(stylizer, photos, crop) for name, crop in style_crops.items()}
            heldout = heldout_losses(objective, list(stylized.values()), photos, textures)
            grid_styles, columns = styles, stylized
            if objective.distillation is not None:  # beside the perceptual "loss", not in it: comparable across runs
                from training.objective.distillation import teacher_columns

                heldout[DISTILL_LOSS], teacher_images = objective.distillation.heldout(photos, stylized)
                grid_styles, columns = teacher_columns(styles, stylized, teacher_images)
            mlflow.log_metrics({f"heldout_{k}": v for k, v in heldout.items()}, step=total_steps)
            from training.loop.sample_grid import make_grid, png_bytes

            grid = make_grid(photos, content.heldout_names, grid_styles, columns)
            grid_path = train_dir / "samples.png"
            atomic_write_bytes(grid_path, png_bytes(grid))

            metrics = {
                "model": cfg.model.name,  # names the export and evaluation runs of this model
                "style": cfg.style.name,
                "style_strength": float(cfg.style.strength),  # the objective's settings, for scoring the model later
                "texture_size": int(cfg.style.texture_size),
                "steps": total_steps,
                "trained_steps": remaining,
                "resumed_from_step": start_step,
                "heldout": heldout,  # losses on held-out photos x every style, at the final step
                # mean losses of the last logging interval, an earlier part's when this one trained nothing
                "train": progress.last_logs or ({k: v for k, v in progress.history[-1].items() if k != "step"}
                                                if progress.history else None),
                "fixed_style_targets": fixed_targets,  # VGG-16 style targets computed once, not per batch
                "skipped_files": skipped.count(),
                "skipped_by_reason": skipped.by_reason(),
                "styles": list(styles),
                "heldout_photos": content.heldout_names,
                "keras_backend": keras.backend.backend(),
                "history": progress.history,
            }
            atomic_write_text(train_dir / "metrics.json", json.dumps(metrics, indent=2))
            # This run's speed and MLflow run: in MLflow and the returned metrics, not in the folder's
            # files, which are the same for the same training wherever it runs (DVC hashes them).
            this_run = {"images_per_second": progress.images_per_second(cfg.trainer.batch_size),
                        "mlflow_run_id": run.info.run_id}
            if this_run["images_per_second"] is not None:
                mlflow.log_metric("images_per_second", this_run["images_per_second"])
                log.info("trained at %.1f images/s", this_run["images_per_second"])
            memory = device_memory()
            if memory is not None:  # what data.image_size and trainer.batch_size cost on this GPU
                this_run["peak_device_memory_bytes"] = memory[0]
                mlflow.log_metric("peak_device_memory_gb", memory[0] / 1e9)
                usable = f" of {memory[1] / 1e9:.2f} GB" if memory[1] else ""  # TensorFlow does not say
                log.info("peak GPU memory %.2f GB%s (batch %d at %d px)", memory[0] / 1e9, usable,
                         cfg.trainer.batch_size, cfg.data.image_size)
            mlflow.log_artifact(str(grid_path), "samples")
            mlflow.log_artifact(str(train_dir / "metrics.json"))
            mlflow.log_artifact(str(train_dir / STYLE_RECORD), "model")
            mlflow.log_artifact(str(model_path), "model")
            log.info("wrote %s (style %s: %s), %s and %s", model_path, cfg.style.name, train_dir / STYLE_RECORD, grid_path,
                     train_dir / "metrics.json")
    return {**metrics, **this_run}
