"""Interruption: a SIGKILL during a checkpoint save, and a run whose loss becomes NaN.

What each test guards:
- killed mid-way, resumes from its last checkpoint, loses at most one interval; a checkpoint is
  never left half-written (killed during a save): test_kill_during_a_save_resumes_from_the_last_whole_checkpoint
- NaN/Inf loss stops the run with a clear error and keeps the last good checkpoint:
  test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint,
  test_non_finite_weights_are_never_written_as_a_checkpoint
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import mlflow
import numpy as np
import pytest

from helpers import CACHE_DIR, REPO, compose_train, tracking_uri
from reliability_helpers import TINY, run_stage

pytestmark = pytest.mark.slow
EVERY = 2  # trainer.checkpoint_every
TEMP = re.compile(r"^\.ckpt-(\d{8})\.npz\..*\.tmp$")


def read_whole(path):
    """Every array of a checkpoint, read to the end (a half-written file fails here)."""
    with np.load(path) as stored:
        return {k: stored[k] for k in stored.files}


def test_kill_during_a_save_resumes_from_the_last_whole_checkpoint(tmp_path):
    """Guards atomic checkpoint writes and resume: SIGKILL while checkpoint 2 is being written leaves
    checkpoint 1 whole and nothing half-written under a checkpoint name; the same command resumes from
    checkpoint 1 (losing one interval), and the interrupted save's temporary file is removed."""
    args = [*TINY, "trainer.steps=400", f"trainer.checkpoint_every={EVERY}"]
    cmd = [sys.executable, "-m", "pipelines.train", f"paths.output_dir={tmp_path / 'outputs'}",
           f"paths.cache_dir={CACHE_DIR}", f"mlflow.tracking_uri={tracking_uri(tmp_path)}",
           "trainer.progress=false", *args]
    ckpt_dir = tmp_path / "outputs" / "train" / "checkpoints"
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_during = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
            saving = [int(m.group(1)) for n in names if (m := TEMP.match(n))]
            if saving and saving[0] >= 2 * EVERY:  # the second save is under way: kill it now
                proc.send_signal(signal.SIGKILL)
                killed_during = saving[0]
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert killed_during == 2 * EVERY, "never saw the second checkpoint being written"
    names = sorted(os.listdir(ckpt_dir))
    assert any(TEMP.match(n) for n in names), f"the kill came after the save finished: {names}"
    whole = sorted(ckpt_dir.glob("ckpt-*.npz"))
    assert [p.name for p in whole] == [f"ckpt-{EVERY:08d}.npz"]
    for path in whole:
        assert json.loads(bytes(read_whole(path)["meta"]).decode())["step"] == EVERY

    result = run_stage("train", [*TINY, f"trainer.steps={killed_during + EVERY}", f"trainer.checkpoint_every={EVERY}"],
                       tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "outputs" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == EVERY
    assert killed_during - metrics["resumed_from_step"] <= EVERY  # at most one interval lost
    assert not [n for n in os.listdir(ckpt_dir) if TEMP.match(n)]  # the interrupted save's file is gone
    # One MLflow run holds the whole loss curve once: the steps logged before the kill are not logged again.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = mlflow.search_runs(output_format="list", search_all_experiments=True)
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
    assert len(steps) == len(set(steps)) and max(steps) == killed_during + EVERY, steps


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    """Guards the divergence check: a learning rate of 1e30 makes the loss NaN at step 2; the run
    stops there with TrainingDivergedError (no model.keras written, MLflow run FAILED) and the step-1
    checkpoint, with finite weights, is what a rerun would resume from."""
    from training.loop.train import TrainingDivergedError, train

    cfg = compose_train([*TINY, "trainer.steps=6", "trainer.checkpoint_every=1", "trainer.learning_rate=1e30"], tmp_path)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 2: loss or weights became NaN/Inf") as err:
        train(cfg)
    assert "trainer.learning_rate" in str(err.value) and "ckpt-00000001.npz" in str(err.value)
    train_dir = tmp_path / "outputs" / "train"
    assert [p.name for p in sorted((train_dir / "checkpoints").glob("ckpt-*.npz"))] == ["ckpt-00000001.npz"]
    arrays = read_whole(train_dir / "checkpoints" / "ckpt-00000001.npz")
    assert all(np.isfinite(a).all() for k, a in arrays.items() if k.startswith("model/"))
    assert not (train_dir / "model.keras").exists()
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [run] = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")
    assert run.info.status == "FAILED"


def test_non_finite_weights_are_never_written_as_a_checkpoint(tmp_path):
    """Guards CheckpointManager.save: weights broken by an update whose loss was still finite are refused,
    so the newest checkpoint on disk stays the last good one."""
    from training.loop.checkpoints import CheckpointManager, NonFiniteWeightsError

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    manager = CheckpointManager(tmp_path, {"run": "test"})
    good = manager.save(1, model, optimizer)
    kernel = model.get_layer("dense").kernel
    kernel.assign(np.where(np.eye(4, 2) > 0, np.nan, 1.0).astype(np.float32))
    with pytest.raises(NonFiniteWeightsError, match="step 2: 1 weight"):
        manager.save(2, model, optimizer)
    assert manager.latest() == (1, good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.npz"]


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_ctrl_c_saves_a_checkpoint_and_exits_in_one_line(tmp_path, backend, monkeypatch):
    """Ctrl-C in a terminal (SIGINT to the whole process group, batch worker processes included):
    the run checkpoints the step it reached, exits 130 within seconds with one `interrupted:` line and
    no traceback from any process, its MLflow run is KILLED, and the same command resumes there,
    continuing that MLflow run and the loss history in metrics.json. On JAX, whose training step keeps
    the weights outside the model's variables while it runs, too."""
    args = [*TINY, "trainer.steps=400", "trainer.checkpoint_every=1000", "trainer.log_every=2",
            "trainer.data_worker_processes=true", "trainer.data_workers=2"]
    cmd = [sys.executable, "-m", "pipelines.train", f"paths.output_dir={tmp_path / 'outputs'}",
           f"paths.cache_dir={CACHE_DIR}", f"mlflow.tracking_uri={tracking_uri(tmp_path)}",
           "trainer.progress=false", *args]
    monkeypatch.setenv("KERAS_BACKEND", backend)  # this run and its resume
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # the log is on stdout
    seen = ""
    try:
        deadline = time.time() + 240
        while time.time() < deadline and "step 4/400" not in seen:  # training is under way
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
        assert "step 4/400" in seen, seen[-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        interrupted = time.time()
        rest, _ = proc.communicate(timeout=60)
        took = time.time() - interrupted
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = seen + rest
    assert proc.returncode == 130, output[-2000:]
    assert took < 20, took
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    last = [line for line in output.splitlines() if line.strip()][-1]
    match = re.fullmatch(r"interrupted: stopped at step (\d+) of 400: saved (\S+ckpt-(\d{8})\.npz); "
                         r"the same command resumes from it", last)
    assert match, last
    step = int(match.group(1))
    assert step >= 4 and int(match.group(3)) == step and os.path.isfile(match.group(2))
    read_whole(match.group(2))

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("stylepipe").experiment_id])
    assert run.info.status == "KILLED"

    more = [a for a in args if not a.startswith("trainer.steps=")] + [f"trainer.steps={step + 2}"]
    resumed = run_stage("train", more, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((tmp_path / "outputs" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == step and metrics["trained_steps"] == 2
    assert metrics["keras_backend"] == backend  # a whole CLI run on each backend
    # The resume continues the same MLflow run, and metrics.json holds the whole loss history.
    from training.tracking import recorded_run_id

    assert recorded_run_id(tmp_path / "outputs" / "train") == run.info.run_id
    (continued,) = client.search_runs([run.info.experiment_id])
    assert continued.info.status == "FINISHED"
    logged = [s for s in range(1, step + 3) if s % 2 == 0 or s == step + 2]  # every log_every steps, and the last
    assert [h["step"] for h in metrics["history"]] == logged
    assert [p.step for p in client.get_metric_history(run.info.run_id, "loss")][-1] == step + 2
