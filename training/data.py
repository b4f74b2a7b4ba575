"""Training data: content photos and style images, decoded robustly, sampled as Magenta does.

Every image goes through `load_image`, which turns any decoding problem into a `DataError`
with a reason; loaders skip such files into a `SkipReport` (counted, named, logged) and fail
only when nothing usable is left.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from training.errors import StylepipeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(StylepipeError, ValueError):
    """An input image or folder that cannot be used; `reason` says why."""

    def __init__(self, message: str, reason: str = "unusable"):
        super().__init__(message)
        self.reason = reason


@dataclass
class SkipReport:
    """Files that could not be used, with the reason for each."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def count(self) -> int:
        return len(self.skipped)

    def by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, reason in self.skipped:
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def summary(self, limit: int = 10) -> str:
        if not self.skipped:
            return "no files skipped"
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.by_reason().items()))
        names = "; ".join(f"{p} ({r})" for p, r in self.skipped[:limit])
        more = f"; and {self.count() - limit} more" if self.count() > limit else ""
        return f"{self.count()} file(s) skipped ({reasons}): {names}{more}"

    def merge(self, other: "SkipReport") -> "SkipReport":
        return SkipReport(self.skipped + other.skipped)


def _to_rgb_float(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 RGB in [0, 1]; alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale by the format's range, not 8-bit's.
        values = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(values, 0.0, 1.0)[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path, min_side: int = 1, max_pixels: int = 50_000_000) -> np.ndarray:
    """Decode an image file to float32 RGB (H, W, 3) in [0, 1], or raise DataError with a reason."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file", "empty")
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})", "unreadable") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size  # from the header: refuse bombs before decoding
                if width * height > max_pixels:
                    raise DataError(f"{path}: {width}x{height} exceeds data.max_pixels={max_pixels}", "too_large")
                if min(width, height) < min_side:
                    raise DataError(f"{path}: {width}x{height} is smaller than data.min_side={min_side}", "too_small")
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb_float(image)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: image too large (decompression bomb)", "too_large") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not an image", "not_an_image") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = "truncated" if "truncated" in str(err).lower() else "corrupt"
        raise DataError(f"{path}: {reason} image ({err})", reason) from None


def to_uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 or [0, 1] float image -> float32 [0, 1] image whose short side is `short_side`."""
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    pil = Image.fromarray(to_uint8(image))
    return np.asarray(pil.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    return image[top : top + size, left : left + size]


def style_crop(image: np.ndarray, size: int) -> np.ndarray:
    """No augmentation: short side to `size`, centre crop."""
    return center_crop(resize_short_side(image, size), size)


def fit_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize so the image covers height x width, then centre crop to exactly that."""
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    pil = Image.fromarray(to_uint8(image)).resize((max(width, round(w * scale)), max(height, round(h * scale))),
                                                   Image.Resampling.BILINEAR)
    x = np.asarray(pil, dtype=np.float32) / 255.0
    top, left = (x.shape[0] - height) // 2, (x.shape[1] - width) // 2
    return x[top : top + height, left : left + width]


def _rgb_to_hsv(rgb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc, minc = rgb.max(-1), rgb.min(-1)
    v, delta = maxc, maxc - minc
    s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    h = np.where(maxc == r, (g - b) / safe, np.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv):
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int32) % 6
    choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    return np.choose(i[..., None], choices)


def augment_style(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Magenta's style augmentation: brightness (0.8), saturation [0.5, 1.5], hue (0.2), flips, scale, crop."""
    short = int(rng.integers(round(size * 258 / 256), round(size * 456 / 256)))
    x = random_crop(resize_short_side(image, short), size, rng)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    if rng.random() < 0.5:
        x = x[::-1]
    x = np.clip(x + rng.uniform(-0.8, 0.8), 0.0, 1.0)
    hsv = _rgb_to_hsv(x)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-0.2, 0.2)) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0.0, 1.0)
    return np.ascontiguousarray(_hsv_to_rgb(hsv), dtype=np.float32)


