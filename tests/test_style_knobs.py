"""benchmarks/style_knobs.py: a sweep of style settings from one start, judged by the independent measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import CACHE_DIR, REPO

pytestmark = pytest.mark.slow


def test_sweep_writes_one_grid_the_curves_and_the_images(tmp_path):
    out = tmp_path / "knobs"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.style_knobs", "--steps", "2", "--eval-every", "1", "--workers", "1", "--out", str(out),
         "--settings", "style.strength=2", "style.strength=9",
         "--", "init=magenta_published", "experiment=smoke", "data.image_size=64", f"paths.cache_dir={CACHE_DIR}"],
        cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "style_knobs.json").read_text())
    assert list(record["curves"]) == ["style.strength=2", "style.strength=9"]
    for curve in record["curves"].values():
        assert [row["step"] for row in curve] == [0, 1, 2]
        assert curve[0]["style_distance_relative"] < 1  # the published start already paints
        assert all(0 < row["structure_similarity"] <= 1 for row in curve)
    # Both settings start from the same weights: the same step-0 scores.
    first = [c[0] for c in record["curves"].values()]
    assert first[0]["palette_distance"] == first[1]["palette_distance"]
    images = np.load(out / "stylized.npz")
    assert list(images["settings"]) == ["style.strength=2", "start", "style.strength=9"]
    assert images["photos"].shape == (4, 384, 384, 3) and images["images_0"].dtype == np.uint8
    grid = Image.open(out / "style_knobs.png")
    assert grid.size[0] == 5 * 192 and grid.size[1] > 4 * 192  # photos + painting; start and two settings
    assert "| style.strength=9 | 2 |" in result.stdout
