"""Run by tests/test_data_parallel.py in a fresh process: one short training run per device count.

Usage: python tests/data_parallel_run.py OUT_DIR DEVICES [DEVICES ...]
Environment: KERAS_BACKEND, and XLA_FLAGS=--xla_force_host_platform_device_count=N for JAX. On
TensorFlow the one CPU is split into as many logical devices as the largest count asks for
(before TensorFlow starts). Prints one JSON line {devices: {history, heldout}} for the test.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import keras

from helpers import compose_train  # tests/helpers.py: a script's own folder is first on sys.path


def split_tensorflow_cpu(count: int) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def main(out_dir: Path, device_counts: list[int]) -> None:
    if keras.backend.backend() == "tensorflow":
        split_tensorflow_cpu(max(device_counts))
    from training.loop.train import train

    results = {}
    for devices in device_counts:
        (out_dir / f"devices{devices}").mkdir(parents=True, exist_ok=True)  # holds the run's sqlite store
        cfg = compose_train([
            "experiment=smoke", "trainer.steps=2", "trainer.log_every=1", "trainer.batch_size=4",
            f"trainer.devices={devices}", "trainer.data_workers=2",
            "trainer.space_to_depth_channels=32",  # as accelerator=gpu: convs on pixel blocks, per-device batches
            "style=all",  # arbitrary styles: each example its own crop and colour jitter, sharded with it
            "backbone=vgg16", "backbone.weights=null", "data.heldout_count=2",
            "data.image_size=32", "data.resize_short_side=[32,40]", "data.style_size=32", "data.heldout_size=32",
        ], out_dir / f"devices{devices}")
        metrics = train(cfg)
        results[devices] = {"history": metrics["history"], "heldout": metrics["heldout"]}
    print(json.dumps(results))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(Path(sys.argv[1]), [int(n) for n in sys.argv[2:]])
