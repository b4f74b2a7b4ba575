"""Training checkpoints: model and optimizer state in one `.npz`, written atomically.

A checkpoint is plain numpy arrays, so one written by the JAX backend on a GPU resumes on
TensorFlow on a CPU and the other way round. It is written to a temporary file beside its
final name, flushed to disk and renamed, so a kill at any moment leaves either the previous
checkpoint or the new one, never a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import keras
import numpy as np

from training.errors import StylepipeError
from training.fileio import atomic_write

CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d{8})\.npz$")


class CheckpointError(StylepipeError):
    """A checkpoint cannot be used to resume this run."""


class NonFiniteWeightsError(CheckpointError):
    """The weights to save hold NaN/Inf: the run has diverged."""


def _arrays(variables) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in variables]


class CheckpointManager:
    def __init__(self, directory: str | os.PathLike, fingerprint: dict, keep: int = 3):
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.keep = max(1, int(keep))

    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, step: int, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> Path:
        """Write step `step`; refuses (NonFiniteWeightsError) weights that are NaN/Inf, so the newest
        checkpoint on disk is always one a diverged run can go back to."""
        model_arrays = _arrays(model.weights)
        bad = [v.path for v, a in zip(model.weights, model_arrays) if not np.isfinite(a).all()]
        if bad:
            raise NonFiniteWeightsError(f"step {step}: {len(bad)} weight(s) are NaN/Inf (first: {bad[0]}); "
                                  "not written, the previous checkpoint is kept")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"ckpt-{step:08d}.npz"
        arrays = {f"model/{i:05d}": a for i, a in enumerate(model_arrays)}
        arrays.update({f"optimizer/{i:05d}": a for i, a in enumerate(_arrays(optimizer.variables))})
        meta = {"step": step, "fingerprint": self.fingerprint, "backend": keras.backend.backend()}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_write(path) as f:
            np.savez(f, **arrays)
        for _, old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def restore(self, path: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> int:
        """Load a checkpoint into `model` and `optimizer` (built); returns its step."""
        try:
            with np.load(path) as stored:
                meta = json.loads(bytes(stored["meta"]).decode())
                model_arrays = [stored[k] for k in sorted(k for k in stored.files if k.startswith("model/"))]
                optimizer_arrays = [stored[k] for k in sorted(k for k in stored.files if k.startswith("optimizer/"))]
        except Exception as err:
            raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); delete it to resume from an earlier one") from None
        if meta["fingerprint"] != self.fingerprint:
            differs = sorted(k for k in set(meta["fingerprint"]) | set(self.fingerprint)
                             if meta["fingerprint"].get(k) != self.fingerprint.get(k))
            raise CheckpointError(
                f"{path.parent} holds checkpoints of another run (differs in: {', '.join(differs)}), "
                "though its run.json names this run; use another paths.train_dir (nothing was changed there)"
            )
        _assign(model.weights, model_arrays, path, "model")
        _assign(optimizer.variables, optimizer_arrays, path, "optimizer")
        return int(meta["step"])

    def remove_partial_saves(self) -> list[Path]:
        """Delete temporary files of saves that a kill interrupted (never under a final name)."""
        if not self.directory.is_dir():
            return []
        partial = [p for p in self.directory.glob(".ckpt-*.npz.*.tmp") if p.is_file()]
        for path in partial:
            path.unlink(missing_ok=True)
        return partial


def _assign(variables, arrays, path, what):
    if len(variables) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(variables, arrays)):
        raise CheckpointError(f"checkpoint {path}: its {what} state does not match this model's; use another paths.train_dir")
    for variable, array in zip(variables, arrays):
        variable.assign(array)
