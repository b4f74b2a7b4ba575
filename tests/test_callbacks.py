"""LaggedCallbackList: callbacks see every execution's losses, one execution after fit dispatched it.
StopOnCtrlC: Ctrl-C ends fit at a step boundary wherever the signal lands."""

from __future__ import annotations

import os
import signal
import time
import weakref

import keras
import numpy as np
import pytest

from training.loop.callbacks import lagged_callbacks
from training.loop.interrupt import stop_fit_on_ctrl_c


class Recorder(keras.callbacks.Callback):
    """Records when executions are dispatched (begin) and when their losses reach it (end)."""

    def __init__(self, current_state_at=()):
        super().__init__()
        self.events: list[tuple] = []
        self.dispatched_at: dict[int, float] = {}
        self.current_state_at = set(current_state_at)

    def on_train_batch_begin(self, batch, logs=None):
        self.events.append(("begin", batch))
        self.dispatched_at[batch] = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        assert isinstance(logs["loss"], float)
        self.events.append(("end", batch, logs["loss"]))

    def needs_current_state(self, batch):
        return batch in self.current_state_at


def fit(callbacks_for):
    """Six batches in executions of two steps, from the same seed every time; returns (recorder, history)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", steps_per_execution=2)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)).astype("float32"), rng.normal(size=(12, 1)).astype("float32")
    recorder, callbacks = callbacks_for(model)
    history = model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return recorder, history


def order(events):
    return [e[:2] for e in events]


def test_each_execution_is_handed_over_after_the_next_is_dispatched_with_keras_losses():
    keras_list, _ = fit(lambda model: (r := Recorder(), [r]))
    lagged, history = fit(lambda model: (r := Recorder(), lagged_callbacks([r], model)))
    assert order(keras_list.events) == [("begin", 0), ("end", 1), ("begin", 2), ("end", 3), ("begin", 4), ("end", 5)]
    # The last execution is handed over at the end of the epoch, before History reads the epoch.
    assert order(lagged.events) == [("begin", 0), ("begin", 2), ("end", 1), ("begin", 4), ("end", 3), ("end", 5)]
    losses = [e[2] for e in lagged.events if e[0] == "end"]
    assert losses == pytest.approx([e[2] for e in keras_list.events if e[0] == "end"], rel=1e-6)
    assert losses[0] != losses[1]  # real, changing losses
    assert history.history["loss"] == pytest.approx([losses[-1]], rel=1e-6)


def test_an_execution_that_needs_the_current_state_is_handed_over_at_once():
    recorder, _ = fit(lambda model: (r := Recorder(current_state_at={3}), lagged_callbacks([r], model)))
    assert order(recorder.events) == [("begin", 0), ("begin", 2), ("end", 1), ("end", 3), ("begin", 4), ("end", 5)]


def test_the_benchmark_clock_times_only_executions_read_when_the_device_finished(monkeypatch):
    """Under the lagged list (benchmark loop=training) an execution's losses are read after the next was
    dispatched, possibly long after they were ready: the clock's window must open on one read at once."""
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())  # the module's default must not leak to other tests
    from benchmarks.train_throughput import StepClock

    clock = StepClock(sync=True, steps=6)
    recorder, _ = fit(lambda model: (r := Recorder(), lagged_callbacks([r, clock], model)))
    window_steps, window_s = clock.steady_window()
    assert window_steps == 4  # from the execution ending at step 1 (past a fifth of 5) to step 5
    opened_at = dict(clock.times)[1]
    assert opened_at < recorder.dispatched_at[2]  # read before the next execution was dispatched
    assert window_s == pytest.approx(dict(clock.times)[5] - opened_at)


def test_images_per_second_counts_the_fit_only():
    """Work after the fit (saving the model, scoring held-out photos, the sample grid) does not lower images/s."""
    import time

    from training.loop.train import TrainingProgress

    progress = TrainingProgress(0, 100, checkpoints=None, optimizer=None, log_every=1000, checkpoint_every=1000,
                                show_bar=False, mlflow_module=None)
    for batch in range(4):  # steps 1-4: the first is the compile's and is not timed
        progress.on_train_batch_end(batch, {"loss": 1.0})
        time.sleep(0.05)
    progress.on_train_end()
    rate = progress.images_per_second(batch_size=8)
    assert 0 < rate <= 3 * 8 / 0.15 * 1.01  # 3 timed steps of 8 images in at least 0.15 s
    time.sleep(0.2)
    assert progress.images_per_second(batch_size=8) == rate


class CtrlCInsideAWeakrefCallback(keras.callbacks.Callback):
    """Presses Ctrl-C (SIGINT to this process) while the main thread runs a weakref callback, at `batch`:
    where a KeyboardInterrupt is printed as "Exception ignored" and lost."""

    def __init__(self, batch):
        super().__init__()
        self.batch, self.ended = batch, []

    def on_train_batch_end(self, batch, logs=None):
        self.ended.append(batch)
        if batch == self.batch:
            garbage = type("Garbage", (), {})()
            weakref.finalize(garbage, lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))
            del garbage


def test_ctrl_c_landing_in_a_weakref_callback_stops_fit_after_the_step_in_flight():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((40, 4), "float32"), np.zeros((40, 1), "float32")
    press = CtrlCInsideAWeakrefCallback(batch=2)
    before = signal.getsignal(signal.SIGINT)  # Python's own handler; SIG_IGN where the shell started us in the background
    with stop_fit_on_ctrl_c() as ctrl_c:
        assert signal.getsignal(signal.SIGINT) is not before
        model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=lagged_callbacks([press, ctrl_c], model))
    assert ctrl_c.requested
    assert press.ended == [0, 1, 2, 3]  # the step dispatched before the request, then no more
    assert signal.getsignal(signal.SIGINT) is before  # the handler it replaced is back


def test_a_second_ctrl_c_interrupts_at_once():
    with stop_fit_on_ctrl_c() as ctrl_c:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert ctrl_c.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
