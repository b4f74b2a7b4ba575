"""Checkpoints move between devices and backends: write one here, resume it there, and back.

    python -m benchmarks.checkpoint_portability write DIR    # 3 training steps, checkpoint, step 4's loss
    python -m benchmarks.checkpoint_portability resume DIR   # restore DIR's checkpoint, run step 4, compare

`write` trains the lite model (random backbone and VGG-16: nothing to download) on fixed random
batches with the project's checkpoint code (training/loop/checkpoints.py), then records the loss of
the next step. `resume` builds a fresh model on whatever backend/device it runs on, restores the
checkpoint (every model and optimizer variable must come back bit for bit) and runs that next
step on the same batch: its loss must match the recorded one (tolerance for TF32/cuDNN vs CPU
arithmetic). Run `write` on a GPU and `resume` on a CPU, and the other way round. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402

STEPS, BATCH, SIZE = 3, 4, 64


def build():
    from hydra import compose, initialize_config_dir

    from benchmarks.train_throughput import build_step
    from training.loop.runs import fingerprint

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "model=magenta_lite", "backbone=mobilenet_v2", "backbone.weights=null", "loss_network.weights=null",
            f"trainer.batch_size={BATCH}", f"data.image_size={SIZE}", f"data.resize_short_side=[{SIZE},{SIZE}]",
            "trainer.learning_rate=1e-3", f"paths.root_dir={REPO}",
        ])
    objective, optimizer = build_step(cfg)
    return cfg, objective, optimizer, fingerprint(cfg)


def batches():
    rng = np.random.default_rng(1)
    return [{"content": rng.random((BATCH, SIZE, SIZE, 3), np.float32),
             "style": rng.random((BATCH, SIZE, SIZE, 3), np.float32)} for _ in range(STEPS + 1)]


def device() -> str:
    if keras.backend.backend() == "jax":
        import jax

        return f"jax {jax.devices()[0].platform} {getattr(jax.devices()[0], 'device_kind', '')}".strip()
    import tensorflow as tf

    return f"tensorflow {'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'}"


def write(directory: Path) -> dict:
    from training.loop.checkpoints import CheckpointManager

    _, objective, optimizer, fingerprint = build()
    data = batches()
    for batch in data[:STEPS]:
        objective.train_on_batch(batch)
    path = CheckpointManager(directory, fingerprint).save(STEPS, objective.stylizer, optimizer)
    next_loss = float(objective.train_on_batch(data[STEPS], return_dict=True)["loss"])
    record = {"written_on": device(), "checkpoint": path.name, "step": STEPS, "next_step_loss": next_loss}
    (directory / "written.json").write_text(json.dumps(record, indent=2))
    return record


def resume(directory: Path) -> dict:
    from training.loop.checkpoints import CheckpointManager

    written = json.loads((directory / "written.json").read_text())
    _, objective, optimizer, fingerprint = build()
    manager = CheckpointManager(directory, fingerprint)
    step = manager.restore(manager.latest()[1], objective.stylizer, optimizer)
    with np.load(manager.latest()[1]) as stored:
        saved = [stored[k] for k in sorted(k for k in stored.files if k.startswith("model/"))]
    exact = all(np.array_equal(keras.ops.convert_to_numpy(v), a) for v, a in zip(objective.stylizer.weights, saved))
    loss = float(objective.train_on_batch(batches()[STEPS], return_dict=True)["loss"])
    relative = abs(loss - written["next_step_loss"]) / abs(written["next_step_loss"])
    result = {**written, "resumed_on": device(), "restored_step": step, "weights_bit_exact": exact,
              "optimizer_iterations": int(keras.ops.convert_to_numpy(optimizer.iterations)),
              "resumed_next_step_loss": loss, "relative_difference": relative,
              "ok": exact and step == STEPS and relative < 1e-2}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint_portability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["write", "resume"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    result = write(args.directory) if args.action == "write" else resume(args.directory)
    print(json.dumps(result, indent=2))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
