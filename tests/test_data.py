"""The data layer on real photos and on the broken files users actually have."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from helpers import CONTENT_DIR, REPO, STYLE_DIR, compose_train
from training.config import ConfigError
from training.data.datasets import (
    DataError,
    SkipReport,
    TrainingBatches,
    augment_style,
    load_content,
    load_image,
    load_painting,
    load_style_images,
    random_resized_crop_image,
    style_crop,
    trim_frame,
    unit_float32,
)

ALL_PHOTOS = sorted(CONTENT_DIR.glob("*.jpg"))
PHOTOS = ALL_PHOTOS[:6]


def data_cfg(content_dir, **overrides):
    base = {"source": "folder", "content_dir": str(content_dir), "image_size": 64, "resize_short_side": [64, 80],
            "min_side": 64, "heldout_count": 2, "max_pixels": 50_000_000, "seed": 0}
    return OmegaConf.create({**base, **overrides})


def write_png_header_only(path, width, height):
    """A PNG whose header claims width x height but holds 4 rows: decoding it would fail as truncated."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    rows = zlib.compress(b"\0" * (1 + (width + 7) // 8) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


# name -> reason it must be skipped for (with min_side=64, max_pixels=50e6)
BAD_FILES = {"zero.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not_an_image",
             "tiny.png": "too_small", "bomb.png": "too_large", "claims_huge.png": "too_large"}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """One file of each kind that breaks naive loaders (read only: tests copy it to change it)."""
    d = tmp_path_factory.mktemp("bad")
    (d / "zero.jpg").write_bytes(b"")
    data = PHOTOS[0].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "text.jpg").write_text("this is not a jpeg")
    Image.new("RGB", (20, 20), "red").save(d / "tiny.png")
    Image.new("1", (9000, 9000)).save(d / "bomb.png")  # a real 81 Mpx PNG, a few kB on disk
    write_png_header_only(d / "claims_huge.png", 20000, 20000)
    return d


@pytest.fixture
def odd_but_good(tmp_path):
    """Unusual encodings that are real images and must load."""
    d = tmp_path / "odd"
    d.mkdir()
    photo = Image.open(PHOTOS[1]).convert("RGB").resize((96, 80))
    photo.save(d / "photo.png")
    photo.convert("L").save(d / "gray.png")
    photo.quantize(256).save(d / "palette.png")
    photo.convert("CMYK").save(d / "cmyk.jpg", quality=95)
    rgba = photo.convert("RGBA")
    alpha = np.full((80, 96), 255, np.uint8)
    alpha[:, 48:] = 0  # right half fully transparent: must come out white
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(d / "rgba.png")
    sixteen = np.full((80, 96), 32768, np.uint16)
    sixteen[:, :48] = 65535
    Image.fromarray(sixteen).save(d / "sixteen.png")
    for suffix in ("bmp", "gif", "webp", "tif"):
        photo.save(d / f"photo.{suffix}")
    return d


@pytest.mark.parametrize("name, reason", sorted(BAD_FILES.items()))
def test_bad_files_raise_data_error_with_reason(bad_files, name, reason):
    with pytest.raises(DataError) as err:
        load_image(bad_files / name, min_side=64, max_pixels=50_000_000)
    assert err.value.reason == reason
    assert str(bad_files / name) in str(err.value)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(DataError) as err:
        load_image(tmp_path / "gone.jpg")
    assert err.value.reason == "unreadable" and "gone.jpg" in str(err.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10000, 20000])  # PIL warns past 89 Mpx and raises past 179 Mpx
def test_pil_bomb_limit_is_a_data_error_even_when_max_pixels_allows(tmp_path, side):
    path = tmp_path / "huge.png"
    write_png_header_only(path, side, side)
    with pytest.raises(DataError) as err:
        load_image(path, max_pixels=10**12)
    assert err.value.reason == "too_large"  # not "truncated": refused from the header, never decoded


