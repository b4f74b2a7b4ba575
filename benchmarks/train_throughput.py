"""Training throughput: images/s and model FLOP utilisation (MFU) of the real training step.

The step is the project's own (`training.loop.train._build_objective`: stylizer + VGG-16 loss,
Adam, XLA-compiled `fit`), on JAX, fed from the host like training is:

- `--input synthetic`: a few random batches, made once and cycled (measures the step);
- `--input pipeline`: the real batch pipeline on the shipped photos (`TrainingBatches` with
  `trainer.data_workers` threads or processes), as `python -m pipelines.train` feeds it. A variant
  with `feed=premade` makes all its batches before the timed fit and feeds them from memory: the same
  batches, without waiting for the workers (a fresh array per step, unlike synthetic batches).
  Worker processes start with each fit: its first steps wait while they are forked and make their first
  batches (1.2-1.8 s on the H200, docs/performance.md), which 96 steps do not leave behind.
  Time a pipeline's steady rate over a long fit (a variant's `steps=1800`).

FLOPs per image are counted analytically (`training/objective/flops.py`: every convolution and matrix
product of the transfer network, style predictor, VGG-16 loss and Gram matrices, forward and
backward) and checked against the traced gradient step. MFU = FLOPs/s over the bf16 dense peak
(`--peak-tflops`: 989.4, the datasheet figure of the H100 SXM and the H200) and over a bf16 matrix product measured in the same run.
The input pipeline alone is timed too (`pipeline_images_per_s`; with `--input pipeline`, each row's own,
with that row's style): it must exceed the step's rate.

    KERAS_BACKEND=jax python -m benchmarks.train_throughput --out outputs/benchmarks/train_throughput.json
    KERAS_BACKEND=jax python -m benchmarks.train_throughput --models magenta_lite --batch-sizes 2 \\
        --precisions float32 --image-size 64 --steps 2 --warmup 1     # a quick check on a CPU

`step_ms` is the steady step time inside `fit` (from when each execution's losses reach the
host, after the first fifth of the steps, over `timed_steps` steps); `fit_step_ms` includes fit's start and end. Each row
also times the same compiled step with the batch already on the device (`device_step_ms`): what
`fit` takes beyond that is host time the GPU waits for. `--variants` measures configurations
side by side (Hydra overrides, and loop=training for training's per-execution loss read).

Writes JSON after every configuration (a cut-off run keeps what it measured) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402

BACKBONE_OF = {"magenta": "inception_v3", "magenta_lite": "mobilenet_v2"}  # as Magenta trains each


def compose(model: str, precision: str, batch_size: int, image_size: int, workers: int, devices: int = 1,
            input_dtype: str = "float32", overrides: tuple[str, ...] = ()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=[
            f"model={model}", f"backbone={BACKBONE_OF[model]}", "backbone.weights=null",
            "loss_network.weights=null",  # random VGG-16: same FLOPs, nothing to download
            f"trainer.precision={precision}", f"trainer.batch_size={batch_size}", "trainer.jit_compile=true",
            f"trainer.data_workers={workers}", f"trainer.devices={devices}", f"trainer.input_dtype={input_dtype}",
            "trainer.steps_per_execution=1",  # the bare step; variants may set more
            "trainer.space_to_depth_channels=0",  # plain convolutions; variants may block them
            "trainer.shifted_sum_depthwise=none",  # cuDNN's depthwise convolutions; variants may set strided or all
            "trainer.relu_gradient_from_output=false",  # autodiff's ReLU gradient; variants may set true
            f"data.image_size={image_size}", f"data.style_size={image_size}",
            f"data.resize_short_side=[{image_size},{image_size + image_size // 4}]",
            f"paths.root_dir={REPO}", "paths.output_dir=/tmp/stylepipe-benchmark", *overrides,
        ])


def add_configuration_arguments(parser) -> None:
    """The one configuration that profile_step.py and conv_channels.py examine."""
    parser.add_argument("--model", default="magenta_lite", choices=sorted(BACKBONE_OF))
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=256)


def build_step(cfg):
    """The training objective and optimizer of `cfg`, seeded and with every variable created."""
    from training.loop.train import _build, _build_objective

    keras.utils.set_random_seed(0)
    objective, optimizer, _ = _build_objective(cfg, Path(cfg.paths.cache_dir))
    _build(objective, optimizer, cfg.data.image_size)
    return objective, optimizer


class CycledBatches(keras.utils.PyDataset):
    """`steps` batches cycling over a few fixed random ones (host numpy, like the real pipeline's).

    As in arbitrary-style training, each example has its own style image; with `jitter` (a style config
    that augments, such as style=all), its own colour jitter too, applied on the device
    (training/data/color_jitter.py).
    """

    def __init__(self, batch_size: int, image_size: int, steps: int, dtype: str = "float32", distinct: int = 4,
                 seed: int = 0, jitter: bool = False):
        super().__init__()
        from training.data import color_jitter
        from training.data.datasets import to_input_dtype

        rng = np.random.default_rng(seed)
        shape = (batch_size, image_size, image_size, 3)
        self.batches = [{k: to_input_dtype(rng.random(shape, np.float32), dtype) for k in ("content", "style")}
                        for _ in range(distinct)]
        for batch in self.batches if jitter else ():
            batch["style_jitter"] = np.stack([color_jitter.draw(rng) for _ in range(batch_size)])
        self.steps = steps

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        return self.batches[i % len(self.batches)]


def pipeline_batches(cfg):
    from training.data import datasets as data_lib

    content = data_lib.load_content(cfg.data)
    styles, _ = data_lib.load_style_images(cfg.style)
    return data_lib.TrainingBatches(content, styles, cfg.data, cfg.style, cfg.trainer.batch_size, seed=0)


def pipeline_rate(cfg, seconds: float = 5.0, batches=None) -> float:
    """Images/s of the real input pipeline alone (cfg's, or `batches`), with cfg's worker threads and input dtype."""
    batches = batches if batches is not None else pipeline_batches(cfg)
    feed = batches.training_input(0, 1_000_000, workers=cfg.trainer.data_workers,  # more than 5 s need
                                  dtype=cfg.trainer.input_dtype, processes=cfg.trainer.data_worker_processes)
    # The adapter `fit` itself reads a PyDataset with (its worker threads included).
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    iterator = PyDatasetAdapter(feed, shuffle=False).get_numpy_iterator()
    next(iterator)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(iterator)
        n += cfg.trainer.batch_size
    return n / (time.perf_counter() - start)


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float | None:
    """A large bf16 matrix product through JAX: the achievable dense rate on this device."""
    import jax
    import jax.numpy as jnp

    if jax.devices()[0].platform == "cpu":
        return None
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    product = jax.jit(lambda x, y: x @ y)
    product(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = product(a, b)
    out.block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


class PremadeBatches(keras.utils.PyDataset):
    """The first `steps` batches of a pipeline feed, all made before fit and read from memory (feed=premade):
    the pipeline's batches without waiting for its workers. Holds them all (25 MB each at batch 64, uint8)."""

    def __init__(self, feed, steps: int):
        super().__init__()
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

        adapter = PyDatasetAdapter(feed, shuffle=False)  # as fit reads it, with its workers
        self.batches = [batch for batch, _ in zip(adapter.get_numpy_iterator(), range(steps))]
        adapter.on_epoch_end()

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def batch_transfer_ms(batch: dict, repeats: int = 10) -> float:
    """Mean time to copy one batch onto the device (jax.device_put, waited for), each time from a fresh
    host copy, as each batch `fit` reads is new memory (the copy itself is not timed)."""
    import jax

    times = []
    for _ in range(repeats + 1):  # the first transfer warms up
        fresh = {key: np.array(value) for key, value in batch.items()}
        start = time.perf_counter()
        jax.block_until_ready(jax.device_put(fresh))
        times.append(time.perf_counter() - start)
    return 1000 * sum(times[1:]) / repeats


def device_step_ms(objective, batch: dict, steps: int) -> float:
    """Step time with the batch already on the device and nothing on the host between steps.

    The same compiled step `fit` ran; the difference to `fit`'s step time is host time (batch
    copies, Keras' loop) that the GPU waits for. Consumes the model's state (JAX donates it).
    """
    import jax

    state = objective._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                     optimizer_variables=True, metrics_variables=True)
    batch = jax.device_put(batch)
    batches = itertools.repeat(batch)
    logs, state = objective.train_function(state, batches)  # warm
    jax.block_until_ready(state)
    calls = max(1, steps // objective.steps_per_execution)  # each call runs steps_per_execution steps
    start = time.perf_counter()
    for _ in range(calls):
        logs, state = objective.train_function(state, batches)
    jax.block_until_ready((logs, state))
    return 1000 * (time.perf_counter() - start) / (calls * objective.steps_per_execution)


LOOPS = ("bare", "training", "synced")
FEEDS = ("live", "premade")  # a variant's feed=: pipeline batches as made, or all made before the timed fit


def parse_variant(text: str) -> tuple[str, tuple[str, ...], str]:
    """'base', or space-separated Hydra overrides plus an optional `loop=bare|training|synced` -> (label, overrides, loop).

    loop=bare: `fit` with no callback (Keras reads the losses on a side thread, nothing waits).
    loop=training: a callback reads every execution's losses in the training thread, as training's
    progress callback does (progress bar, NaN guard, checkpoints), one execution late
    (training/loop/callbacks.py): the host waits for an execution while the device runs the next.
    loop=synced: the same callback in Keras' own list, which waits for each execution as soon as it is
    dispatched, so the device idles while the host catches up (training's loop before the lagged list).
    `steps=N`: this variant's timed fit runs N steps instead of --steps (a short fit against a long one).
    """
    tokens = text.split() if text.strip() not in ("", "base") else []
    loop = _token(tokens, "loop", LOOPS, "bare")
    _token(tokens, "feed", FEEDS, "live")
    variant_steps(text, 1)
    own = ("loop=", "feed=", "steps=")
    return (" ".join(tokens) or "base"), tuple(t for t in tokens if not t.startswith(own)), loop


def variant_steps(text: str, default: int) -> int:
    """A variant's `steps=N` (a positive count), else `default`."""
    value = _last_value(text.split(), "steps")
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"steps={value}: use a positive number of steps")
    return int(value)


def variant_feed(text: str) -> str:
    """A variant's `feed=live|premade` (live by default): see the module's docstring."""
    return _token(text.split(), "feed", FEEDS, "live")


def _last_value(tokens, name: str) -> str | None:
    """The value of the last `name=value` token, or None."""
    values = [t.split("=", 1)[1] for t in tokens if t.startswith(f"{name}=")]
    return values[-1] if values else None


def _token(tokens, name: str, allowed, default: str) -> str:
    value = _last_value(tokens, name)
    value = default if value is None else value
    if value not in allowed:
        raise ValueError(f"{name}={value}: use one of {', '.join(allowed)}")
    return value


class StepClock(keras.callbacks.Callback):
    """Times when executions' losses reach the host: the steady step time, without fit's start and end.

    With `sync` Keras calls it in the training thread (training's progress callback's place); otherwise
    on a side thread (async_safe), and nothing waits. `steps` is the number of steps fit runs: Keras
    reports a short last execution (steps not a multiple of steps_per_execution) as ending where a full
    one would, past the last step, which would count steps that never ran.

    The window runs from the first execution ending after `skip_fraction` of the steps to the last one.
    Under LaggedCallbackList (loop=training) an execution's losses are read one execution late, when
    they may long be ready: only the window's first execution (read at once: `needs_current_state`) and
    the last one (read after fit has dispatched every step) are read when the device finishes them.
    """

    def __init__(self, sync: bool, steps: int, skip_fraction: float = 0.2):
        super().__init__()
        self.async_safe = not sync
        self.steps = steps
        self.window_from = skip_fraction * (steps - 1)
        self.times: list[tuple[int, float]] = []
        self.waits: list[float] = []  # seconds each read of the loss waited for the device

    def _step(self, batch) -> int:
        return min(batch, self.steps - 1)

    def needs_current_state(self, batch) -> bool:
        # The first execution ending in the window (the lagged list hands them over in order).
        return self._step(batch) >= self.window_from and (not self.times or self.times[-1][0] < self.window_from)

    def on_train_batch_end(self, batch, logs=None):
        start = time.perf_counter()
        float(logs["loss"])  # a device sync in the training thread when not async
        self.waits.append(time.perf_counter() - start)
        self.times.append((self._step(batch), time.perf_counter()))

    def mean_wait_ms(self) -> float | None:
        """Mean time the training thread waited for the device per loss read, past the first quarter of
        reads: near 0 when the host, not the GPU, sets the pace (meaningful with `sync` only)."""
        steady = self.waits[len(self.waits) // 4:]
        return 1000 * sum(steady) / len(steady) if steady else None

    def steady_window(self) -> tuple[int, float] | None:
        """(steps, seconds) from the end of the window's first execution to the end of the last one."""
        times = sorted(self.times)
        if len(times) < 3:
            return None
        first = next(t for t in times if t[0] >= self.window_from)
        if first == times[-1]:
            return None
        return times[-1][0] - first[0], times[-1][1] - first[1]

    def on_train_begin(self, logs=None):
        self.began = time.perf_counter()

    def ms_per_step_by_tenth(self) -> list[float | None]:
        """Mean ms per step in each tenth of the fit, from fit's start (each execution counted in the tenth
        its last step falls in; None where none ends): where a fit loses time, e.g. at its start. Under
        loop=training the times are when losses were read, up to one execution late (see the class)."""
        spent, steps = [0.0] * 10, [0] * 10
        last_step, last_time = -1, self.began
        for step, at in sorted(self.times):
            tenth = min(9, 10 * step // self.steps)
            spent[tenth] += at - last_time
            steps[tenth] += step - last_step
            last_step, last_time = step, at
        return [1000 * s / n if n else None for s, n in zip(spent, steps)]


def sums_by_tenth(values: list[float]) -> list[float]:
    """values (in order over a fit) summed over each tenth of them, in ms: where in the fit they fall."""
    n = len(values)
    return [1000 * sum(values[k * n // 10:(k + 1) * n // 10]) for k in range(10)]


class HostClock:
    """Where the training thread's time goes inside `fit`'s train function, per step.

    Keras' JAX loop runs `train_function(state, iterator)` once per execution: it takes each step's
    batch with `next(iterator)` (reading it from the feed, then, on a GPU, `jax.device_put` of the
    batch after it, one ahead) and dispatches the compiled step. Wrapping it times, per execution, the
    `next` calls and the whole call; the rest of a step (callbacks, the loss read, Keras' loop) is what
    `step_ms` adds. Steady figures skip the first quarter of executions, as StepClock.mean_wait_ms does.
    """

    def __init__(self, objective):
        self.objective = objective
        self.executions: list[tuple[int, float, float]] = []  # (steps, seconds in next, seconds in all)

    def __enter__(self):
        self._train_function = inner = self.objective.train_function
        clock = self

        def timed_train_function(state, iterator):
            timed = _TimedIterator(iterator)
            start = time.perf_counter()
            try:
                return inner(state, timed)
            finally:
                clock.executions.append((timed.calls, timed.seconds, time.perf_counter() - start))

        self.objective.train_function = timed_train_function
        return self

    def __exit__(self, *exc):
        self.objective.train_function = self._train_function

    def steady_ms(self) -> dict:
        """{'batch': ms per step in next(iterator), 'train_function': ms per step in the whole call}."""
        steady = self.executions[len(self.executions) // 4:]
        steps = sum(calls for calls, _, _ in steady)
        if not steps:
            return {"batch": None, "train_function": None}
        return {"batch": 1000 * sum(s for _, s, _ in steady) / steps,
                "train_function": 1000 * sum(t for _, _, t in steady) / steps}


class _TimedIterator:
    def __init__(self, iterator):
        self.iterator, self.calls, self.seconds = iterator, 0, 0.0

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.iterator)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start


def timed_callbacks(loop: str, steps: int, objective) -> tuple[StepClock, list | keras.callbacks.CallbackList]:
    """(clock, fit's `callbacks`) for a fit of `steps` steps in `loop` (parse_variant)."""
    from training.loop.callbacks import lagged_callbacks

    clock = StepClock(sync=loop != "bare", steps=steps)
    return clock, lagged_callbacks([clock], objective) if loop == "training" else [clock]


def measure(model, precision, batch_size, image_size, steps, warmup, input_mode, workers, devices, cache: dict,
            input_dtype: str = "float32", variant: str = "base", time_pipeline: bool = False) -> dict:
    """One configuration; `batch_size` is the global batch (split over `devices`, as in training)."""
    from training.distribute import data_parallel

    keras.backend.clear_session()
    # Free the last configuration's models now, not in a collection during the next one's timed fit.
    # A guess at why, on an H200, the second configuration of each process was perturbed (31-32 ms
    # steps on a 26.9 ms device step, or a 29-30 ms device step under a 27.2 ms step). With it, second
    # configurations were not, but a third was (16 steps per execution).
    gc.collect()
    label, overrides, loop = parse_variant(variant)
    cfg = compose(model, precision, batch_size, image_size, workers, devices, input_dtype, overrides)
    with data_parallel(devices, batch_size):
        row = _measure(cfg, model, precision, batch_size, image_size, variant_steps(variant, steps), warmup,
                       input_mode, devices, cache, loop, time_pipeline, premade=variant_feed(variant) == "premade")
    return {**row, "variant": label}


def _measure(cfg, model, precision, batch_size, image_size, steps, warmup, input_mode, devices, cache, loop,
             time_pipeline=False, premade=False):
    from training.objective.flops import step_flops, training_step_flops_traced
    from training.loop.train import fix_style_targets

    objective, _ = build_step(cfg)
    # The pipeline feeds the step as training does, with fixed style targets where training fixes them.
    # Synthetic batches give every example its own style image, as arbitrary-style training does.
    batches = pipeline_batches(cfg) if input_mode == "pipeline" else None
    fixed = batches is not None and fix_style_targets(objective, batches, cfg.trainer.fixed_style_targets, batches.styles)
    key = f"{model} fixed style targets" if fixed else model
    if key not in cache:  # FLOPs per image depend on the model, the image size and whether style targets are fixed
        flops = step_flops(objective, image_size)
        cache[key] = {**flops.as_dict(), "traced_total": training_step_flops_traced(objective, 2, image_size)}
    flops = cache[key]

    def feed(n):
        if batches is not None:  # batch i is a function of (seed, i): each fit reads from batch 0
            live = batches.training_input(0, n, workers=cfg.trainer.data_workers, dtype=cfg.trainer.input_dtype,
                                          processes=cfg.trainer.data_worker_processes)
            return PremadeBatches(live, n) if premade else live
        return CycledBatches(batch_size, image_size, n, cfg.trainer.input_dtype, jitter=cfg.style.augment)

    start = time.perf_counter()
    # shuffle=False as training reads: in order (worker processes make batches ahead in order).
    objective.fit(feed(warmup), epochs=1, verbose=0, shuffle=False)  # compiles the step
    compile_s = time.perf_counter() - start
    clock, callbacks = timed_callbacks(loop, steps, objective)
    start = time.perf_counter()
    timed_feed = feed(steps)
    with HostClock(objective) as host:  # the warm-up fit made the train function; the timed fit reuses it
        history = objective.fit(timed_feed, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    seconds = time.perf_counter() - start  # fit returns after the last step's loss is on the host
    host_ms = host.steady_ms()
    loss = float(history.history["loss"][-1])
    # The steady rate, as a long training run sees it (a short fit also pays its start and end).
    timed_steps, timed_s = clock.steady_window() or (steps, seconds)
    step_ms = 1000 * timed_s / timed_steps
    images_per_s = 1000 * batch_size / step_ms
    # Host-free step time (one device only: more would need the batch sharded as Keras does), on a batch
    # of what fit was fed: the pipeline's keys (style_index, style_jitter) decide what the step computes.
    device_batch = (batches.batch(0, cfg.trainer.input_dtype) if batches is not None
                    else CycledBatches(batch_size, image_size, 1, cfg.trainer.input_dtype, jitter=cfg.style.augment)[0])
    device_ms = device_step_ms(objective, device_batch, steps) if devices == 1 else None
    transfer_ms = batch_transfer_ms(device_batch) if devices == 1 else None
    # What this configuration's pipeline makes alone (its style decides the work: augmented styles are crops too).
    rate = pipeline_rate(cfg, batches=batches) if time_pipeline and batches is not None else None
    reads = getattr(timed_feed, "pool_reads", 0)  # batches fit read from worker processes (ProcessBatches)
    made = getattr(timed_feed, "pool_made", 0)  # of those, made by the workers (and timed there)
    return {
        "model": model, "backbone": BACKBONE_OF[model], "precision": precision, "batch_size": batch_size, "devices": devices,
        "input_dtype": cfg.trainer.input_dtype,
        "image_size": image_size, "input": input_mode, "loop": loop,
        "steps_per_execution": int(cfg.trainer.steps_per_execution), "steps": steps,
        "step_ms": step_ms, "timed_steps": timed_steps, "fit_step_ms": 1000 * seconds / steps,
        "images_per_s": images_per_s, "tflops_per_s": images_per_s * flops["total"] / 1e12,
        "device_step_ms": device_ms, "batch_transfer_ms": transfer_ms, "feed": "premade" if premade else "live",
        "host_wait_fraction": None if device_ms is None else 1 - device_ms / step_ms,
        "gflops_per_image": flops["total"] / 1e9, "fixed_style_targets": fixed, "first_fit_s": compile_s, "loss": loss,
        "style": cfg.style.name if batches is not None else None, "pipeline_images_per_s": rate,
        "data_workers": int(cfg.trainer.data_workers) if batches is not None else None,
        "data_worker_processes": bool(cfg.trainer.data_worker_processes) if batches is not None else None,
        # The training thread's time getting each batch from the worker processes, and of it waiting for one.
        "input_read_ms": 1000 * timed_feed.read_seconds / reads if reads else None,
        "input_wait_ms": 1000 * timed_feed.wait_seconds / reads if reads else None,
        # A worker process' own time per batch during the timed fit (alone, the workers make one batch each
        # per data_workers * batch_size / pipeline_images_per_s): whether training slows the workers down.
        "worker_batch_ms": 1000 * timed_feed.make_seconds / made if made else None,
        # Where in the fit the time goes: ms per step, and ms the reads waited for the workers, by tenth of the
        # fit (the workers start with the fit: its start waits for their first batches).
        "step_ms_by_tenth": clock.ms_per_step_by_tenth(),
        "input_wait_ms_by_tenth": sums_by_tenth(timed_feed.read_waits) if reads else None,
        # How long the training thread waited for the device at each read of the loss (once per execution):
        # near 0 means the host, not the GPU, sets the pace.
        "device_wait_ms_per_execution": clock.mean_wait_ms() if loop != "bare" else None,
        # The training thread per step in Keras' train function (HostClock): getting the batch (the read,
        # then on a GPU the device_put of the next one) and in all (with the step's dispatch).
        "host_batch_ms": host_ms["batch"], "host_train_function_ms": host_ms["train_function"],
        "style_jitter": bool(cfg.style.augment),  # colour jitter in the step (training/data/color_jitter.py)
        "finite_loss": bool(np.isfinite(loss)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["magenta_lite", "magenta"], choices=sorted(BACKBONE_OF))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--precisions", nargs="+", default=["mixed_bfloat16", "float32"],
                        choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--input", choices=["synthetic", "pipeline"], default="synthetic")
    parser.add_argument("--workers", type=int, default=8, help="trainer.data_workers for --input pipeline")
    parser.add_argument("--input-dtypes", nargs="+", default=["float32"], choices=["float32", "uint8"],
                        help="trainer.input_dtype: batches copied to the device as float32 or uint8 (side by side)")
    parser.add_argument("--variants", nargs="+", default=["base"],
                        help="configurations measured side by side: 'base', or space-separated Hydra overrides "
                             "plus an optional loop=bare|training, e.g. 'loop=training trainer.steps_per_execution=8'")
    parser.add_argument("--devices", type=int, default=1,
                        help="trainer.devices: data-parallel over this many GPUs; batch sizes are per device")
    parser.add_argument("--pipeline-rate", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the input pipeline alone (--no-pipeline-rate skips it)")
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="bf16 dense peak of one GPU (H100 SXM and H200: 989.4)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "train_throughput.json")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        parser.error("run with KERAS_BACKEND=jax (FLOPs are counted on the JAX trace)")
    for variant in args.variants:
        try:
            parse_variant(variant)
        except ValueError as err:
            parser.error(f"--variants {variant!r}: {err}")
        if variant_feed(variant) == "premade" and args.input != "pipeline":
            parser.error(f"--variants {variant!r}: feed=premade premakes the pipeline's batches: use --input pipeline")
    import jax

    device = jax.devices()[0]
    report = {
        "command": "KERAS_BACKEND=jax python -m benchmarks.train_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": getattr(device, "device_kind", str(device)), "platform": device.platform,
        "host": platform.node(), "cpus": os.cpu_count(), "jax": jax.__version__, "keras": keras.__version__,
        "peak_tflops": args.peak_tflops, "matmul_tflops": matmul_tflops(), "flops": {}, "results": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    matmul = report["matmul_tflops"]
    print(f"device {report['device']}; bf16 matmul {matmul:.0f} TFLOP/s" if matmul else f"device {report['device']}",
          flush=True)
    for model in args.models:
        if args.pipeline_rate and args.input == "synthetic" and model == args.models[0]:
            # Synthetic steps read no pipeline: time the default one (its style: fixed crops) for reference.
            cfg = compose(model, "float32", max(args.batch_sizes), args.image_size, args.workers)
            report.setdefault("pipeline_images_per_s", {})[f"{args.workers} workers, style={cfg.style.name}"] = pipeline_rate(cfg)
        for precision in args.precisions:
            for batch_size, input_dtype, variant in itertools.product(args.batch_sizes, args.input_dtypes, args.variants):
                try:
                    row = measure(model, precision, batch_size * args.devices, args.image_size, args.steps,
                                  args.warmup, args.input, args.workers, args.devices, report["flops"], input_dtype,
                                  variant, time_pipeline=args.pipeline_rate)
                except Exception as err:  # e.g. out of memory at a large batch: record it and go on
                    row = {"model": model, "precision": precision, "batch_size": batch_size, "input_dtype": input_dtype,
                           "variant": parse_variant(variant)[0], "error": f"{type(err).__name__}: {str(err)[:300]}"}
                # Utilisation per device: the peak and the measured matrix product are one GPU's.
                row["mfu_peak"] = row.get("tflops_per_s", 0) / args.devices / args.peak_tflops
                row["mfu_matmul"] = row.get("tflops_per_s", 0) / args.devices / matmul if matmul else None
                report["results"].append(row)
                args.out.write_text(json.dumps(report, indent=2))
                print(format_row(row), flush=True)
    print()
    print(format_table(report))
    return 0


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:<13} {row['precision']:<15} {row['batch_size']:>5}  {row['error']}"
    mfu = f"{100 * row['mfu_peak']:5.1f}%"
    device_ms = f"{row['device_step_ms']:.1f}" if row.get("device_step_ms") else "-"
    return (f"{row['model']:<13} {row['precision']:<15} {row['batch_size']:>5} {row.get('devices', 1):>4} "
            f"{row.get('input_dtype', 'float32'):>7} {row['images_per_s']:>9.1f} "
            f"{row['step_ms']:>8.1f} {device_ms:>9} {row['tflops_per_s']:>8.1f} {mfu:>7} {row['first_fit_s']:>7.1f}  "
            f"{row.get('variant', 'base')}")


def format_table(report: dict) -> str:
    head = (f"{'model':<13} {'precision':<15} {'batch':>5} {'GPUs':>4} {'input':>7} {'img/s':>9} {'step ms':>8} "
            f"{'device ms':>9} {'TFLOP/s':>8} {'MFU':>7} {'compile':>7}  variant")
    lines = [head, "-" * len(head)] + [format_row(r) for r in report["results"]]
    for model, f in report["flops"].items():
        lines.append(f"{model}: {f['total'] / 1e9:.1f} GFLOP per image (forward {f['forward'] / 1e9:.1f}, "
                     f"backward {f['backward'] / 1e9:.1f}; traced step {f['traced_total'] / 1e9:.1f})")
    for workers, rate in report.get("pipeline_images_per_s", {}).items():
        lines.append(f"input pipeline alone ({workers}, {report['cpus']} CPUs): {rate:.0f} images/s")
    for row in report["results"]:
        if row.get("batch_transfer_ms") is not None:
            wait = row.get("device_wait_ms_per_execution")
            lines.append(f"one batch onto the device: {row['batch_transfer_ms']:.2f} ms"
                         + (f"; loss reads waited {wait:.2f} ms per execution for the device" if wait is not None else "")
                         + (f"; per {row['step_ms']:.1f} ms step, {row['host_train_function_ms']:.1f} in Keras' train"
                            f" function, {row['host_batch_ms']:.1f} of it getting batches"
                            if row.get("host_train_function_ms") is not None else "")
                         + (f"; a worker process took {row['worker_batch_ms']:.0f} ms per batch"
                            if row.get("worker_batch_ms") is not None else "")
                         + f"  [{row['variant']}]")
    for row in report["results"]:
        if row.get("step_ms_by_tenth") and row.get("input") == "pipeline":
            tenths = " ".join("-" if ms is None else f"{ms:.1f}" for ms in row["step_ms_by_tenth"])
            waits = row.get("input_wait_ms_by_tenth")
            lines.append(f"{row['steps']} steps, ms per step by tenth of the fit: {tenths}"
                         + (f"; waiting for workers (ms in all): {' '.join(f'{w:.0f}' for w in waits)}" if waits else "")
                         + f"  [{row['variant']}]")
    for row in report["results"]:
        if row.get("pipeline_images_per_s"):
            kind = "processes" if row.get("data_worker_processes") else "threads"
            lines.append(f"input pipeline alone, style={row['style']} ({row['data_workers']} {kind}, {report['cpus']} CPUs): "
                         f"{row['pipeline_images_per_s']:.0f} images/s"
                         f" (a worker {1000 * row['data_workers'] * row['batch_size'] / row['pipeline_images_per_s']:.0f} ms per batch),"
                         f" {row['images_per_s']:.0f} consumed"
                         + (f", {row['input_read_ms']:.2f} ms per batch read ({row['input_wait_ms']:.2f} waiting)"
                            if row.get("input_read_ms") else "")
                         + f"  [{row['variant']}]")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
