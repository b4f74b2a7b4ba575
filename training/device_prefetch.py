"""Training batches read and copied onto the accelerator by a background thread, ahead of the step.

On the JAX backend `fit` reads each batch in the training thread: the read from the batch worker
processes (a wait for a worker, a copy out of shared memory) and Keras' `device_put` of the next
batch. On an H200 that thread spent 9.6-11.9 ms per 28.8-35.0 ms step getting arbitrary-style
batches, and the step ran 2.6-8.8 ms longer than on the device; the same batches made beforehand and
read from memory cost it 1.1 ms and ran at the device's pace (docs/benchmarks.md, session 16). Here a
thread does both, `depth` batches ahead, so the training thread only takes a batch that is already
on the device. Keras passes a JAX array through (its look-ahead `device_put` of one is a no-op).

Only for JAX on one device: TensorFlow's `fit` reads a PyDataset through tf.data, which would copy a
device tensor back to the host, and a data-parallel step wants its batch sharded by Keras.
"""

from __future__ import annotations

import logging
import queue
import threading

import keras

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a thread blocked on the queue checks that it should stop


def with_device_prefetch(feed, depth: int, devices: int):
    """`feed` read through DevicePrefetch (trainer.device_prefetch = depth > 0) where that can work:
    JAX, one device, a PyDataset read in the training thread (workers=1: worker processes, or one
    thread). Otherwise `feed` as it is, saying why."""
    if depth <= 0:
        return feed
    why_not = None
    if keras.backend.backend() != "jax":
        why_not = f"only on the JAX backend (this is {keras.backend.backend()})"
    elif devices != 1:
        why_not = f"only on one device (trainer.devices={devices}: Keras shards each batch)"
    elif not isinstance(feed, keras.utils.PyDataset) or feed.workers != 1:
        why_not = ("only for batches read in the training thread: worker processes (trainer.data_worker_processes=true) "
                   "or one thread, not Keras' reader threads or a tf.data stream")
    if why_not:
        log.warning("trainer.device_prefetch=%d has no effect: %s", depth, why_not)
        return feed
    return DevicePrefetch(feed, depth)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _on_device(batch):
    import jax

    # Waited for here, in the reading thread, so that the training thread never waits on a copy.
    return jax.block_until_ready(jax.device_put(batch))


class DevicePrefetch(keras.utils.PyDataset):
    """`source`'s batches, read in order by a thread and copied onto the default device, up to `depth` ahead.

    The first batch of each run of in-order reads is read in the caller's thread, so that a source
    that starts processes (ProcessBatches forks) starts them there, never from a helper thread. A read
    out of order (TensorFlow's shape peek, fit's shuffle) stops the thread and starts again from it.
    An exception in the thread is raised again in the caller's, at the batch that failed.
    """

    def __init__(self, source: keras.utils.PyDataset, depth: int):
        super().__init__(workers=1, use_multiprocessing=False)
        if depth < 1:
            raise ValueError(f"DevicePrefetch depth must be >= 1, got {depth}")
        self.source, self.depth = source, int(depth)
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop_event = threading.Event()
        self._next = 0  # the batch the thread hands over next

    def __len__(self) -> int:
        return len(self.source)

    def _read_ahead(self, first: int, out: queue.Queue, stop: threading.Event) -> None:
        for i in range(first, len(self.source)):
            try:
                item = _on_device(self.source[i])
            except BaseException as err:  # noqa: BLE001 - raised again in the training thread
                item = _Failure(err)
            while not stop.is_set():
                try:
                    out.put(item, timeout=POLL_S)
                    break
                except queue.Full:
                    continue
            if stop.is_set() or isinstance(item, _Failure):
                return

    def _start(self, first: int) -> None:
        self._stop_event = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._read_ahead, args=(first, self._queue, self._stop_event),
                                        name="stylepipe-device-prefetch", daemon=True)
        self._thread.start()
        self._next = first

    def _stop(self) -> None:
        if self._thread is not None:
            self._stop_event.set()
            self._thread.join()
            self._thread, self._queue = None, None

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._thread is None or i != self._next:
            self._stop()
            batch = self.source[i]  # in this thread: see the class docstring
            if i + 1 < len(self):
                self._start(i + 1)
            return batch
        item = self._queue.get()
        self._next += 1
        if isinstance(item, _Failure):
            self._stop()
            raise item.error
        return item

    def on_epoch_end(self) -> None:
        self._stop()
        self.source.on_epoch_end()

    def close(self) -> None:
        """Stop the thread, then the source's workers (ProcessBatches)."""
        self._stop()
        getattr(self.source, "close", lambda: None)()
