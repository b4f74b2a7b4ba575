"""Shared fixtures: a real photo, the published model imported once, the `dvc repro` pipeline once.

The helpers and paths the tests import are in helpers.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from helpers import CACHE_DIR, CONTENT_DIR, REPO

# Scopes whose fixtures a module's tests share: under pytest-xdist those tests stay on one worker.
SHARED_SCOPES = {"module", "package", "class"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Work units for `pytest -n N` (--dist loadgroup): the e2e tests together on one worker (one fresh
    clone and `dvc repro`), first, so the longest chain starts at once; a module whose tests share a
    module-scoped fixture (an export, a trained model) as one unit, so the fixture is built once;
    every other test on its own."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.get_closest_marker("e2e"):
            group = "e2e"
        elif any(d.scope in SHARED_SCOPES for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs):
            group = item.nodeid.split("::")[0]
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: not item.get_closest_marker("e2e"))  # stable: the rest keep their order


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