def find_images(directory, key: str) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{key}={directory}: no such folder", "missing")
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageSource:
    """Random training crops (random short side, crop, horizontal flip) of decoded images.

    `images` is a list held in memory (kept as uint8), or `stream` an endless iterator of
    images (a large TFDS dataset, shuffled by tf.data) with `count` the dataset size.
    """

    def __init__(self, image_size: int, resize_range, images=None, stream=None, count: int | None = None):
        self.images = [to_uint8(i) for i in images] if images is not None else None
        self.stream = stream
        self.count = len(self.images) if self.images is not None else int(count or 0)
        self.image_size = image_size
        self.resize_range = (int(resize_range[0]), int(resize_range[1]))

    def __len__(self) -> int:
        return self.count

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        image = self.images[rng.integers(len(self.images))] if self.images is not None else next(self.stream)
        short = int(rng.integers(self.resize_range[0], self.resize_range[1] + 1))
        x = random_crop(resize_short_side(image, short), self.image_size, rng)
        return np.ascontiguousarray(x[:, ::-1] if rng.random() < 0.5 else x)


@dataclass
class ContentData:
    train: ImageSource
    heldout: list[np.ndarray]          # square crops at data.image_size
    heldout_names: list[str]
    skipped: SkipReport
    heldout_full: list[np.ndarray] = field(default_factory=list)  # the same photos uncropped


def _folder_images(data_cfg, skipped: SkipReport) -> tuple[list[np.ndarray], list[str]]:
    files = find_images(data_cfg.content_dir, "data.content_dir")
    images, names = [], []
    for path in files:
        try:
            images.append(load_image(path, data_cfg.min_side, data_cfg.max_pixels))
            names.append(path.stem)
        except DataError as err:
            skipped.add(path, err.reason)
    if not images:
        raise DataError(f"data.content_dir={data_cfg.content_dir}: no usable image "
                        f"({len(files)} file(s) found; {skipped.summary()})", "empty")
    return images, names


def _tfds_split(data_cfg, split: str):
    """(tf.data dataset of examples, number of examples) of one split of the configured dataset."""
    import tensorflow_datasets as tfds

    t = data_cfg.tfds
    source = t.get("builder_dir") or t.get("name")
    try:
        if t.get("builder_dir"):
            builder = tfds.builder_from_directory(t.builder_dir)
        else:
            builder = tfds.builder(t.name, data_dir=t.get("data_dir"))
            if t.get("download"):
                builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=t.get("manual_dir")))
        splits = builder.info.splits
        if split not in splits:
            raise DataError(f"data.tfds: split {split!r} not in {source} (available: {', '.join(splits)})", "missing")
        return builder.as_dataset(split=split), splits[split].num_examples
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"data.tfds.name={t.get('name')}: dataset not available ({type(err).__name__}: {str(err)[:300]}). "
            "Prepare it (data.tfds.download=true with internet, data.tfds.manual_dir for manual datasets) "
            "or point data.tfds.data_dir / data.tfds.builder_dir at a prepared copy.", "missing") from None


def _usable_tfds_images(data_cfg, examples, split: str, skipped: SkipReport):
    """Images of TFDS examples as float32 RGB in [0, 1]; unusable ones skipped and counted."""
    for i, example in enumerate(examples):
        array = np.asarray(example[data_cfg.tfds.image_key])
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            skipped.add(f"{split}[{i}]", "not_an_image")
            continue
        if min(array.shape[:2]) < data_cfg.min_side:
            skipped.add(f"{split}[{i}]", "too_small")
            continue
        array = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]
        yield f"{split}_{i}", array.astype(np.float32) / (65535.0 if array.dtype == np.uint16 else 255.0)


