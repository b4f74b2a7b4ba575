"""Training batches made in worker processes and handed over through shared memory.

Batch threads share one GIL: on a 16-core H200 host 8 threads made 1925 images/s of arbitrary-style
batches (style=all, batch 64, uint8) and 12 or 16 made fewer, while the GPU step takes 2400
(docs/performance.md). Keras' own worker processes (`use_multiprocessing`) pickle each
25 MB batch through a pipe and made no more (1596-1797). Here the workers are forked: they inherit the
decoded photos without a copy, write each batch into a slot of one anonymous shared mapping, and
send back only its number. The training thread copies the batch out of its slot and hands the slot
back; batch i is a function of (seed, i), so the batches are the threads' batches, in order.

Fork, not spawn: a spawned worker would need the photo cache pickled to it (up to
`data.cache_bytes` each). The children run NumPy and PIL only, never the accelerator runtime the
parent has started, which is the use fork remains safe for (PyTorch's DataLoader works the same way).
A worker that dies (killed, out of memory) is reported by number and exit code instead of hanging
`fit`; an exception in a worker is raised again in the training thread.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import pickle
import queue
import signal
import time
import traceback
import warnings
import weakref

import keras
import numpy as np

log = logging.getLogger(__name__)

# How long the training thread waits on the workers before it checks that they are all alive.
POLL_S = 1.0
# A batch takes a worker well under a second; none for this long means the workers hang (a process
# forked while another thread held a lock it then needs), which would otherwise stall `fit` silently.
STALL_S = 120.0
JOIN_S = 5.0  # how long a stopping worker may take to finish its batch before it is killed
ALIGN = 64  # each array of a slot starts on a cache line


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def fork_available() -> bool:
    """Whether worker processes can be forked here (Linux); elsewhere training makes batches in threads."""
    available = _can_fork()
    if not available:
        log.warning("trainer.data_worker_processes: this platform cannot fork worker processes; "
                    "making batches in threads instead")
    return available


class BatchWorkerError(RuntimeError):
    """A batch worker process died or failed in a way that cannot be raised again as it was."""


def _layout(batch: dict[str, np.ndarray]) -> tuple[dict[str, tuple[int, tuple[int, ...], np.dtype]], int]:
    """{key: (offset, shape, dtype)} of one batch in a slot, and the slot's size in bytes."""
    layout, offset = {}, 0
    for key, value in batch.items():
        value = np.asarray(value)
        layout[key] = (offset, value.shape, value.dtype)
        offset += -(-value.nbytes // ALIGN) * ALIGN
    return layout, offset


def _views(buffer, layout, slot: int, slot_bytes: int) -> dict[str, np.ndarray]:
    return {key: np.ndarray(shape, dtype, buffer=buffer, offset=slot * slot_bytes + offset)
            for key, (offset, shape, dtype) in layout.items()}


def _work(make, dtype, buffer, layout, slot_bytes, tasks, done) -> None:
    """A worker's loop: make each (batch, slot) asked for into its slot until told to stop (None)."""
    # Ctrl-C reaches the whole process group: the training process saves and stops the workers, and
    # a worker of its own would only print a traceback per process. Blocked since the fork (see
    # _Workers), so one that came before this line is dropped here too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    while (task := tasks.get()) is not None:
        index, slot = task
        try:
            started = time.perf_counter()
            batch = make(index, dtype)
            for key, view in _views(buffer, layout, slot, slot_bytes).items():
                view[...] = batch[key]
            done.put((index, None, None, time.perf_counter() - started))
        except Exception as err:  # every failure goes back to the training thread, to be raised there
            try:
                pickled = pickle.dumps(err)
            except Exception:  # noqa: BLE001 - it does not pickle: its text is sent instead
                pickled = None
            done.put((index, pickled, "".join(traceback.format_exception(err)), 0.0))


def _raise_again(pickled: bytes | None, text: str, index: int):
    try:
        err = pickle.loads(pickled) if pickled is not None else None
    except Exception:  # noqa: BLE001 - it does not unpickle: its text is raised instead
        err = None
    if err is None:
        raise BatchWorkerError(f"a batch worker process failed on batch {index}:\n{text}")
    raise err


class _Workers:
    """The processes, the shared slots and the queues; stopped by `close` or when garbage."""

    def __init__(self, make, dtype: str, first: dict[str, np.ndarray], processes: int, slots: int):
        ctx = multiprocessing.get_context("fork")
        self.layout, self.slot_bytes = _layout(first)
        # MAP_SHARED | MAP_ANONYMOUS, inherited by the forked children: no /dev/shm file, whose size
        # containers often limit, and nothing to unlink.
        self.buffer = mmap.mmap(-1, slots * self.slot_bytes)
        self.tasks, self.done = ctx.Queue(), ctx.Queue()
        self.processes = [ctx.Process(target=_work, name=f"stylepipe-batches-{n}", daemon=True,
                                      args=(make, dtype, self.buffer, self.layout, self.slot_bytes, self.tasks, self.done))
                          for n in range(processes)]
        with warnings.catch_warnings():
            # JAX warns on every fork that it may deadlock; the children never touch JAX, and a hang
            # is reported by ProcessBatches after STALL_S instead.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # inherited by the children
            try:
                for p in self.processes:
                    p.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._finalizer = weakref.finalize(self, _stop, self.processes, self.tasks, self.buffer)

    def close(self) -> None:
        self._finalizer()


def _stop(processes, tasks, buffer) -> None:
    for _ in processes:
        tasks.put(None)
    for p in processes:
        p.join(timeout=JOIN_S)
        if p.is_alive():  # busy on a batch nobody will read, or hung
            p.kill()
            p.join(timeout=JOIN_S)
    tasks.close()
    # Unmapped now, not when garbage. Safe because no view of it outlives ProcessBatches._take, which copies:
    # NumPy views keep the mmap object, not a buffer export, so `close` would not refuse under a live one.
    buffer.close()


class ProcessBatches(keras.utils.PyDataset):
    """Batches start .. start + steps - 1 of a TrainingBatches, made by `processes` forked workers.

    `fit` reads it in its own thread (workers=1 for Keras: the processes already work ahead, up to
    `2 * processes` batches past the last one read). The batch `start` is made here first: it fixes
    the slots' layout. A batch read again (TensorFlow's fit reads the first two for their shapes, then
    starts over) or out of order (fit's shuffle) is made here, in the reading thread.
    `read_seconds` / `wait_seconds` / `pool_reads`: the time the training thread spent getting batches
    from the workers, of which waiting for a worker to finish one, and how many it got; `read_waits`:
    each read's wait, in order (a fit's start waits while the fresh workers make their first batches).
    `make_seconds` / `pool_made`: the workers' own time making the batches that came back (making one and
    writing it into its slot), and how many: beside the rate they make alone, whether they slow down
    while the training step runs.
    """

    def __init__(self, batches, start: int, steps: int, processes: int, dtype: str = "float32"):
        super().__init__(workers=1, use_multiprocessing=False)
        if not _can_fork():
            raise BatchWorkerError("batch worker processes need the fork start method (Linux); "
                                   "use threads here (trainer.data_worker_processes=false)")
        self.batches, self.start, self.steps, self.dtype = batches, int(start), int(steps), dtype
        self.process_count = max(1, int(processes))
        self.slots = 2 * self.process_count
        self._pool: _Workers | None = None
        self._first: dict[str, np.ndarray] | None = None
        self._warned = False
        self.read_seconds, self.pool_reads, self.read_waits = 0.0, 0, []
        self.make_seconds, self.pool_made = 0.0, 0

    def __len__(self) -> int:
        return self.steps

    @property
    def wait_seconds(self) -> float:
        return sum(self.read_waits)

    def _start(self) -> None:
        self._first = self.batches.batch(self.start, self.dtype)
        self._asked: dict[int, int] = {}  # batch (from start) -> its slot, handed to the workers, not yet read
        self._ready: dict[int, tuple] = {}
        self._free = list(range(self.slots))
        self._next, self._last_read = 1, 0  # batch 0 is made
        if self.steps > 1:
            self._pool = _Workers(self.batches.batch, self.dtype, self._first, self.process_count, self.slots)
            self._ask_ahead(0)

    def _ask_ahead(self, read: int) -> None:
        """Hand the workers the next batches, while slots are free, up to `slots` past batch `read`."""
        while self._free and self._next < self.steps and self._next <= read + self.slots:
            slot = self._free.pop()
            self._asked[self._next] = slot
            self._pool.tasks.put((self.start + self._next, slot))
            self._next += 1

    def _wait_for(self, index: int) -> None:
        """Until the workers have made batch `index` (its wait is appended to read_waits)."""
        workers = self._pool
        since = started = time.perf_counter()
        while index not in self._ready:
            try:
                done, pickled, text, seconds = workers.done.get(timeout=POLL_S)
                self._ready[done] = (pickled, text)
                if text is None:
                    self.make_seconds += seconds
                    self.pool_made += 1
                since = time.perf_counter()
            except queue.Empty:
                if time.perf_counter() - since > STALL_S:
                    self.close()
                    raise BatchWorkerError(
                        f"no training batch from the {len(workers.processes)} batch worker processes in {STALL_S:.0f} s: "
                        "they hang; set trainer.data_worker_processes=false to make batches in threads") from None
                dead = [p for p in workers.processes if p.exitcode is not None]
                if dead:
                    self.close()
                    raise BatchWorkerError(
                        f"batch worker process {dead[0].name} exited with code {dead[0].exitcode} "
                        f"(killed, or out of memory: lower trainer.data_workers or trainer.batch_size, "
                        f"or set trainer.data_worker_processes=false)") from None
        self.read_waits.append(time.perf_counter() - started)
        pickled, text = self._ready.pop(index)
        if text is not None:
            self.close()
            _raise_again(pickled, text, index)

    def _take(self, i: int) -> dict[str, np.ndarray]:
        """Batch i out of its slot (a copy: the slot is handed to the next batch)."""
        started = time.perf_counter()
        self._wait_for(self.start + i)
        slot = self._asked.pop(i)
        w = self._pool
        batch = {key: view.copy() for key, view in _views(w.buffer, w.layout, slot, w.slot_bytes).items()}
        self._free.append(slot)
        self.read_seconds += time.perf_counter() - started
        self.pool_reads += 1
        return batch

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.steps:
            raise IndexError(i)
        if self._pool is None and self._first is None:
            self._start()
        if i == 0 and self._first is not None:
            batch, self._first = self._first, None
        elif self._pool is not None and i in self._asked:
            batch = self._take(i)
        else:
            if i > self._last_read + 1 and not self._warned:
                self._warned = True
                log.warning("training batch %d read out of order (fit(shuffle=True)?): such batches are made in "
                            "the training thread, not ahead by the worker processes; read in order (shuffle=False) "
                            "to keep the GPU fed", self.start + i)
            batch = self.batches.batch(self.start + i, self.dtype)
        self._last_read = i
        if self._pool is not None:
            self._ask_ahead(i)
            if self._next >= self.steps and not self._asked:  # nothing left for the workers
                self.close()
        return batch

    def on_epoch_end(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (a later read starts them again, from the first batch)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
