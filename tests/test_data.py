"""The data layer on real photos and on the broken files users actually have."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONTENT_DIR, STYLE_DIR
from training.data import (
    DataError,
    TrainingBatches,
    augment_style,
    load_content,
    load_image,
    load_style_images,
)

PHOTOS = sorted(CONTENT_DIR.glob("*.jpg"))[:6]


def data_cfg(content_dir, **overrides):
    base = {"source": "folder", "content_dir": str(content_dir), "image_size": 64, "resize_short_side": [64, 80],
            "min_side": 64, "heldout_count": 2, "max_pixels": 50_000_000, "seed": 0}
    return OmegaConf.create({**base, **overrides})


@pytest.fixture
def bad_files(tmp_path):
    """One file of each kind that breaks naive loaders, named by the reason it must be skipped for."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "zero.jpg").write_bytes(b"")
    data = PHOTOS[0].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "text.jpg").write_text("this is not a jpeg")
    Image.new("RGB", (20, 20), "red").save(d / "tiny.png")
    Image.new("1", (9000, 9000)).save(d / "bomb.png")  # 81 Mpx, compresses to a few kB
    return d


@pytest.fixture
def odd_but_good(tmp_path):
    """Unusual encodings that are real images and must load."""
    d = tmp_path / "odd"
    d.mkdir()
    photo = Image.open(PHOTOS[1]).convert("RGB").resize((96, 80))
    photo.convert("L").save(d / "gray.png")
    photo.convert("CMYK").save(d / "cmyk.jpg")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    sixteen = np.full((80, 96), 32768, np.uint16)
    sixteen[:, :48] = 65535
    Image.fromarray(sixteen).save(d / "sixteen.png")
    return d


@pytest.mark.parametrize("name, reason", [("zero.jpg", "empty"), ("truncated.jpg", "truncated"), ("text.jpg", "not_an_image"),
                                          ("tiny.png", "too_small"), ("bomb.png", "too_large")])
def test_bad_files_raise_data_error_with_reason(bad_files, name, reason):
    with pytest.raises(DataError) as err:
        load_image(bad_files / name, min_side=64, max_pixels=50_000_000)
    assert err.value.reason == reason
    assert name in str(err.value)


def test_odd_encodings_load_as_rgb_unit_range(odd_but_good):
    for path in sorted(odd_but_good.iterdir()):
        image = load_image(path)
        assert image.shape == (80, 96, 3) and image.dtype == np.float32, path.name
        assert 0.0 <= image.min() and image.max() <= 1.0, path.name
    sixteen = load_image(odd_but_good / "sixteen.png")
    assert sixteen[0, 0, 0] == pytest.approx(1.0) and sixteen[0, -1, 0] == pytest.approx(0.5, abs=1e-3)
    rgba = load_image(odd_but_good / "rgba.png")
    assert rgba.mean() > load_image(odd_but_good / "gray.png").mean() - 0.05  # composited on white, not black


def test_folder_skips_bad_files_and_reports_them(tmp_path, bad_files):
    mixed = tmp_path / "mixed"
    shutil.copytree(bad_files, mixed / "bad")
    for photo in PHOTOS:
        shutil.copy(photo, mixed / photo.name)
    content = load_content(data_cfg(mixed))
    assert len(content.train) + len(content.heldout) == len(PHOTOS)
    assert content.skipped.by_reason() == {"empty": 1, "truncated": 1, "not_an_image": 1, "too_small": 1, "too_large": 1}
    summary = content.skipped.summary()
    assert "5 file(s) skipped" in summary and "truncated.jpg" in summary


def test_heldout_split_is_deterministic_and_disjoint():
    cfg = data_cfg(CONTENT_DIR, heldout_count=4)
    a, b = load_content(cfg), load_content(cfg)
    assert a.heldout_names == b.heldout_names and len(a.heldout_names) == 4
    assert all(h.shape == (64, 64, 3) for h in a.heldout)
    assert len(a.train) == len(list(CONTENT_DIR.glob("*.jpg"))) - 4