def test_odd_encodings_load_as_rgb_unit_range(odd_but_good):
    reference = load_image(odd_but_good / "photo.png")
    for path in sorted(odd_but_good.iterdir()):
        image = load_image(path)
        assert image.shape == (80, 96, 3) and image.dtype == np.float32, path.name
        assert 0.0 <= image.min() and image.max() <= 1.0, path.name
        if path.stem in ("photo", "cmyk", "palette"):
            assert np.abs(image - reference).mean() < 0.05, path.name  # same picture, lossy at most
    gray = load_image(odd_but_good / "gray.png")
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    sixteen = load_image(odd_but_good / "sixteen.png")
    assert sixteen[0, 0, 0] == pytest.approx(1.0) and sixteen[0, -1, 0] == pytest.approx(32768 / 65535)
    rgba = load_image(odd_but_good / "rgba.png")
    np.testing.assert_array_equal(rgba[:, 48:], 1.0)  # transparent composited on white, not black
    np.testing.assert_allclose(rgba[:, :48], reference[:, :48])


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    Image.open(PHOTOS[0]).convert("RGB").resize((96, 80)).save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").shape == (96, 80, 3)


def mixed_folder(tmp_path, bad_files):
    """Good photos (one in a subfolder, one with an upper-case suffix) mixed with every bad file."""
    mixed = tmp_path / "mixed"
    shutil.copytree(bad_files, mixed / "bad")
    (mixed / "nested").mkdir()
    for i, photo in enumerate(PHOTOS):
        shutil.copy(photo, mixed / ("nested" if i == 0 else ".") / (photo.stem + (".JPG" if i == 1 else ".jpg")))
    (mixed / "notes.txt").write_text("not an image suffix: ignored, not reported")
    return mixed


def test_folder_skips_bad_files_and_reports_them(tmp_path, bad_files):
    content = load_content(data_cfg(mixed_folder(tmp_path, bad_files)))
    assert len(content.train) + len(content.heldout) == len(PHOTOS)
    assert set(content.heldout_names) <= {p.stem for p in PHOTOS}
    assert content.skipped.count() == len(BAD_FILES)
    assert content.skipped.by_reason() == {"empty": 1, "truncated": 1, "not_an_image": 1, "too_small": 1,
                                           "too_large": 2}
    assert {(p.split("/")[-1], r) for p, r in content.skipped.skipped} == set(BAD_FILES.items())
    summary = content.skipped.summary()
    assert summary.startswith(f"{len(BAD_FILES)} file(s) skipped")
    assert all(name in summary for name in BAD_FILES)


def test_skip_report_summary_merges_and_limits():
    a = SkipReport([(f"/p/{i}.jpg", "corrupt") for i in range(12)])
    merged = a.merge(SkipReport([("/p/x.png", "too_small")]))
    assert merged.count() == 13 and merged.by_reason() == {"corrupt": 12, "too_small": 1}
    assert "and 3 more" in merged.summary() and "/p/9.jpg" in merged.summary() and "/p/x.png" not in merged.summary()
    assert a.count() == 12  # merge returns a new report


@pytest.mark.parametrize("make", ["missing", "empty", "only_bad", "a_file", "all_held_out"])
def test_unusable_folders_are_clear_errors(tmp_path, bad_files, make):
    folder = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "only_bad": bad_files,
              "a_file": PHOTOS[0], "all_held_out": tmp_path / "two"}[make]
    if make == "empty":
        folder.mkdir()
    if make == "all_held_out":
        folder.mkdir()
        for photo in PHOTOS[:2]:
            shutil.copy(photo, folder)
    with pytest.raises(DataError, match="data.content_dir") as err:
        load_content(data_cfg(folder))
    assert str(folder) in str(err.value)


def test_heldout_split_is_deterministic_and_disjoint():
    cfg = data_cfg(CONTENT_DIR, heldout_count=4)
    a, b = load_content(cfg), load_content(cfg)
    assert a.heldout_names == b.heldout_names and len(a.heldout_names) == 4
    assert load_content(data_cfg(CONTENT_DIR, heldout_count=4, seed=1)).heldout_names != a.heldout_names
    assert all(h.shape == (64, 64, 3) and h.dtype == np.float32 for h in a.heldout)
    assert all(min(f.shape[:2]) > 64 for f in a.heldout_full)  # uncropped originals kept for evaluation
    train_names = {p.stem for p in a.train.paths}
    assert len(train_names) == len(ALL_PHOTOS) - 4 == len(a.train)
    assert not train_names & set(a.heldout_names)


