"""Data parallelism over several devices of one host, selected by `trainer.devices`.

JAX: Keras' distribution API (`keras.distribution.DataParallel`): one jit-compiled step over the
global batch, sharded along the batch axis, variables replicated. TensorFlow:
`tf.distribute.MirroredStrategy`: one replica per device, gradients all-reduced. Either way the
loss of a step is the loss of the global batch (the contract's batch norm is synchronised).
GPUs are used when there are any, otherwise CPU devices (virtual ones in tests:
`XLA_FLAGS=--xla_force_host_platform_device_count=N` for JAX, logical CPUs for TensorFlow).
"""

from __future__ import annotations

import contextlib

import keras

from training.errors import ConfigError


def visible_devices() -> list[str]:
    """The devices data parallelism would use, accelerators first."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]  # the default platform: GPUs/TPUs if any, else CPUs
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
    return []


def accelerators() -> list[str]:
    """The GPUs (or TPUs) the Keras backend sees; empty: training would run on the CPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU") + tf.config.list_physical_devices("TPU")]
    if backend == "torch":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return []


def tensorflow_replicas() -> int:
    """Replicas of the active tf.distribute strategy (1 outside one, and on other backends)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


@contextlib.contextmanager
def data_parallel(devices: int, batch_size: int):
    """Build, compile and fit models inside this block to train on `devices` devices (1: as usual)."""
    if devices == 1:
        yield
        return
    backend = keras.backend.backend()
    found = visible_devices()
    if backend not in ("jax", "tensorflow"):
        raise ConfigError(f"trainer.devices={devices} is not allowed with KERAS_BACKEND={backend}: use jax or tensorflow")
    if len(found) < devices:
        raise ConfigError(f"trainer.devices={devices} is not allowed: {len(found)} device(s) visible "
                          f"({', '.join(found) or 'none'}); use at most {len(found)}")
    if batch_size % devices:
        raise ConfigError(f"trainer.batch_size={batch_size} is not allowed with trainer.devices={devices}: "
                          "use a multiple of the device count (each device takes an equal share)")
    if backend == "jax":
        import jax

        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()[:devices]))
        try:
            yield
        finally:
            keras.distribution.set_distribution(previous)
    else:
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(found[:devices]).scope():
            yield


def device_memory() -> tuple[int, int] | None:
    """(peak bytes in use, bytes the allocator may use, 0 where unknown) of the first accelerator;
    None on the CPU or where the backend does not say."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform != "cpu"]
        stats = gpus[0].memory_stats() if gpus else None
        if not stats or "peak_bytes_in_use" not in stats:
            return None
        return int(stats["peak_bytes_in_use"]), int(stats.get("bytes_limit", 0))
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.max_memory_allocated()), int(torch.cuda.get_device_properties(0).total_memory)
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), 0
    return None
