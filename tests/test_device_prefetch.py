"""trainer.device_prefetch (training/device_prefetch.py): batches read and put on the device by a
thread, on the real JAX backend (a subprocess: this process' Keras may run another backend).

Its use in training, on the real worker processes and the same loss, is
tests/test_throughput_benchmark.py::test_pipeline_rows_time_the_training_threads_reads_and_premade_batches_train_alike.
"""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

ON_JAX = r'''
import logging, threading, time

import jax
import keras
import numpy as np
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

from training.device_prefetch import DevicePrefetch, with_device_prefetch


class Numbered(keras.utils.PyDataset):
    """Batch i holds i; records which thread read each batch, and the epoch ends."""

    def __init__(self, n, fail_at=None, workers=1):
        super().__init__(workers=workers, use_multiprocessing=False)
        self.n, self.fail_at, self.readers, self.epochs_ended = n, fail_at, {}, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.readers[i] = threading.current_thread().name
        if i == self.fail_at:
            raise OSError(f"photo of batch {i} is unreadable")
        return {"content": np.full((2, 4, 4, 3), i, np.uint8), "index": np.array([i], np.int32)}

    def on_epoch_end(self):
        self.epochs_ended += 1


def index(batch):
    return int(np.asarray(batch["index"])[0])


# Read as fit reads it: batch i in order, the later ones already JAX arrays, read by the thread.
source = Numbered(7)
feed = with_device_prefetch(source, 2, devices=1)
assert isinstance(feed, DevicePrefetch) and len(feed) == 7
adapter = PyDatasetAdapter(feed, shuffle=False)
got = list(adapter.get_jax_iterator())
adapter.on_epoch_end()
assert [index(b) for b in got] == list(range(7))
assert all(isinstance(b["content"], jax.Array) and b["content"].dtype == np.uint8 for b in got[1:])
np.testing.assert_array_equal(np.asarray(got[5]["content"]), np.full((2, 4, 4, 3), 5, np.uint8))
# The first batch is read in the caller's thread: a source that forks worker processes forks there.
assert source.readers[0] == threading.current_thread().name
assert {source.readers[i] for i in range(1, 7)} == {"stylepipe-device-prefetch"}
assert source.epochs_ended == 1 and feed._thread is None

# No further ahead than its depth: 2 in the queue and one waiting to go in.
source = Numbered(20)
feed = DevicePrefetch(source, 2)
feed[0]
time.sleep(1.0)
assert max(source.readers) == 3, source.readers
feed.close()
assert feed._thread is None

# Any read order (TensorFlow's shape peek, fit's shuffle) still gets batch i.
for order in ([0, 1, 0, 1, 2, 3, 4], [5, 0, 6, 1, 2, 4, 3]):
    feed = DevicePrefetch(Numbered(7), 3)
    assert [index(feed[i]) for i in order] == order, order
    feed.close()

# An error in the thread is raised in the caller's, at the batch that failed, and the thread ends.
feed = DevicePrefetch(Numbered(6, fail_at=3), 2)
assert [index(feed[i]) for i in range(3)] == [0, 1, 2]
try:
    feed[3]
except OSError as err:
    assert "photo of batch 3 is unreadable" in str(err)
else:
    raise AssertionError("the thread's error was not raised")
assert feed._thread is None

# Where it cannot work, the feed is left as it is, and the log says why.
records = []
logging.getLogger("training.device_prefetch").addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
threads = Numbered(4, workers=3)
assert with_device_prefetch(threads, 2, devices=1) is threads
assert with_device_prefetch(source, 2, devices=2) is source
assert with_device_prefetch(source, 0, devices=1) is source
assert "Keras' reader threads" in records[0] and "trainer.devices=2" in records[1] and len(records) == 2, records
print("device prefetch ok")
'''


def test_device_prefetch_reads_ahead_in_order_onto_the_device():
    result = subprocess.run([sys.executable, "-c", ON_JAX], cwd=REPO,
                            env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device prefetch ok" in result.stdout