def test_a_file_that_breaks_after_validation_is_skipped_once(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, folder)
    content = load_content(data_cfg(folder, heldout_count=0, cache_bytes=0))  # no cache: decode when drawn
    broken = content.train.paths[0]
    broken.write_bytes(b"overwritten")
    rng = np.random.default_rng(0)
    crops = [content.train.sample_uint8(rng) for _ in range(40)]
    assert all(c.shape == (64, 64, 3) for c in crops)
    assert content.skipped.skipped == [(str(broken), "not_an_image")]
    assert len(content.train) == len(PHOTOS) - 1 and broken not in content.train.paths


def test_cached_photos_give_the_crops_of_photos_decoded_when_drawn():
    # The cache keeps PIL images (no array conversion per crop); an empty cache decodes arrays each draw.
    cached = load_content(data_cfg(CONTENT_DIR, heldout_count=0))
    uncached = load_content(data_cfg(CONTENT_DIR, heldout_count=0, cache_bytes=0))
    assert len(cached.train.cache) == len(cached.train) and not uncached.train.cache
    assert cached.train.cached_bytes == sum(4 * im.width * im.height for im in cached.train.cache.values())
    flips = 0
    for seed in range(24):
        a = cached.train.sample_uint8(np.random.default_rng(seed))
        b = uncached.train.sample_uint8(np.random.default_rng(seed))
        assert a.dtype == np.uint8 and a.shape == (64, 64, 3) and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
        rng = np.random.default_rng(seed)  # replay the draws to see whether this crop was flipped
        image = cached.train.cache[cached.train.paths[int(rng.integers(len(cached.train)))]]
        short = int(rng.integers(64, 81))
        crop = np.asarray(random_resized_crop_image(image, short, 64, rng))
        flipped = rng.random() < 0.5
        flips += flipped
        np.testing.assert_array_equal(a, crop[:, ::-1] if flipped else crop)
    assert 0 < flips < 24


def test_plain_dicts_and_the_projects_own_config(tmp_path):
    plain = {"source": "folder", "content_dir": str(CONTENT_DIR), "image_size": 64, "resize_short_side": [64, 80],
             "heldout_count": 1}
    assert len(load_content(plain).heldout) == 1
    cfg = compose_train([], tmp_path)  # data=samples, the shipped photos
    content = load_content(cfg.data)
    assert len(content.train) == len(ALL_PHOTOS) - cfg.data.heldout_count
    assert content.train.sample_uint8(np.random.default_rng(0)).shape == (256, 256, 3)
    with pytest.raises(DataError, match="data.source"):
        load_content({**plain, "source": "s3"})


def test_style_images_and_missing_or_broken_style_paths(tmp_path):
    styles, skipped = load_style_images(OmegaConf.create({"name": "all", "dir": str(STYLE_DIR), "images": {}}))
    assert list(styles) == sorted(p.stem for p in STYLE_DIR.glob("*.jpg")) and skipped.count() == 0
    with pytest.raises(ConfigError, match="style.images.starry") as err:
        load_style_images(OmegaConf.create({"name": "starry", "images": {"starry": str(tmp_path / "gone.jpg")}}))
    assert "gone.jpg" in str(err.value)
    (tmp_path / "broken.jpg").write_text("not a painting")
    with pytest.raises(DataError, match="style.images.broken"):
        load_style_images({"name": "x", "images": {"broken": str(tmp_path / "broken.jpg")}})


def test_style_dir_skips_bad_files_and_keeps_explicit_ones(tmp_path):
    style_dir = tmp_path / "styles"
    style_dir.mkdir()
    shutil.copy(STYLE_DIR / "starry_night.jpg", style_dir)
    (style_dir / "broken.jpg").write_bytes(b"")
    styles, skipped = load_style_images({"dir": str(style_dir), "images": {"extra": str(PHOTOS[0])}})
    assert list(styles) == ["extra", "starry_night"]
    assert skipped.skipped == [(str(style_dir / "broken.jpg"), "empty")]
    (style_dir / "starry_night.jpg").unlink()
    with pytest.raises(DataError, match="no usable style image"):
        load_style_images({"name": "none", "dir": str(style_dir)})


@pytest.fixture(scope="module")
def folder_content():
    return load_content(data_cfg(CONTENT_DIR))


@pytest.fixture(scope="module")
def all_styles():
    return load_style_images(OmegaConf.create({"name": "all", "dir": str(STYLE_DIR)}))[0]


