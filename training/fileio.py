"""Writing files so that a crash never leaves a half-written file under a final name, and so that the
same content gives the same bytes (DVC hashes the stages' outputs into dvc.lock)."""

from __future__ import annotations

import contextlib
import io
import json
import errno
import os
import re
import tempfile
import zipfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file beside `path`; on success flush, fsync and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets ordinary permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def recorded_path(path: str | os.PathLike) -> str:
    """`path` as an output file records it: relative to the working directory (the repo root, where
    the stages run) when the file is inside it, so that every clone writes the same record; else absolute."""
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(absolute)


def save_keras_atomically(model, path: str | os.PathLike) -> Path:
    """Keras writes by path: save beside the final name, then write it there atomically (never a
    half-written model), as `reproducible_keras_archive`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        atomic_write_bytes(path, reproducible_keras_archive(tmp.read_bytes()))
    finally:
        tmp.unlink(missing_ok=True)
    return path


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
KERAS_METADATA, KERAS_CONFIG = "metadata.json", "config.json"
SHARED_OBJECT_ID = re.compile(rb'"shared_object_id": (\d+)')


def reproducible_keras_archive(data: bytes) -> bytes:
    """A `.keras` archive that is the same bytes for the same model: Keras stamps the time of saving
    (on the weights entry and as metadata.json's `date_saved`) and numbers shared objects by their
    memory address; here every entry gets the zip epoch, `date_saved` that date, and the shared
    objects 0, 1, 2... in order of appearance. Entries, their order and compression stay."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as archive:
        for entry in source.infolist():
            content = source.read(entry)
            if entry.filename == KERAS_CONFIG:
                content = _renumber_shared_objects(content)
            elif entry.filename == KERAS_METADATA:
                content = json.dumps({**json.loads(content), "date_saved": "1980-01-01@00:00:00"}).encode()
            fixed = zipfile.ZipInfo(entry.filename, date_time=ZIP_EPOCH)
            fixed.compress_type, fixed.external_attr = entry.compress_type, entry.external_attr
            archive.writestr(fixed, content)
    return out.getvalue()


def _renumber_shared_objects(content: bytes) -> bytes:
    # Keras matches a shared object's uses by this id within one config: any distinct numbers do.
    numbers: dict[bytes, int] = {}
    return SHARED_OBJECT_ID.sub(lambda m: b'"shared_object_id": %d' % numbers.setdefault(m.group(1), len(numbers)), content)


MIN_FREE_BYTES = 100 * 2**20  # a stage writes up to tens of MB (models, checkpoints, exports): refuse to start below this
WRITE_FAILURES = {errno.ENOSPC: "no space left on its disk", errno.EDQUOT: "disk quota exceeded",
                  errno.EFBIG: "the file outgrew what its disk or the process may write",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}


def _existing(folder: str | os.PathLike) -> Path:
    """`folder`, or the nearest folder above it that exists (where it would be created)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable_reason(folder: str | os.PathLike) -> str | None:
    """Why nothing can be written in `folder` (created if missing), or None when it can: checked before any work."""
    existing = _existing(folder)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return "read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "permission denied"
    free = os.statvfs(existing).f_bavail * os.statvfs(existing).f_frsize
    if free < MIN_FREE_BYTES:
        return f"only {free / 2**20:.1f} MB free on its disk (a stage needs at least {MIN_FREE_BYTES // 2**20} MB)"
    return None


def write_failure(err: BaseException) -> str | None:
    """One line for a write that failed for want of space or permission (the file and the cause), else None."""
    if isinstance(err, OSError) and err.errno in WRITE_FAILURES:
        where = err.filename or "a file"
        return (f"{where}: {WRITE_FAILURES[err.errno]}; the files written before are kept as they were. "
                "Free space or choose a writable folder, and run the same command again")
    return None
