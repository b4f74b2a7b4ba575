"""benchmarks/train_throughput.py on the CPU: the real step at a tiny size, side by side variants, FLOPs.

The GPU figures in docs/performance.md come from this script; here it runs for real on JAX/CPU
(no timings asserted: speed belongs to the benchmark, not to tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.slow
def test_throughput_benchmark_measures_variants_side_by_side(tmp_path):
    out = tmp_path / "throughput.json"
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", "--models", "magenta_lite", "--batch-sizes", "2",
         "--precisions", "float32", "--image-size", "64", "--steps", "5", "--warmup", "1", "--input-dtypes", "uint8",
         "--variants", "trainer.space_to_depth_channels=8", "base", "loop=training trainer.steps_per_execution=2",
         "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    blocked, base, training = report["results"]
    assert (base["loop"], base["steps_per_execution"]) == ("bare", 1)
    assert (training["variant"], training["loop"], training["steps_per_execution"]) == (
        "loop=training trainer.steps_per_execution=2", "training", 2)
    for row in (base, training):
        assert row["finite_loss"] and row["input_dtype"] == "uint8" and row["images_per_s"] > 0
        assert 0 < row["device_step_ms"] and row["host_wait_fraction"] < 1
    # The training loop's loss reads wait for the device, timed; the bare loop reads none in the training thread.
    assert training["device_wait_ms_per_execution"] >= 0 and base["device_wait_ms_per_execution"] is None
    # The training thread's time in Keras' train function, of which getting batches (HostClock).
    for row in (base, training):
        assert row["host_train_function_ms"] >= row["host_batch_ms"] > 0
    assert base["input_read_ms"] is None  # synthetic batches: no worker processes to read from
    # The steady window runs from the execution ending at step 1 (after the first fifth) to the last
    # step, 4, though Keras reports the short last execution (1 step of 2) as ending at step 5.
    assert [row["timed_steps"] for row in (blocked, base, training)] == [3, 3, 3]
    # Two steps per execution and a loss read after each: the same steps, the same loss.
    assert training["loss"] == pytest.approx(base["loss"], rel=1e-5)
    # Convolutions on pixel blocks: the same training (float summation order aside).
    assert blocked["loss"] == pytest.approx(base["loss"], rel=1e-4) and blocked["finite_loss"]
    flops = report["flops"]["magenta_lite"]
    # Counted on the first variant, which blocks convs: still the model's own FLOPs, not the blocked ones'.
    assert flops["transfer_forward"] == pytest.approx(plain_transfer_flops(alpha=0.25, size=64), rel=1e-3)
    # Analytic FLOPs agree with the traced gradient step.
    assert flops["total"] == pytest.approx(flops["traced_total"], rel=0.03)
    assert "device ms" in result.stdout and "loop=training trainer.steps_per_execution=2" in result.stdout


@pytest.mark.slow
def test_pipeline_rows_time_the_training_threads_reads_and_premade_batches_train_alike(tmp_path):
    """--input pipeline with worker processes: the row records the training thread's reads of the workers'
    batches; feed=premade feeds the same batches from memory (the same loss), with no reads to time."""
    out = tmp_path / "pipeline.json"
    live = "loop=training style=all trainer.data_worker_processes=true trainer.steps_per_execution=2 steps=6"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", "--models", "magenta_lite", "--batch-sizes", "2",
         "--precisions", "float32", "--image-size", "64", "--steps", "4", "--warmup", "2", "--input-dtypes", "uint8",
         "--input", "pipeline", "--workers", "2", "--no-pipeline-rate", "--variants", live, f"{live} feed=premade",
         "--out", str(out)],
        cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    fed, premade = json.loads(out.read_text())["results"]
    assert (fed["feed"], premade["feed"]) == ("live", "premade")
    assert fed["steps"] == premade["steps"] == 6  # the variants' steps=6, not --steps 4
    assert premade["loss"] == fed["loss"]  # the same batches, in the same order
    assert fed["input_read_ms"] >= fed["input_wait_ms"] >= 0 and premade["input_read_ms"] is None
    assert fed["worker_batch_ms"] > 0 and premade["worker_batch_ms"] is None  # the workers' own time per batch
    # Where in the fit time went: 2-step executions end at steps 1, 3 and 5, in tenths 1, 5 and 8 of 6 steps;
    # together they span fit's start to its last loss read, within the fit's own time.
    tenths = fed["step_ms_by_tenth"]
    assert [ms is not None for ms in tenths] == [k in (1, 5, 8) for k in range(10)]
    assert 0 < 2 * sum(ms for ms in tenths if ms) <= 6 * fed["fit_step_ms"]
    # Each of the 5 reads from the workers (batch 0 is made in the training thread) falls in one tenth.
    assert sum(fed["input_wait_ms_by_tenth"]) == pytest.approx(5 * fed["input_wait_ms"])
    assert premade["input_wait_ms_by_tenth"] is None
    assert fed["batch_transfer_ms"] > 0 and fed["device_wait_ms_per_execution"] >= 0
    # Getting a batch includes reading it from the workers (on a GPU, also the next one's device_put).
    assert fed["host_train_function_ms"] >= fed["host_batch_ms"] > 0
    assert "one batch onto the device" in result.stdout
    assert "6 steps, ms per step by tenth of the fit: - " in result.stdout


def plain_transfer_flops(alpha: float, size: int) -> float:
    """2 * multiply-adds of every conv of the transfer network on one size x size image, from its output shapes."""
    import keras
    import numpy as np

    from training.network.magenta_network import build_transfer_network

    model = build_transfer_network(alpha=alpha)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    probe = keras.Model(model.inputs, [l.output for l in convs])
    outputs = probe([np.zeros((1, size, size, 3), np.float32), np.zeros((1, 1, 1, 100), np.float32)])
    return sum(2 * np.prod(y.shape[1:]) * np.prod(l.kernel.shape[:3]) for l, y in zip(convs, outputs))


@pytest.mark.slow
def test_convolution_list_accounts_for_the_step_flops(tmp_path):
    """benchmarks/conv_channels.py --list: the step's convolutions, by part, add up to flops.py's count."""
    out = tmp_path / "convolutions.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.conv_channels", "--model", "magenta_lite", "--batch-size", "2", "--image-size", "64",
         "--list", "--out", str(out)],
        cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    convolutions = report["convolutions"]
    assert {c["part"] for c in convolutions} == {"transfer", "backbone", "vgg16 stylized", "vgg16 style target",
                                                 "vgg16 content target"}
    # The five residual blocks' ten 3x3 convolutions share one shape: one entry that runs 10 times.
    assert max(c["count"] for c in convolutions if c["part"] == "transfer") == 10
    assert {c["gradients"] for c in convolutions if c["part"] == "vgg16 stylized"} == {"input"}
    assert {c["gradients"] for c in convolutions if c["part"] == "backbone"} == {"none"}  # MobileNetV2 is frozen
    # Everything but the Gram matrices (stylized and style image forward, stylized backward: one product) is a convolution.
    per_image = report["step_flops_per_image"]
    gram = 3 * per_image["gram_forward"] * report["batch_size"] / 1e9
    assert report["conv_gflops_per_step"] + gram == pytest.approx(report["step_gflops"], rel=1e-3)


@pytest.mark.parametrize("arguments, message", [
    (["--variants", "base", "loop=fast"], "--variants 'loop=fast': loop=fast: use one of bare, training, synced"),
    (["--variants", "feed=later"], "--variants 'feed=later': feed=later: use one of live, premade"),
    (["--variants", "steps=0"], "--variants 'steps=0': steps=0: use a positive number of steps"),
    (["--variants", "feed=premade"], "--variants 'feed=premade': feed=premade premakes the pipeline's batches: "
                                     "use --input pipeline"),
], ids=["loop", "feed", "steps", "premade-synthetic"])
@pytest.mark.slow
def test_a_bad_variant_is_a_usage_error_before_any_work(tmp_path, arguments, message):
    out = tmp_path / "throughput.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", *arguments, "--out", str(out)],
                            cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists()


def _record_made_before_the_clock_fix() -> dict:
    """A training-loop record as the old clock wrote it (an H200's lite model, batch 64, 60 steps): at 8 steps
    per execution it divided 44 steps' time by 48, so those steps come out shorter than the device step."""
    rows = []
    for loop, per_execution, step_ms, device_step_ms in [
            ("bare", 1, 50.441, 50.636), ("training", 1, 57.063, 50.660), ("training", 8, 47.168, 50.705),
            ("bare", 1, 50.448, 50.622), ("training", 1, 57.828, 50.605), ("training", 8, 47.055, 50.733)]:
        images_per_s = 64 * 1000 / step_ms
        tflops_per_s = images_per_s * 148.081 / 1000
        rows.append({"model": "magenta_lite", "batch_size": 64, "loop": loop, "steps_per_execution": per_execution,
                     "steps": 60, "step_ms": step_ms, "device_step_ms": device_step_ms, "images_per_s": images_per_s,
                     "tflops_per_s": tflops_per_s, "mfu_peak": tflops_per_s / 989.4, "mfu_matmul": tflops_per_s / 784.0})
    return {"command": "benchmarks/train_throughput.py --batch-sizes 64 --steps 60 ...", "results": rows}


def test_restating_an_old_record_puts_its_steps_at_or_above_the_device_step(tmp_path):
    record = _record_made_before_the_clock_fix()
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    for expected in ("2 rows restated", "0 rows restated"):  # a second pass changes nothing
        result = subprocess.run([sys.executable, "-m", "benchmarks.restate_records", str(path)], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and expected in result.stdout, result.stderr[-2000:]
    rows = json.loads(path.read_text())["results"]
    eight = [r for r in rows if r["steps_per_execution"] == 8]
    assert len(eight) == 2 and all(r["step_ms"] < r["device_step_ms"] for r in eight)  # the error's symptom
    for row in eight:  # 60 steps of 8: the window ran 44 steps and was divided by 48
        assert row["timed_steps"] == 44 and row["step_ms_restated"] == pytest.approx(row["step_ms"] * 48 / 44)
        assert row["device_step_ms"] <= row["step_ms_restated"]
        assert row["images_per_s_restated"] == pytest.approx(64 * 1000 / row["step_ms_restated"])
    assert all("step_ms_restated" not in r for r in rows if r["steps_per_execution"] == 1)