@pytest.mark.parametrize("augment", [True, False])
def test_training_batches_are_deterministic_and_well_formed(folder_content, all_styles, augment):
    def first_batches(seed, n=2):
        batches = iter(TrainingBatches(folder_content, all_styles, data_cfg(CONTENT_DIR), {"augment": augment},
                                       batch_size=3, seed=seed))
        return [next(batches) for _ in range(n)]

    first, again, other = first_batches(7), first_batches(7), first_batches(8)
    for key in ("content", "style"):
        assert first[0][key].shape == (3, 64, 64, 3) and first[0][key].dtype == np.float32
        assert 0.0 <= first[0][key].min() and first[0][key].max() <= 1.0
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(first[0][key], other[0][key])
    index = first[0]["style_index"]
    assert index.dtype == np.int32 and index.shape == (3,) and 0 <= index.min() and index.max() < len(all_styles)
    if augment:  # each crop's colour jitter travels with the batch, for the device to apply
        jitter = first[0]["style_jitter"]
        assert jitter.dtype == np.float32 and jitter.shape == (3, 3)
        np.testing.assert_array_equal(jitter, again[0]["style_jitter"])
    else:
        assert "style_jitter" not in first[0]
    if not augment:  # fixed styles: exactly the centre crop of the chosen painting
        names = list(all_styles)
        for i, style in zip(index, first[0]["style"]):
            np.testing.assert_array_equal(style, style_crop(all_styles[names[i]], 64))


def test_training_batches_as_tf_dataset(folder_content, all_styles):
    batches = TrainingBatches(folder_content, all_styles, data_cfg(CONTENT_DIR), {"augment": True}, 2, seed=0)
    batch = next(iter(batches.as_tf_dataset()))
    assert batch["content"].shape == (2, 64, 64, 3) and batch["style_index"].dtype.name == "int32"
    np.testing.assert_allclose(batch["content"].numpy(), next(iter(batches))["content"])


