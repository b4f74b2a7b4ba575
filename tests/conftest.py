"""Shared fixtures: a real photo, the published model imported once, the `dvc repro` pipeline once.

The helpers and paths the tests import are in helpers.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from helpers import CACHE_DIR, CONTENT_DIR, REPO


@pytest.fixture
def real_photo():
    from PIL import Image
    import numpy as np

    image = Image.open(CONTENT_DIR / "chelsea.jpg").convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255.0


@pytest.fixture(scope="session")
def published_model_path(tmp_path_factory):
    """Magenta's published weights imported into our network, saved as a stylizer .keras file."""
    from omegaconf import OmegaConf

    from training.weights.magenta_import import PUBLISHED_ALPHA, PUBLISHED_BACKBONE, load_published_into
    from training.network.stylizer import build_stylizer

    model_cfg = OmegaConf.create({"name": "magenta_lite", "alpha": PUBLISHED_ALPHA, "freeze_batch_norm": True})
    stylizer = build_stylizer(model_cfg, OmegaConf.create(PUBLISHED_BACKBONE), CACHE_DIR)
    load_published_into(stylizer, REPO / "models" / "magenta-published")
    path = tmp_path_factory.mktemp("published") / "model.keras"
    stylizer.save(path)
    return path


@pytest.fixture(scope="session")
def dvc_pipeline(tmp_path_factory):
    """`dvc repro` once in a fresh clone of the committed HEAD, shared by the e2e tests of one pytest run.

    The clone uses this checkout's weights cache (STYLEPIPE_CACHE): fetched at most once per machine.
    """
    import shutil
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    clone = tmp_path_factory.mktemp("pipeline") / "stylepipe"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("STYLEPIPE_ROOT", "STYLEPIPE_PIPELINE_RUN_ID")}
    env.update(STYLEPIPE_CACHE=str(CACHE_DIR), DVC_NO_ANALYTICS="1")

    def dvc(*args, check=True):
        result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=clone, env=env, capture_output=True, text=True)
        if check and result.returncode != 0:
            pytest.fail(f"dvc {' '.join(args)} exited {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}")
        return result

    assert shutil.which("git"), "git is needed to clone the repo"
    start = time.monotonic()
    first = dvc("repro")
    return SimpleNamespace(path=clone, dvc=dvc, first_repro=first.stdout + first.stderr,
                           repro_seconds=time.monotonic() - start)
