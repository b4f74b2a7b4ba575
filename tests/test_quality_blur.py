"""benchmarks/quality_blur.py: how the independent quality measures respond to blurring a stylization."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO


def run_blur(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.quality_blur", *args], cwd=REPO,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=600)


def test_blur_raises_the_style_distances_and_keeps_the_structure(tmp_path):
    """The published model's stylization of a held-out photo, blurred: further from the painting by the
    style measures, the photo's layout kept; one table row per image, the same rows in the JSON."""
    out = tmp_path / "blur.json"
    result = run_blur("--photos", "1", "--size", "128", "--sigmas", "0.5", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["image"], r["blur_sigma"]) for r in rows] == [
        ("photo (identity)", 0), ("published model", 0), ("published model", 0.5), ("published model", 1)]
    sharp, blurred, more = rows[1:]
    assert sharp["style_distance_relative"] < blurred["style_distance_relative"] < more["style_distance_relative"] < 1
    assert sharp["style_statistics_distance"] < blurred["style_statistics_distance"] < more["style_statistics_distance"]
    assert abs(more["structure_similarity"] - sharp["structure_similarity"]) < 0.05
    assert sum(line.startswith("| published model |") for line in result.stdout.splitlines()) == 3


def test_bad_arguments_are_one_line():
    result = run_blur("--size", "66")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("--size a multiple of 4 >= 16, and every sigma > 0")
