"""Config: each bad value ends the real CLI in one line naming the key and what is allowed, exit 1,
before any work: no outputs folder is created (Hydra's run folder included), no TensorFlow start-up.

What each test guards: unknown style name, missing style image path, alpha <= 0, negative steps,
image size not divisible by 4, a missing photo folder, an export size the model cannot take, a bad
distillation teacher or teacher.weight: test_bad_value_is_one_line_before_any_work; the schema's examples
(a learning rate out of range, text for a number, an unknown key, a bad export size or threshold, evaluate's
runs, threads and compare, stylize's strength) leave an earlier run's files, its .hydra/config.yaml included,
as they were: test_each_schema_example_is_one_line_and_writes_nothing; a crop size and
batch too large for this machine's memory: test_a_cpu_step_too_large_for_memory_is_refused_with_its_estimate
(in-process: tests/test_export.py::test_bad_export_config_is_a_clear_error).
"""

from __future__ import annotations

import time

import pytest

from helpers import CACHE_DIR, tracking_uri
from reliability_helpers import PHOTOS, UNTRACKED_STAGES, error_lines, run_stage

CASES = [
    # stage, override, start of the error line, something the line must list as allowed
    ("train", "style=nope", "error: style=nope is not allowed: one of all, ", "starry"),
    ("train", "style.images.starry=/nonexistent/starry.jpg", "error: style.images.starry=/nonexistent/starry.jpg: no such file",
     "great_wave"),
    ("train", "model.alpha=0", "error: model.alpha=0 is not allowed", "> 0"),
    ("train", "model.alpha=-0.5", "error: model.alpha=-0.5 is not allowed", "> 0"),
    ("train", "model=realtime model.full_res_kernel=4", "error: model.full_res_kernel=4 is not allowed", "odd integer"),
    ("train", "model=realtime model.border_pad=6", "error: model.border_pad=6 is not allowed", "divisible by 4"),
    ("train", "trainer.steps=-3", "error: trainer.steps=-3 is not allowed", ">= 0"),
    ("train", "data.image_size=66", "error: data.image_size=66 is not allowed", "divisible by 4"),
    ("train", "trainer.input_dtype=int8", "error: trainer.input_dtype='int8' is not allowed", "float32, uint8"),
    ("train", "trainer.space_to_depth_channels=-1", "error: trainer.space_to_depth_channels=-1 is not allowed", "0: off"),
    ("train", "trainer.data_workers=0", "error: trainer.data_workers=0 is not allowed", "or auto"),
    ("train", "trainer.fixed_style_targets=maybe", "error: trainer.fixed_style_targets='maybe' is not allowed",
     "true or false"),
    ("train", "trainer.shifted_sum_depthwise=yes", "error: trainer.shifted_sum_depthwise='yes' is not allowed",
     "one of none, strided, all"),
    ("train", "trainer.relu_gradient_from_output=maybe",
     "error: trainer.relu_gradient_from_output='maybe' is not allowed", "true or false"),
    ("train", "trainer.data_worker_processes=2", "error: trainer.data_worker_processes=2 is not allowed", "true or false"),
    ("train", "style.strength=11", "error: style.strength=11 is not allowed", "from 1 (mostly the photo) to 10"),
    ("train", "style.texture_size=2048", "error: style.texture_size=2048 is not allowed", "from 16 to 1024"),
    ("train", "style.texture_size=512 trainer.fixed_style_targets=false", "error: style.texture_size=512 is not allowed",
     "data.style_size (256) with trainer.fixed_style_targets=false"),
    ("train", "trainer.stepz=3", "error: trainer.stepz=3 is not allowed: not a key of trainer (its keys: ",
     "steps, steps_per_execution"),
    ("train", "trainer.checkpoint_minutes=0", "error: trainer.checkpoint_minutes=0 is not allowed", "null for checkpoints by steps"),
    ("train", "trainer.allow_cpu=maybe", "error: trainer.allow_cpu='maybe' is not allowed", "true or false"),
    ("train", "trainer.learning_rate=abc", "error: trainer.learning_rate='abc' is not allowed", "a number > 0"),
    ("train", "trainer.learning_rate=0", "error: trainer.learning_rate=0 is not allowed", "a number > 0"),
    ("train", "seed=abc", "error: seed='abc' is not allowed", "an integer"),
    ("train", "teacher=nope", "error: teacher=nope is not allowed: one of magenta_published, model", "configs/teacher/"),
    ("train", "teacher=magenta_published teacher.weight=-1", "error: teacher.weight=-1 is not allowed", "a number >= 0"),
    ("train", "teacher=magenta_published teacher.weight=abc", "error: teacher.weight='abc' is not allowed", ">= 0"),
    ("train", "teacher=magenta_published teacher.loss=huber", "error: teacher.loss='huber' is not allowed", "l1, l2"),
    ("train", "teacher=model", "error: teacher.model_path is required with teacher=model", "model.keras"),
    ("train", "teacher=model teacher.model_path=/nonexistent/model.keras",
     "error: teacher.model_path=/nonexistent/model.keras: no such file", "pipelines.train"),
    ("train", "data=folder data.content_dir=/nonexistent/photos", "error: data.content_dir=/nonexistent/photos: no such folder",
     "no such folder"),
    ("export", "export.sizes=abc", "error: export.sizes='abc' is not allowed", "[[height, width], ...]"),
    ("export", "export.thresholds.tflite_fp16=abc", "error: export.thresholds.tflite_fp16='abc' is not allowed", "dB"),
    ("export", "export.parity_photos=0", "error: export.parity_photos=0 is not allowed", ">= 1"),
    ("export", "export.sizes=[[66,64]]", "error: export.sizes=[[66, 64]] is not allowed", "divisible by 4"),
    ("export", "export.style=nope", "error: export.style='nope' is not allowed", "starry"),
]