def load_content(data_cfg) -> ContentData:
    """Training photos and a held-out split, as configured by the `data` group."""
    skipped = SkipReport()
    n_heldout = int(data_cfg.heldout_count)
    if data_cfg.source == "folder":
        images, names = _folder_images(data_cfg, skipped)
        order = np.random.default_rng(data_cfg.seed).permutation(len(images))
        held = set(order[:n_heldout].tolist())
        train_images = [image for i, image in enumerate(images) if i not in held]
        if not train_images:
            raise DataError(f"data.content_dir={data_cfg.content_dir}: {len(images)} usable image(s), none left "
                            f"for training after data.heldout_count={n_heldout}", "empty")
        heldout = [(names[i], images[i]) for i in sorted(held)]
        train = ImageSource(data_cfg.image_size, data_cfg.resize_short_side, images=train_images)
    elif data_cfg.source == "tfds":
        import tensorflow_datasets as tfds

        t = data_cfg.tfds
        held_examples, _ = _tfds_split(data_cfg, t.heldout_split)
        heldout = list(_usable_tfds_images(data_cfg, tfds.as_numpy(held_examples.take(4 * n_heldout)), t.heldout_split, skipped))[:n_heldout]
        train_examples, count = _tfds_split(data_cfg, t.train_split)
        stream = (image for _, image in _usable_tfds_images(
            data_cfg, tfds.as_numpy(train_examples.repeat().shuffle(t.get("shuffle_buffer", 1000), seed=data_cfg.seed)),
            t.train_split, skipped))
        train = ImageSource(data_cfg.image_size, data_cfg.resize_short_side, stream=stream, count=count)
    else:
        raise DataError(f"data.source={data_cfg.source!r} is not allowed: one of folder, tfds", "config")
    return ContentData(
        train,
        [style_crop(image, data_cfg.image_size) for _, image in heldout],
        [name for name, _ in heldout],
        skipped,
        [image for _, image in heldout],
    )


def load_style_images(style_cfg, min_side: int = 64, max_pixels: int = 50_000_000) -> tuple[dict[str, np.ndarray], SkipReport]:
    """{name: image} for the configured styles: explicit `images` entries plus every image in `dir`."""
    skipped = SkipReport()
    styles: dict[str, np.ndarray] = {}
    if style_cfg.get("dir"):
        for path in find_images(style_cfg.dir, "style.dir"):
            try:
                styles[path.stem] = load_image(path, min_side, max_pixels)
            except DataError as err:
                skipped.add(path, err.reason)
    for name, path in (style_cfg.get("images") or {}).items():
        if not Path(path).is_file():
            raise DataError(f"style.images.{name}={path}: no such file", "missing")
        styles[name] = load_image(path, min_side, max_pixels)  # an explicit style must work: no skipping
    if not styles:
        raise DataError(f"style {style_cfg.get('name')}: no usable style image ({skipped.summary()})", "empty")
    return dict(sorted(styles.items())), skipped


class TrainingBatches:
    """Endless batches {content, style, style_index}, deterministic for a seed."""

    def __init__(self, content: ContentData, styles: dict[str, np.ndarray], data_cfg, style_cfg, batch_size: int, seed: int):
        self.content = content.train
        self.size = int(data_cfg.image_size)
        self.styles = list(styles.values())
        self.augment = bool(style_cfg.get("augment", False))
        self.fixed_styles = [style_crop(s, self.size) for s in self.styles]
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            content = np.stack([self.content.sample(rng) for _ in range(self.batch_size)])
            index = rng.integers(len(self.styles), size=self.batch_size).astype(np.int32)
            if self.augment:
                style = np.stack([augment_style(self.styles[i], rng, self.size) for i in index])
            else:
                style = np.stack([self.fixed_styles[i] for i in index])
            yield {"content": content.astype(np.float32), "style": style.astype(np.float32), "style_index": index}

    def as_tf_dataset(self):
        import tensorflow as tf

        image = tf.TensorSpec((self.batch_size, self.size, self.size, 3), tf.float32)
        spec = {"content": image, "style": image, "style_index": tf.TensorSpec((self.batch_size,), tf.int32)}
        return tf.data.Dataset.from_generator(lambda: iter(self), output_signature=spec).prefetch(2)
