"""The README's own-painting recipe in a fresh clone right after `dvc repro`, with a painting, photos
and a video the project does not ship: train, export (it bakes that painting), evaluate, stylize a
photo and an mp4 (tests/test_stylize.py tiles a 4032x3024 phone photo). The starry training command
runs there too."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers import CACHE_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def run(clone, *args) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("STYLEPIPE_ROOT", "STYLEPIPE_PIPELINE_RUN_ID")}
    env.update(STYLEPIPE_CACHE=str(CACHE_DIR), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-m", *args], cwd=clone, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}"
    return result.stdout + result.stderr


def write_painting(path) -> None:
    """Brush strokes in a warm palette on a dark ground: nothing like the shipped paintings."""
    rng = np.random.default_rng(7)
    canvas = Image.new("RGB", (480, 360), (30, 20, 60))
    draw = ImageDraw.Draw(canvas)
    for _ in range(400):
        x, y = rng.integers(0, 480), rng.integers(0, 360)
        dx, dy = rng.integers(-40, 40, size=2)
        colour = tuple(int(c) for c in rng.choice([(230, 120, 30), (250, 210, 60), (200, 40, 40), (90, 160, 220)]))
        draw.line([(x, y), (x + dx, y + dy)], fill=colour, width=int(rng.integers(3, 9)))
    canvas.save(path, quality=95)


def photo(width, height) -> Image.Image:
    """A scene the project does not ship: a sky gradient, a sun and a hill."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([0.3 + 0.5 * y, 0.5 + 0.3 * y, 0.9 - 0.4 * y], axis=-1)
    rgb[(x - 0.7) ** 2 + (y - 0.25) ** 2 < 0.01] = (1.0, 0.85, 0.3)
    rgb[y > 0.55 + 0.1 * np.sin(8 * x)] = (0.2, 0.5, 0.2)
    return Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def write_clip(path, frames=6, size=(160, 120)) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for i in range(frames):
            frame = np.asarray(photo(*size).transform(size, Image.AFFINE, (1, 0, -3 * i, 0, 1, 0)))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))


def test_readme_own_painting_commands_on_a_fresh_clone(dvc_pipeline, tmp_path):
    clone = dvc_pipeline.path
    assert "wrote" in run(clone, "pipelines.train", "style=starry", "experiment=smoke")  # right after `dvc repro`

    painting = tmp_path / "my_painting.jpg"
    write_painting(painting)
    log = run(clone, "pipelines.train", f"style.image={painting}", "init=magenta_published", "experiment=smoke")
    moved = re.search(r"-> this run writes to (\S+)", log)
    train_dir = moved.group(1) if moved else str(clone / "outputs" / "train")
    assert json.loads((clone / train_dir / "style.json").read_text())["name"] == "my_painting"

    # The export and evaluate commands at the CPU preset `dvc repro` uses (params.yaml): one size, 5 timed runs.
    run(clone, "pipelines.export", f"paths.train_dir={train_dir}", "experiment=smoke")
    manifest = json.loads((clone / "outputs" / "export" / "manifest.json").read_text())
    assert manifest["style"] == "my_painting"
    assert manifest["style_sha256"] == hashlib.sha256(painting.read_bytes()).hexdigest()
    run(clone, "pipelines.evaluate", "experiment=smoke")
    assert json.loads((clone / "outputs" / "evaluate" / "metrics.json").read_text())["quality"]["style"] == "my_painting"

    photo(640, 480).save(tmp_path / "garden.jpg", quality=92)
    write_clip(tmp_path / "clip.mp4")
    for name in ("garden.jpg", "clip.mp4"):
        run(clone, "pipelines.stylize", f"input={tmp_path / name}")
    out = clone / "outputs" / "stylized"
    assert Image.open(out / "garden_my_painting.jpg").size == (640, 480)
    with av.open(str(out / "clip_my_painting.mp4")) as styled:
        assert sum(1 for _ in styled.decode(video=0)) == 6