@pytest.mark.parametrize("stage, override, starts, allowed", CASES, ids=[c[1] for c in CASES])
def test_bad_value_is_one_line_before_any_work(tmp_path, stage, override, starts, allowed):
    """Guards pipelines.cli.preflight and the validators: without them Hydra prints a multi-line
    block (unknown style) or the stage fails after creating outputs/ and importing TensorFlow."""
    start = time.perf_counter()
    result = run_stage(stage, ["experiment=smoke", *override.split()] if stage == "train" else [override], tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == error_lines(result.stderr), result.stderr  # nothing but the error
    [line] = error_lines(result.stderr)
    assert line.startswith(starts) and allowed in line, line
    assert not (tmp_path / "outputs").exists()  # Hydra's run folder included: an earlier run's .hydra/ is kept
    assert elapsed < 30, f"{elapsed:.1f} s: the check ran after start-up work"  # ~1 s; TensorFlow alone takes longer


# The schema's examples (training/schema.py; every key: tests/test_schema.py): stage, override, start of the line.
SCHEMA_CASES = [
    ("train", "trainer.learning_rate=abc", "error: trainer.learning_rate='abc' is not allowed: a number > 0 ("),
    ("train", "trainer.learning_rate=-1", "error: trainer.learning_rate=-1 is not allowed: a number > 0 ("),
    ("train", "seed=abc", "error: seed='abc' is not allowed: an integer"),
    ("train", "data.image_size=-1", "error: data.image_size=-1 is not allowed: an integer >= 16 divisible by 4"),
    ("train", "trainer.batch_size=0", "error: trainer.batch_size=0 is not allowed: an integer >= 1"),
    ("train", "model=nosuch", "error: model=nosuch is not allowed: one of magenta, magenta_lite, realtime (configs/model/)"),
    ("train", "+trainer.stepz=3", "error: trainer.stepz=3 is not allowed: not a key of trainer (its keys: allow_cpu, "),
    ("export", "export.sizes=abc", "error: export.sizes='abc' is not allowed: [[height, width], ...] with each side"),
    ("export", "export.sizes=[[384,383]]", "error: export.sizes=[[384, 383]] is not allowed: [[height, width], ...] "
     "with each side an integer >= 16 divisible by 4"),
    ("export", "export.thresholds.tflite_fp16=abc", "error: export.thresholds.tflite_fp16='abc' is not allowed: a number > 0"),
    ("evaluate", "evaluate.runs=0", "error: evaluate.runs=0 is not allowed: an integer >= 1"),
    ("evaluate", "evaluate.threads=[0]", "error: evaluate.threads=[0] is not allowed: a list of LiteRT thread counts"),
    ("evaluate", "evaluate.compare=abc", "error: evaluate.compare='abc' is not allowed: a list of export folders"),
    ("evaluate", "evaluate.style_embedder=fp16", "error: evaluate.style_embedder='fp16' is not allowed: one of float, int8"),
    ("stylize", "strength=2", "error: strength=2 is not allowed: a number from 0 (the photo's own style) to 1"),
]


def _earlier_run(outputs):
    """Files an earlier run of each stage left in `outputs`, Hydra's record of the training run included."""
    for name, text in {"train/.hydra/config.yaml": "seed: 0\n", "train/model.keras": "model", "export/manifest.json": "{}",
                       "evaluate/metrics.json": "{}", "stylized/photo_starry.jpg": "photo"}.items():
        (outputs / name).parent.mkdir(parents=True, exist_ok=True)
        (outputs / name).write_text(text)


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused_leaving_outputs_alone(tmp_path, stage, override, starts):
    _earlier_run(tmp_path / "outputs")
    before = _files(tmp_path)
    args = ["experiment=smoke", override] if stage == "train" else [f"input={PHOTOS[0]}", override] if stage == "stylize" \
        else [override]
    if stage not in UNTRACKED_STAGES:  # a store not made yet: the refusal must not make it either
        args.append(f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
    result = run_stage(stage, args, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == error_lines(result.stderr), result.stderr  # nothing but the error
    [line] = error_lines(result.stderr)
    assert line.startswith(starts), line
    assert _files(tmp_path) == before  # no new file, none changed: the earlier run's .hydra/config.yaml as it was


def test_a_bad_value_leaves_an_earlier_run_as_it_was(tmp_path):
    """Guards the order in pipelines.cli.preflight: the schema refuses before Hydra writes its run folder."""
    _refused_leaving_outputs_alone(tmp_path, *SCHEMA_CASES[1])


@pytest.mark.parametrize("stage, override, starts", SCHEMA_CASES, ids=[c[1] for c in SCHEMA_CASES])
def test_each_schema_example_is_one_line_and_writes_nothing(tmp_path, stage, override, starts):
    """The schema's examples through the real CLI of each stage: exit 1, one line, every file as it was."""
    _refused_leaving_outputs_alone(tmp_path, stage, override, starts)


def test_gpu_accelerator_on_a_cpu_stops_before_any_work(tmp_path):
    """Guards training.config.check_accelerator: the default run (accelerator=gpu) on this CPU-only machine
    used to start a run of days; it says so in one line with an estimate and the command to run instead
    (its experiment replaced by experiment=smoke), then stops in one error line, before Hydra creates the
    run folder."""
    from training.distribute import accelerators

    if accelerators():
        pytest.skip("this machine has a GPU: accelerator=gpu runs")
    result = run_stage("train", ["style=starry", "init=magenta_published", "experiment=full"], tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    [line] = error_lines(result.stderr)
    assert line == ("error: no GPU here for accelerator=gpu: add experiment=smoke for a short CPU run, or "
                    "accelerator=cpu to run this one on the CPU")
    [warning] = [l for l in result.stderr.splitlines() if l.startswith("this run is for GPUs")]
    assert "(mixed_bfloat16, batch 64, 2000 steps): about " in warning and " h on this machine's " in warning, warning
    assert warning.endswith("for minutes instead: python -m pipelines.train " + " ".join(
        [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.cache_dir={CACHE_DIR}",
         f"mlflow.tracking_uri={tracking_uri(tmp_path)}", "style=starry", "init=magenta_published",
         "trainer.progress=false", "experiment=smoke"])), warning
    assert not (tmp_path / "outputs").exists()


def test_gpu_accelerator_runs_on_a_cpu_when_allowed(tmp_path):
    """trainer.allow_cpu=true passes the guard: the run goes on to its data (a missing folder here,
    so it ends in seconds with that error instead)."""
    result = run_stage("train", ["style=starry", "trainer.allow_cpu=true", f"data.content_dir={tmp_path / 'none'}"],
                       tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert error_lines(result.stderr) == [f"error: data.content_dir={tmp_path / 'none'}: no such folder"]
    assert "run is for GPUs" not in result.stderr


def test_a_cpu_step_too_large_for_memory_is_refused_with_its_estimate(tmp_path):
    """Guards training.config.check_cpu_memory: a crop size and batch whose step would exhaust the
    machine's memory are refused with the estimate (about 2.5 KB per pixel, measured); a fitting one passes."""
    from helpers import compose_train
    from training.config import ConfigError, check_cpu_memory

    cfg = compose_train(["style=starry", "experiment=smoke", "data.image_size=1024", "data.resize_short_side=[1024,1100]"],
                        tmp_path)
    with pytest.raises(ConfigError) as err:
        check_cpu_memory(cfg, total_bytes=8e9)
    assert str(err.value) == ("data.image_size=1024 with trainer.batch_size=4 needs about 12 GB of memory to train on "
                              "this CPU (about 2.5 KB per pixel of the batch), more than its 8 GB: lower "
                              "data.image_size or trainer.batch_size")
    check_cpu_memory(cfg, total_bytes=16e9)


def test_a_gpu_step_too_large_for_the_gpu_is_refused_with_its_estimate(tmp_path):
    """Guards training.config.check_device_memory: each GPU's share of the batch is checked against
    what its allocator may use (about 0.9 KB per pixel, measured on an H100) before any work."""
    from helpers import compose_train
    from training.config import ConfigError, check_device_memory

    cfg = compose_train(["style=starry", "data.image_size=1024", "data.resize_short_side=[1024,1100]"], tmp_path)
    assert cfg.trainer.batch_size == 64
    with pytest.raises(ConfigError) as err:
        check_device_memory(cfg, total_bytes=60e9)  # an H100's share for JAX
    assert str(err.value) == ("data.image_size=1024 with trainer.batch_size=64 needs about 61 GB of memory to train "
                              "on each GPU (about 0.9 KB per pixel of the batch), more than its 60 GB: lower "
                              "data.image_size or trainer.batch_size")
    check_device_memory(cfg, total_bytes=100e9)  # an H200's
    two = compose_train(["style=starry", "data.image_size=1024", "data.resize_short_side=[1024,1100]",
                         "trainer.devices=2"], tmp_path)
    check_device_memory(two, total_bytes=60e9)  # half the batch on each of two


def test_a_step_out_of_device_memory_is_one_line_naming_what_to_lower(tmp_path):
    """Guards training.config.out_of_memory, which turns an allocation the device refused during the
    training step into one line; here a real one (XLA's RESOURCE_EXHAUSTED on this CPU). Other errors pass."""
    import jax.numpy as jnp
    from helpers import compose_train
    from training.config import out_of_memory

    cfg = compose_train(["style=starry", "experiment=smoke"], tmp_path)
    with pytest.raises(Exception) as err:
        jnp.ones((2**40,), jnp.uint8).block_until_ready()  # 1 TB
    refusal = out_of_memory(err.value, cfg)
    assert str(refusal) == ("out of memory training at data.image_size=128 with trainer.batch_size=4 "
                            "(RESOURCE_EXHAUSTED: Out of memory allocating 1099511627776 bytes.): "
                            "lower data.image_size or trainer.batch_size")
    assert out_of_memory(ValueError("a shape mismatch"), cfg) is None


@pytest.mark.slow
def test_a_step_too_large_for_this_machine_is_one_line_before_any_work(tmp_path):
    """The same through the CLI on this machine: exit 1, one line, nothing trained or written but the log."""
    import psutil

    side = 4096  # 4 x 4096^2 pixels: about 170 GB
    if 2e9 + 2.5e3 * 4 * side * side <= psutil.virtual_memory().total:
        pytest.skip("this machine has the memory for it")
    result = run_stage("train", ["style=starry", "experiment=smoke", f"data.image_size={side}",
                                 f"data.resize_short_side=[{side},{side}]"], tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: data.image_size={side} with trainer.batch_size=4 needs about ") and "GB" in line
    assert "Traceback" not in result.stderr and not (tmp_path / "outputs" / "train" / "checkpoints").exists()