def test_uint8_training_input_is_the_float_batch_rounded(folder_content, all_styles, tfds_dir):
    """trainer.input_dtype=uint8: a quarter of the bytes, the same images to within half a level."""
    folder = TrainingBatches(folder_content, all_styles, data_cfg(CONTENT_DIR), {"augment": True}, 2, seed=0)
    cfg = data_cfg(None, source="tfds", tfds=tfds_cfg(data_dir=str(tfds_dir)), heldout_count=1)
    stream = TrainingBatches(load_content(cfg), all_styles, cfg, {"augment": True}, 2, seed=0)
    for batches, read in ((folder, lambda feed: feed[0]), (stream, lambda feed: next(iter(feed)))):
        floats, quantised = read(batches.training_input(0, 1, workers=1)), read(batches.training_input(0, 1, 1, "uint8"))
        for key in ("content", "style"):
            as_uint8 = np.asarray(quantised[key])
            assert as_uint8.dtype == np.uint8 and as_uint8.nbytes * 4 == np.asarray(floats[key]).nbytes
            np.testing.assert_allclose(as_uint8 / 255.0, np.asarray(floats[key]), atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("augment", [False, True])
def test_uint8_batches_hold_the_float_batches_pixels_exactly(folder_content, all_styles, augment):
    """Crops are made in uint8 and become floats once; augmented styles' colour jitter waits for the
    device, so a uint8 batch is the float32 batch's pixels exactly, for content and style."""
    batches = TrainingBatches(folder_content, all_styles, data_cfg(CONTENT_DIR), {"augment": augment}, 3, seed=0)
    floats, quantised = batches.batch(5), batches.batch(5, "uint8")
    for key in ("content", "style"):
        assert quantised[key].dtype == np.uint8 and floats[key].dtype == np.float32
        np.testing.assert_array_equal(unit_float32(quantised[key]), floats[key])
    assert np.ptp(floats["content"]) > 0.5  # real photos, not a constant


def test_training_batches_at_full_size(all_styles):
    """256x256 batches from the shipped photos with augmented styles (their speed: benchmarks/input_pipeline.py)."""
    cfg = data_cfg(CONTENT_DIR, image_size=256, resize_short_side=[258, 320], heldout_count=4)
    batches = iter(TrainingBatches(load_content(cfg), all_styles, cfg, {"augment": True}, batch_size=8, seed=0))
    first, second = next(batches), next(batches)
    for batch in (first, second):
        for key in ("content", "style"):
            assert batch[key].shape == (8, 256, 256, 3) and batch[key].dtype == np.float32
            assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
    assert not np.array_equal(first["content"], second["content"])  # fresh crops every batch


def test_style_augmentation_changes_colours_and_keeps_size():
    """The host's crops and drawn jitter, applied as the objective applies them on the device."""
    from keras import ops

    from training.data.color_jitter import jitter_colours

    image = Image.fromarray((load_image(STYLE_DIR / "starry_night.jpg") * 255).round().astype(np.uint8))
    rng = np.random.default_rng(0)
    crops, jitter = map(np.stack, zip(*(augment_style(image, rng, 64) for _ in range(6))))
    assert crops.shape == (6, 64, 64, 3) and crops.dtype == np.uint8 and jitter.shape == (6, 3)
    assert len({c.tobytes() for c in crops}) == 6  # a fresh scale, crop and flip each draw
    out = ops.convert_to_numpy(jitter_colours(unit_float32(crops), jitter))
    assert 0.0 <= out.min() and out.max() <= 1.0
    means = out.mean(axis=(1, 2))
    assert np.ptp(means, axis=0).max() > 0.05  # brightness/saturation/hue jitter differ between draws
    hue_order = {tuple(np.argsort(m)) for m in means}
    assert len(hue_order) > 1  # hue shifts reorder the dominant channels, not just scale them


# ---------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, bad_files):
    """A real TFDS dataset on disk (TFRecord shards + dataset_info.json), built offline from shipped
    photos, with a truncated JPEG and a too-small image among the training examples."""
    import tensorflow_datasets as tfds

    root = tmp_path_factory.mktemp("tfds")
    files = []
    for photo in PHOTOS:
        files.append(root / photo.name)
        Image.open(photo).convert("RGB").resize((96, 80)).save(files[-1])
    Image.new("RGB", (20, 20), "red").save(root / "tiny.jpg")
    train = [*files[:4], bad_files / "truncated.jpg", root / "tiny.jpg"]
    tfds.dataset_builders.store_as_tfds_dataset(
        name="sample_photos", version="1.0.0", data_dir=str(root / "data"),
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(encoding_format="jpeg")}),
        # Paths, not arrays: TFDS stores the JPEG bytes as they are, so the broken ones stay broken.
        split_datasets={"train": [(str(i), {"image": str(f)}) for i, f in enumerate(train)],
                        "validation": [(str(i), {"image": str(f)}) for i, f in enumerate(files[4:])]},
    )
    return root / "data"


def tfds_cfg(**overrides):
    return {"name": "sample_photos", "data_dir": None, "builder_dir": None, "train_split": "train",
            "heldout_split": "validation", "image_key": "image", "download": False, "manual_dir": None,
            "shuffle_buffer": 8, **overrides}


@pytest.mark.parametrize("by", ["name", "builder_dir"])
def test_tfds_dataset_streams_training_crops_and_skips_bad_examples(tfds_dir, by):
    where = ({"data_dir": str(tfds_dir)} if by == "name"
             else {"name": None, "builder_dir": str(tfds_dir / "sample_photos" / "1.0.0")})
    content = load_content(data_cfg(None, source="tfds", tfds=tfds_cfg(**where), heldout_count=1))
    assert len(content.train) == 6 and content.heldout_names == ["validation_0"]
    assert content.heldout[0].shape == (64, 64, 3) and content.heldout[0].std() > 0.05  # real pixels, not blank
    assert content.heldout_full[0].shape == (80, 96, 3)
    rng = np.random.default_rng(0)
    crops = [unit_float32(content.train.sample_uint8(rng)) for _ in range(14)]  # three passes over the 4 good examples
    assert all(c.shape == (64, 64, 3) and c.dtype == np.float32 and c.std() > 0.05 for c in crops)
    assert content.skipped.by_reason() == {"truncated": 1, "too_small": 1}  # counted once, not per pass
    assert all(name.startswith("sample_photos-train") for name, _ in content.skipped.skipped)


def test_tfds_training_batches_repeat_for_a_seed(tfds_dir, all_styles):
    cfg = data_cfg(None, source="tfds", tfds=tfds_cfg(data_dir=str(tfds_dir)), heldout_count=1)
    batches = TrainingBatches(load_content(cfg), all_styles, cfg, {"augment": False}, batch_size=4, seed=3)
    first, again = next(iter(batches)), next(iter(batches))
    np.testing.assert_array_equal(first["content"], again["content"])


