"""Callbacks that read each execution's losses one execution late, so the device does not wait for them.

Keras' own `CallbackList` converts an execution's losses to floats as soon as `fit` has dispatched it:
the host waits there for the device to finish, and the device then idles until the host has run
the callbacks and dispatched the next execution. `LaggedCallbackList` hands execution k's losses to
the callbacks when `fit` has dispatched execution k+1: the host then waits only for work queued
behind more work, and the device stays busy. On an H200 (lite model, batch 64, 8-step executions)
the step inside `fit` went from 0.5 to 0.1 ms over the device's own step: 1.016x (docs/performance.md).

A callback that needs the model's current weights at a step (a checkpoint) says so through
`needs_current_state(batch)`; that execution is handed over at once, as Keras would.
"""

from __future__ import annotations

import keras


class LaggedCallbackList(keras.callbacks.CallbackList):
    """`CallbackList` whose `on_train_batch_end` runs one execution behind `fit` (see the module).

    Callbacks see every execution, in order, with float logs, as with Keras' list; a loss that stops
    training (`model.stop_training`) stops it one execution later than Keras' list would.
    """

    def __init__(self, callbacks, model, **params):
        super().__init__(callbacks, add_history=True, model=model, **params)
        self._async_train = False  # callbacks run in the training thread, in order
        self._pending: tuple | None = None

    def on_train_batch_end(self, batch, logs=None):
        self.flush()
        if any(c.needs_current_state(batch) for c in self.callbacks if hasattr(c, "needs_current_state")):
            self._on_train_batch_end(batch, logs)  # Keras' own: floats the logs, calls each callback
        else:
            self._pending = (batch, logs)

    def flush(self):
        """Hand over the execution held back, if any (waits for the device to finish it)."""
        if self._pending is not None:
            batch, logs = self._pending
            self._pending = None
            self._on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.flush()
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self.flush()
        super().on_train_end(logs)


def lagged_callbacks(callbacks: list, model: keras.Model, epochs: int = 1) -> LaggedCallbackList:
    """The `callbacks=` argument of `model.fit(...)` for `callbacks`, run one execution behind."""
    return LaggedCallbackList(callbacks, model, epochs=epochs, verbose=0)
