"""Ctrl-C during `fit`: stop after the step in flight, not wherever the signal happens to land.

Python raises `KeyboardInterrupt` wherever the main thread is when SIGINT arrives. Inside a weakref
or import-lock callback it is printed as "Exception ignored" and lost, and training runs on; inside
JAX's `fit` it can leave the weights outside the model's variables. The handler here only records
the request, and `StopOnCtrlC` ends `fit` at the next step boundary, where every backend has put the
weights back. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import keras


class StopOnCtrlC(keras.callbacks.Callback):
    """Ends `fit` after the step in flight once Ctrl-C was pressed (see the module)."""

    def __init__(self):
        super().__init__()
        self.requested = False

    def on_train_batch_begin(self, batch, logs=None):
        if self.requested:
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self.on_train_batch_begin(batch, logs)


@contextlib.contextmanager
def stop_fit_on_ctrl_c():
    """Yields the `StopOnCtrlC` callback for `fit`; SIGINT sets its `requested` while the block runs."""
    callback = StopOnCtrlC()
    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield callback
        return

    def request_stop(signum, frame):
        if callback.requested:  # pressed again: the user does not want to wait for the step
            raise KeyboardInterrupt
        callback.requested = True

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield callback
    finally:
        signal.signal(signal.SIGINT, previous)