@pytest.mark.parametrize("override, match", [
    ({"name": "coco/2017"}, "data.tfds.download=true"),
    ({"heldout_split": "test"}, "data.tfds.heldout_split='test'.*available: train, validation"),
    ({"image_key": "photo"}, "data.tfds.image_key"),
    ({"name": None, "builder_dir": "/nonexistent/dir"}, "data.tfds.builder_dir=/nonexistent/dir"),
])
def test_tfds_problems_are_clear_errors(tfds_dir, override, match):
    cfg = data_cfg(None, source="tfds", tfds=tfds_cfg(data_dir=str(tfds_dir), **override))
    with pytest.raises(DataError, match=match):
        load_content(cfg)


def _read_as_fit_does(feed) -> list[dict]:
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(feed, shuffle=False)
    batches = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    return batches


def test_worker_processes_make_the_batches_threads_make(folder_content, all_styles):
    """trainer.data_worker_processes: batches from forked processes through shared memory, read as fit
    reads them, are the threads' batches in the same order (batch i is a function of (seed, i))."""
    from training.data.batch_processes import ProcessBatches

    batches = TrainingBatches(folder_content, all_styles, data_cfg(CONTENT_DIR), {"augment": True}, 2, seed=0)
    threads = _read_as_fit_does(batches.training_input(3, 7, workers=2, dtype="uint8"))
    feed = batches.training_input(3, 7, workers=2, dtype="uint8", processes=True)
    assert isinstance(feed, ProcessBatches) and feed.slots == 4  # 7 batches through 4 slots: each reused
    processes = _read_as_fit_does(feed)
    assert feed._pool is None  # stopped once the last batch is read
    # Each batch but the first (made in the reading thread: it fixes the slots' layout) came from the workers.
    assert feed.pool_reads == 6 and feed.read_seconds >= feed.wait_seconds > 0
    assert feed.pool_made == 6 and feed.make_seconds > 0  # the workers timed their own batches
    assert len(threads) == len(processes) == 7
    for a, b, index in zip(threads, processes, range(3, 10)):
        assert sorted(a) == sorted(b) == ["content", "style", "style_index", "style_jitter"]
        expected = batches.batch(index, "uint8")
        for key in a:
            np.testing.assert_array_equal(a[key], expected[key])
            np.testing.assert_array_equal(b[key], expected[key])
    # Read again (a second fit on the same feed): workers start again, the same batches.
    again = _read_as_fit_does(feed)
    np.testing.assert_array_equal(again[6]["style"], processes[6]["style"])


def test_worker_processes_serve_any_read_order(folder_content, all_styles, caplog):
    """TensorFlow's fit reads batches 0 and 1 for their shapes and starts over; fit(shuffle=True) reads
    in any order. Each read is still batch i, and a skip ahead says why it is slow."""
    batches = TrainingBatches(folder_content, all_styles, data_cfg(CONTENT_DIR), {"augment": True}, 2, seed=0)
    for order, warns in (([0, 1, 0, 1, 2, 3, 4, 5, 6, 7], False), ([5, 0, 7, 1, 3, 2, 6, 4], True)):
        feed = batches.training_input(0, 8, workers=2, dtype="uint8", processes=True)
        caplog.clear()
        for i in order:
            np.testing.assert_array_equal(feed[i]["content"], batches.batch(i, "uint8")["content"])
        assert ("read out of order" in caplog.text) is warns, order
        feed.close()