@pytest.mark.parametrize("make", ["missing", "empty", "only_bad"])
def test_unusable_folders_are_clear_errors(tmp_path, bad_files, make):
    folder = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "only_bad": bad_files}[make]
    if make == "empty":
        folder.mkdir()
    with pytest.raises(DataError, match="data.content_dir") as err:
        load_content(data_cfg(folder))
    assert str(folder) in str(err.value)


def test_style_images_and_missing_style_path(tmp_path):
    styles, skipped = load_style_images(OmegaConf.create({"name": "all", "dir": str(STYLE_DIR), "images": {}}))
    assert len(styles) == len(list(STYLE_DIR.glob("*.jpg"))) and skipped.count() == 0
    with pytest.raises(DataError, match="style.images.starry"):
        load_style_images(OmegaConf.create({"name": "starry", "images": {"starry": str(tmp_path / "gone.jpg")}}))


def test_training_batches_are_deterministic_and_well_formed():
    content = load_content(data_cfg(CONTENT_DIR))
    styles, _ = load_style_images(OmegaConf.create({"name": "all", "dir": str(STYLE_DIR)}))
    style_cfg = OmegaConf.create({"augment": True})
    first = next(iter(TrainingBatches(content, styles, data_cfg(CONTENT_DIR), style_cfg, batch_size=3, seed=7)))
    again = next(iter(TrainingBatches(content, styles, data_cfg(CONTENT_DIR), style_cfg, batch_size=3, seed=7)))
    for key in ("content", "style"):
        assert first[key].shape == (3, 64, 64, 3) and first[key].dtype == np.float32
        assert 0.0 <= first[key].min() and first[key].max() <= 1.0
        np.testing.assert_array_equal(first[key], again[key])


def test_style_augmentation_changes_colours_and_keeps_size():
    image = load_image(STYLE_DIR / "starry_night.jpg")
    rng = np.random.default_rng(0)
    out = [augment_style(image, rng, 64) for _ in range(4)]
    assert all(o.shape == (64, 64, 3) and 0.0 <= o.min() and o.max() <= 1.0 for o in out)
    means = np.array([o.mean(axis=(0, 1)) for o in out])
    assert np.ptp(means, axis=0).max() > 0.05  # brightness/saturation/hue jitter differ between draws


def write_tfds_dataset(data_dir):
    """A real TFDS dataset on disk (TFRecord shards + metadata) made from shipped photos."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def split(paths):
        images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((96, 80))) for p in paths])
        return tf.data.Dataset.from_tensor_slices({"image": images})

    return tfds.dataset_builders.store_as_tfds_dataset(
        name="sample_photos", version="1.0.0", data_dir=str(data_dir),
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(80, 96, 3))}),
        split_datasets={"train": split(PHOTOS[:4]), "validation": split(PHOTOS[4:])},
    )


def test_tfds_dataset_by_name_streams_training_crops(tmp_path):
    write_tfds_dataset(tmp_path / "tfds")
    tfds_cfg = {"name": "sample_photos", "data_dir": str(tmp_path / "tfds"), "builder_dir": None, "train_split": "train",
                "heldout_split": "validation", "image_key": "image", "download": False, "manual_dir": None, "shuffle_buffer": 8}
    content = load_content(data_cfg(None, source="tfds", tfds=tfds_cfg, heldout_count=1))
    assert len(content.train) == 4 and content.heldout_names == ["validation_0"]
    crops = [content.train.sample(np.random.default_rng(i)) for i in range(6)]  # more draws than images: it repeats
    assert all(c.shape == (64, 64, 3) and c.max() <= 1.0 for c in crops)
    assert content.heldout[0].shape == (64, 64, 3) and content.heldout[0].std() > 0.05  # real pixels, not blank


def test_tfds_dataset_not_prepared_is_a_clear_error(tmp_path):
    tfds_cfg = {"name": "coco/2017", "data_dir": str(tmp_path / "empty"), "builder_dir": None, "train_split": "train",
                "heldout_split": "validation", "image_key": "image", "download": False, "manual_dir": None}
    with pytest.raises(DataError, match="data.tfds"):
        load_content(data_cfg(None, source="tfds", tfds=tfds_cfg))
