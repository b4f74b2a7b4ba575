"""Data: every kind of broken or unusual image file, through the decoder and through a real training run.

What each test guards (tests/test_data.py covers the same decoder on more kinds):
- zero-byte, truncated JPEG/PNG, corrupt JPEG/PNG, text named .jpg, too small, decompression bomb:
  test_bad_files_are_refused_with_their_reason (also tests/test_data.py::test_bad_files_raise_data_error_with_reason,
  test_pil_bomb_limit_is_a_data_error_even_when_max_pixels_allows)
- grayscale, CMYK, 16-bit PNG (grey and RGB), RGBA, palette, smaller than the crop: test_odd_images_are_used
  (also tests/test_data.py::test_odd_encodings_load_as_rgb_unit_range)
- training skips and counts the bad files and says which: test_training_skips_counts_and_names_bad_files
- empty folder, missing folder: tests/test_data.py::test_unusable_folders_are_clear_errors
- fails with a clear message only when nothing usable is left, said once and kept in train.log:
  test_nothing_usable_is_a_one_line_cli_error
"""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pytest

from helpers import compose_train
from reliability_helpers import BAD_FILES, ODD_GOOD_FILES, PHOTOS, TINY, error_lines, run_stage, write_bad_files, write_odd_good_files
from training.data.datasets import DataError, load_content, load_image


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    write_bad_files(folder)
    return folder


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    write_odd_good_files(folder)
    return folder


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_refused_with_their_reason(bad_dir, name):
    """Guards the decoder: each broken file is a DataError naming the file and why (corrupt, not a crash
    or a silently garbled image; a corrupt JPEG header is "corrupt", not "not an image")."""
    with pytest.raises(DataError) as err:
        load_image(bad_dir / name, min_side=32)
    assert err.value.reason == BAD_FILES[name]
    assert str(bad_dir / name) in str(err.value) and "\n" not in str(err.value)


def test_odd_images_are_used(odd_dir):
    """Guards the conversions: unusual encodings become RGB float32 in [0, 1] with the right scale."""
    for name in ODD_GOOD_FILES:
        image = load_image(odd_dir / name, min_side=32)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.float32, name
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.02, name
    gray, gray16, rgb16 = (load_image(odd_dir / n) for n in ("gray.png", "gray16.png", "rgb16.png"))
    np.testing.assert_allclose(gray16, gray, atol=1 / 255)  # 16-bit scaled by 65535, not clipped at 255
    assert np.abs(rgb16 - load_image(odd_dir / "cmyk.jpg")).mean() < 0.05
    rgba = load_image(odd_dir / "rgba.png")
    assert rgba.mean() > load_image(odd_dir / "palette.png").mean()  # half-transparent over white: lighter
    small = load_content({"source": "folder", "content_dir": str(odd_dir), "image_size": 64,
                          "resize_short_side": [64, 80], "min_side": 32, "heldout_count": 0})
    assert len(small.train) == len(ODD_GOOD_FILES) and small.skipped.count() == 0
    crops = [small.train.sample_uint8(np.random.default_rng(i)) for i in range(8)]
    assert all(c.shape == (64, 64, 3) for c in crops)  # the 56x48 image is scaled up to the crop


@pytest.mark.slow
def test_training_skips_counts_and_names_bad_files(tmp_path, bad_dir, odd_dir):
    """Guards the training stage: a folder mixing every bad kind with real photos trains, and the run
    reports how many files were skipped, why, and which (metrics.json and the MLflow run)."""
    from training.loop.train import train

    photos = tmp_path / "photos"
    shutil.copytree(bad_dir, photos / "bad")
    shutil.copytree(odd_dir, photos / "odd")
    for photo in PHOTOS[:3]:
        shutil.copy(photo, photos)
    cfg = compose_train([*TINY, "data=folder", f"data.content_dir={photos}", "data.min_side=32",
                         "trainer.steps=2"], tmp_path)
    metrics = train(cfg)
    assert metrics["trained_steps"] == 2
    assert metrics["skipped_files"] == len(BAD_FILES)
    expected = {}
    for reason in BAD_FILES.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert metrics["skipped_by_reason"] == expected
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert run.data.metrics["skipped_files"] == len(BAD_FILES)
    listed = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/data/skipped_files.txt")
    assert all(f"{name} ({reason})" in listed for name, reason in BAD_FILES.items()), listed
    assert not any(name in listed for name in ODD_GOOD_FILES)


def test_nothing_usable_is_a_one_line_cli_error(tmp_path, bad_dir):
    """Guards the "fail only when nothing is left" rule at the command line: exit 1, one line naming
    the folder and the skipped files, no traceback."""
    result = run_stage("train", [*TINY, "data=folder", f"data.content_dir={bad_dir}", "data.min_side=32"], tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: data.content_dir={bad_dir}: no usable image among {len(BAD_FILES)} file(s)")
    assert "zero.jpg (empty)" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs" / "train" / "checkpoints").exists()
    # Said once on the terminal, and kept in the run's log file.
    message = line.removeprefix("error: ")
    assert (result.stdout + result.stderr).count(message) == 1, result.stdout[-2000:]
    assert message in (tmp_path / "outputs" / "train" / "train.log").read_text()