def test_worker_process_errors_reach_the_training_thread(tmp_path, all_styles, monkeypatch):
    """A DataError in a worker (every photo gone since it was checked) is raised in the training
    thread as that DataError; a worker that dies is named with its exit code, and workers that hang
    end in an error too, never a silent stall."""
    import os
    import shutil
    import signal

    from training.data import batch_processes
    from training.data.batch_processes import BatchWorkerError

    photos = tmp_path / "photos"
    shutil.copytree(CONTENT_DIR, photos)
    cfg = data_cfg(str(photos), heldout_count=1, cache_bytes=0)  # decoded on every draw: deleting them matters
    batches = TrainingBatches(load_content(cfg), all_styles, cfg, {"augment": True}, 2, seed=0)
    feed = batches.training_input(0, 12, workers=2, processes=True)
    assert feed[0]["content"].shape == (2, 64, 64, 3)
    for worker in feed._pool.processes:  # (one killed alone leaves the other to make every batch)
        os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(BatchWorkerError, match=r"stylepipe-batches-\d exited with code -9 \(killed, or out of memory"):
        for i in range(1, 12):
            feed[i]
    assert feed._pool is None  # the others were stopped too

    # Workers alive but making nothing (hung): a clear error after STALL_S, and they are killed.
    monkeypatch.setattr(batch_processes, "STALL_S", 2.0)
    monkeypatch.setattr(batch_processes, "JOIN_S", 0.5)
    feed = batches.training_input(0, 12, workers=2, processes=True)
    feed[0]
    workers = feed._pool.processes
    for worker in workers:
        os.kill(worker.pid, signal.SIGSTOP)
    with pytest.raises(BatchWorkerError, match=r"no training batch from the 2 batch worker processes in 2 s: they hang"):
        for i in range(1, 12):
            feed[i]
    assert all(worker.exitcode == -signal.SIGKILL for worker in workers)

    feed = batches.training_input(0, 12, workers=2, processes=True)
    feed[0]  # starts the workers, which make batches 1-3 while the photos are there
    shutil.rmtree(photos)
    with pytest.raises(DataError, match="every training image has become unreadable"):
        for i in range(1, 12):
            feed[i]
    assert feed._pool is None


def _framed_painting(border: int, frame_value: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    painting = rng.uniform(0.2, 0.9, (200, 300, 3)).astype(np.float32)
    painting[:border] = painting[-border:] = frame_value
    painting[:, :border] = painting[:, -border:] = frame_value
    return painting


@pytest.mark.parametrize("frame_value", [0.0, 1.0])
def test_a_thin_flat_frame_is_trimmed_with_its_soft_edge(frame_value):
    trimmed = trim_frame(_framed_painting(8, frame_value))
    # 8 flat lines plus max(3, 1% of the side) for a scan's soft edge, on every side.
    assert trimmed.shape == (200 - 2 * 11, 300 - 2 * 11, 3)
    assert not (trimmed == frame_value).all(axis=-1).any()


def test_paintings_without_a_frame_or_with_flat_content_are_kept():
    rng = np.random.default_rng(1)
    textured = rng.uniform(0, 1, (120, 160, 3)).astype(np.float32)
    assert trim_frame(textured).shape == textured.shape
    sky = textured.copy()
    sky[:40] = 0.7  # a flat band a third of the height: part of the picture, not a frame
    assert trim_frame(sky).shape == sky.shape


def test_training_export_and_evaluate_see_the_painting_trimmed(tmp_path):
    path = tmp_path / "framed.png"
    Image.fromarray((_framed_painting(8) * 255).round().astype(np.uint8)).save(path)
    styles, _ = load_style_images({"name": "framed", "images": {"framed": str(path)}})
    assert styles["framed"].shape == load_painting(path).shape == (178, 278, 3)


def test_a_folder_named_like_an_image_is_named_in_the_log_and_its_images_read(tmp_path, caplog):
    from training.data.datasets import find_images

    Image.new("RGB", (32, 32)).save(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "b.jpg" / "inner.png")
    with caplog.at_level("WARNING"):
        assert find_images(tmp_path, "data.content_dir") == [tmp_path / "a.jpg", tmp_path / "b.jpg" / "inner.png"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'b.jpg'}: a folder named like an image, not an image (the images inside it are read)"]


def test_an_image_past_pils_pixel_limit_is_refused_without_pils_warning(tmp_path):
    """PIL warns on an image past Image.MAX_IMAGE_PIXELS (89 Mpx); the loader's one-line refusal is the
    only word about it, even with Python's warnings shown (-W default)."""
    Image.new("1", (9500, 9500)).save(tmp_path / "huge.png")  # 90 Mpx in a few kB
    code = ("from training.data.datasets import load_image\n"
            f"try:\n    load_image({str(tmp_path / 'huge.png')!r})\nexcept Exception as err:\n    print(err)")
    result = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert "huge.png: 9500x9500 pixels exceeds" in result.stdout, result.stdout + result.stderr
    assert "DecompressionBomb" not in result.stderr and "decompression bomb DOS" not in result.stderr, result.stderr
