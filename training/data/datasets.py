"""Training data: content photos and style images, decoded robustly, sampled as Magenta does.

Every image goes through one decoder (`load_image` and its helpers), which turns any decoding
problem into a `DataError` with a reason; loaders skip such files into a `SkipReport` (counted,
named, logged) and fail only when nothing usable is left.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from omegaconf.errors import MissingMandatoryValue
from PIL import Image, ImageOps

from training.data import color_jitter
from training.config import check_style_image_paths, folder_problem
from training.errors import StylepipeError

log = logging.getLogger(__name__)
# PIL warns, then decodes, an image past its pixel limit; _check_header_size refuses it from the header
# with a one-line reason instead, so the warning would only print beside that refusal. Set once here:
# warnings.catch_warnings() is not thread-safe, and images are decoded in threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 50_000_000
# Decoded training photos kept in memory (uint8 PIL images, 4 bytes a pixel, shrunk to the largest short side sampled);
# the rest are decoded again when drawn. data.cache_bytes overrides it.
DEFAULT_CACHE_BYTES = 2 << 30
# Magenta's style scale range for 256-pixel crops: short side uniform in [258, 456).
STYLE_SCALE_RANGE = (258 / 256, 456 / 256)


class DataError(StylepipeError, ValueError):
    """An input image, folder or dataset that cannot be used; `reason` says why in one word."""

    def __init__(self, message: str, reason: str = "unusable", path: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.path = path


@dataclass
class SkipReport:
    """Files (or dataset examples) that could not be used, with the reason for each."""

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


# ---------------------------------------------------------------- decoding


def _check_header_size(width: int, height: int, name: str, min_side: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise DataError(f"{name}: {width}x{height} pixels exceeds data.max_pixels={max_pixels} "
                        "(refused as a possible decompression bomb)", "too_large", name)
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        # PIL only warns up to twice its limit; past data.max_pixels or PIL's limit, never decode.
        raise DataError(f"{name}: {width}x{height} pixels exceeds PIL's Image.MAX_IMAGE_PIXELS="
                        f"{Image.MAX_IMAGE_PIXELS} (refused as a possible decompression bomb)", "too_large", name)
    if min(width, height) < min_side:
        raise DataError(f"{name}: {width}x{height} is smaller than data.min_side={min_side}", "too_small", name)


def _to_rgb_float(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 RGB in [0, 1]; alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale by the 16-bit range, not 8-bit's (convert("RGB") would clip at 255).
        values = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(np.clip(values, 0.0, 1.0)[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


# Leading bytes of the image formats we read: a file that starts like one is corrupt, not "not an image".
IMAGE_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP",
                    b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _image_signature(source: Path | bytes) -> str | None:
    if isinstance(source, bytes):
        head = source[:16]
    else:
        try:
            with source.open("rb") as f:
                head = f.read(16)
        except OSError:
            return None
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in IMAGE_SIGNATURES.items() if head.startswith(magic)), None)


def _decode(source: Path | bytes, name: str, min_side: int, max_pixels: int,
            draft_short_side: int | None = None) -> np.ndarray:
    """Decode a file or encoded bytes to float32 RGB; any failure becomes a DataError with a reason.

    `draft_short_side` lets JPEG decode at 1/2..1/8 scale while keeping the short side at least
    that large: much faster for photos that are only ever used small.
    """
    try:
        if isinstance(source, bytes):
            size, opened = len(source), io.BytesIO(source)
        else:
            size, opened = source.stat().st_size, source
    except OSError as err:
        raise DataError(f"{name}: cannot be read ({err.strerror or err})", "unreadable", name) from None
    if size == 0:
        raise DataError(f"{name}: empty file (0 bytes)", "empty", name)
    try:
        # _check_header_size applies PIL's pixel limit itself (its warning is silenced above).
        with Image.open(opened) as image:
            _check_header_size(*image.size, name, min_side, max_pixels)  # header only: nothing decoded yet
            if draft_short_side:
                image.draft(None, (draft_short_side, draft_short_side))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb_float(image)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as err:
        raise DataError(f"{name}: image too large to decode ({err})", "too_large", name) from None
    except Image.UnidentifiedImageError:
        if fmt := _image_signature(source):  # an image format's signature, but PIL cannot read its header
            raise DataError(f"{name}: corrupt {fmt} image (its header cannot be read)", "corrupt", name) from None
        raise DataError(f"{name}: not an image (unrecognised format)", "not_an_image", name) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise DataError(f"{name}: cannot be read ({err.strerror})", "unreadable", name) from None
    except Exception as err:  # noqa: BLE001 - corrupt data makes PIL raise OSError, SyntaxError, struct.error, ...
        reason = "truncated" if "truncated" in str(err).lower() or isinstance(err, EOFError) else "corrupt"
        raise DataError(f"{name}: {reason} image ({type(err).__name__}: {err})", reason, name) from None


def load_image(path, min_side: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to float32 RGB (H, W, 3) in [0, 1], or raise DataError with a reason."""
    return _decode(Path(path), str(path), min_side, max_pixels)


def load_painting(path, min_side: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A style image as every stage sees it: decoded, its flat frame or scan border trimmed."""
    return trim_frame(load_image(path, min_side, max_pixels))


FRAME_FLATNESS = 0.01    # a row or column whose pixels deviate less than this (in [0, 1]) is flat
FRAME_MAX_FRACTION = 0.1  # a flat band wider than this fraction of the side is part of the picture, not a frame


def _frame_width(lines: np.ndarray) -> int:
    """How many of `lines` (edge first; each a line of luma values) are a thin flat border, plus its soft edge."""
    limit = int(len(lines) * FRAME_MAX_FRACTION)
    flat = 0
    while flat <= limit and lines[flat].std() < FRAME_FLATNESS:
        flat += 1
    if not flat or flat > limit:  # none, or a flat sky or blank paper that belongs to the picture
        return 0
    # A scan's border fades into the paint over a few pixels: trim them too.
    return min(limit, flat + max(3, round(0.01 * len(lines))))


def trim_frame(image: np.ndarray) -> np.ndarray:
    """Cut flat bands (a frame, a mount, a scanner's black edge) off each side of a painting.

    Their straight dark edges would otherwise be part of the style: a network trained on them paints
    dark lines along the borders of every photo. A painting without such bands is returned as it is.
    """
    gray = image[..., :3].mean(axis=-1)
    top, bottom = _frame_width(gray), _frame_width(gray[::-1])
    left, right = _frame_width(gray.T), _frame_width(gray.T[::-1])
    return image[top : image.shape[0] - bottom, left : image.shape[1] - right]


# ---------------------------------------------------------------- geometry


def to_uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _resized_uint8(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # PIL's bilinear widens its kernel when shrinking, so downscaling is antialiased.
    return np.asarray(Image.fromarray(to_uint8(image)).resize((width, height), Image.Resampling.BILINEAR))


def _height_width(image: np.ndarray | Image.Image) -> tuple[int, int]:
    return (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]


def _short_side_size(image: np.ndarray | Image.Image, short_side: int) -> tuple[int, int]:
    h, w = _height_width(image)
    scale = short_side / min(h, w)
    return max(short_side, round(w * scale)), max(short_side, round(h * scale))


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 or [0, 1] float image -> float32 [0, 1] image whose short side is `short_side`."""
    return _resized_uint8(image, *_short_side_size(image, short_side)).astype(np.float32) / 255.0


def shrink_uint8(image: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 copy whose short side is at most `short_side` (smaller images are kept as they are)."""
    if min(image.shape[:2]) <= short_side:
        return to_uint8(image)
    return _resized_uint8(image, *_short_side_size(image, short_side))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    return image[top : top + size, left : left + size]


def as_pil_uint8(image: np.ndarray | Image.Image) -> Image.Image:
    """A uint8 PIL image of a uint8 or [0, 1] float array (a PIL image as it is)."""
    return image if isinstance(image, Image.Image) else Image.fromarray(to_uint8(image))


def random_resized_crop_image(image: np.ndarray | Image.Image, short_side: int, size: int,
                              rng: np.random.Generator) -> Image.Image:
    """A random size x size crop of the image resized to `short_side`, as a uint8 PIL image.

    Only the crop is resampled (PIL's `box`), so the cost does not grow with the image. Given a
    PIL image, nothing is converted: the training cache keeps PIL images because converting an
    array holds the GIL, which capped the pipeline's threads.
    """
    width, height = _short_side_size(image, short_side)
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    h, w = _height_width(image)
    sx, sy = w / width, h / height
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return as_pil_uint8(image).resize((size, size), Image.Resampling.BILINEAR, box=box)


def unit_float32(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 [0, 1] (the one conversion: batches made in uint8 give the same floats)."""
    out = images.astype(np.float32)
    out /= 255.0
    return out


def style_crop(image: np.ndarray, size: int) -> np.ndarray:
    """No augmentation: short side to `size`, centre crop."""
    return center_crop(resize_short_side(image, size), size)


def texture_image(painting: np.ndarray, texture_size: int) -> np.ndarray:
    """The painting as its style (Gram) targets are measured: its centre square at `style.texture_size`.
    At data.style_size it is the style crop the batches carry, so fixed and per-batch targets agree."""
    return style_crop(painting, texture_size)


def fit_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize so the image covers height x width, then centre crop to exactly that."""
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    x = _resized_uint8(image, max(width, round(w * scale)), max(height, round(h * scale))).astype(np.float32) / 255.0
    top, left = (x.shape[0] - height) // 2, (x.shape[1] - width) // 2
    return x[top : top + height, left : left + width]


# ---------------------------------------------------------------- style augmentation


def _style_short_side_range(size: int) -> tuple[int, int]:
    lo, hi = STYLE_SCALE_RANGE
    return round(size * lo), round(size * hi)


def augment_style(image: np.ndarray | Image.Image, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Magenta's style augmentation: a uint8 crop at a random scale, flipped at random, and its colour jitter.

    Returns the crop and its `color_jitter.draw` parameters; the objective applies the jitter on the
    device (`training/data/color_jitter.py`). Magenta jitters colours before resizing; colour ops are per
    pixel, so doing them after the crop gives the same distribution (they differ only by resampling
    of clipped values).
    """
    lo, hi = _style_short_side_range(size)
    x = np.asarray(random_resized_crop_image(image, int(rng.integers(lo, hi)), size, rng))
    if rng.random() < 0.5:
        x = x[:, ::-1]
    if rng.random() < 0.5:
        x = x[::-1]
    return x, color_jitter.draw(rng)


# ---------------------------------------------------------------- config access


def _get(section, key: str, where: str, default=...):
    """section[key] from a DictConfig or a plain dict; a missing required key is a DataError naming it."""
    try:
        value = section.get(key, None) if section is not None else None
    except MissingMandatoryValue:  # `???` in the config
        value = None
    if value is None:
        if default is ...:
            raise DataError(f"{where}.{key} is not set", "config")
        return default
    return value


def find_images(directory, key: str) -> list[Path]:
    """Every file with an image suffix under `directory`, recursively, sorted; `key` names it in errors."""
    if directory is None:
        raise DataError(f"{key} is not set: point it at a folder of images ({key}=/path/to/images)", "config")
    directory = Path(directory)
    if problem := folder_problem(directory):
        raise DataError(f"{key}={directory}: {problem}", "missing", str(directory))
    # Not is_file(): a broken link or unreadable entry is reported by the decoder instead of vanishing.
    named = [p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
    for folder in sorted(p for p in named if p.is_dir()):  # its images, if any, are found inside it
        log.warning("%s: a folder named like an image, not an image (the images inside it are read)", folder)
    return sorted(p for p in named if not p.is_dir())


# ---------------------------------------------------------------- training crops


class ImageSource:
    """Endless random training crops: random short side in data.resize_short_side, crop, horizontal flip."""

    random_access = True  # a crop depends only on the rng, not on earlier crops

    def __init__(self, image_size: int, resize_range):
        self.image_size = int(image_size)
        self.resize_range = (int(resize_range[0]), int(resize_range[1]))
        if not self.image_size <= self.resize_range[0] <= self.resize_range[1]:
            raise DataError(f"data.resize_short_side={list(self.resize_range)} must satisfy "
                            f"data.image_size={self.image_size} <= lo <= hi", "config")

    def __len__(self) -> int:
        raise NotImplementedError

    def restart(self) -> None:
        """Start the image order again (a stream's); sampling from a folder depends only on the rng."""

    def _next_image(self, rng: np.random.Generator) -> np.ndarray | Image.Image:
        raise NotImplementedError

    def sample_uint8(self, rng: np.random.Generator) -> np.ndarray:
        """One augmented training crop (random scale, crop and horizontal flip), uint8."""
        image = self._next_image(rng)
        short = int(rng.integers(self.resize_range[0], self.resize_range[1] + 1))
        crop = random_resized_crop_image(image, short, self.image_size, rng)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(crop)


class FolderImages(ImageSource):
    """Image files drawn uniformly; decoded copies kept up to a memory budget, the rest decoded on demand.

    A file that stops decoding after validation (changed, deleted) is added to the shared SkipReport
    and never drawn again.
    """

    def __init__(self, image_size, resize_range, skipped: SkipReport, min_side: int = 1,
                 max_pixels: int = DEFAULT_MAX_PIXELS, cache_bytes: int = DEFAULT_CACHE_BYTES):
        super().__init__(image_size, resize_range)
        self.paths: list[Path] = []
        self.cache: dict[Path, Image.Image] = {}
        self.cache_bytes, self.cached_bytes = int(cache_bytes), 0
        self.skipped, self.min_side, self.max_pixels = skipped, int(min_side), int(max_pixels)

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, path: Path) -> np.ndarray:
        """The uint8 copy used for training: never larger than the largest short side sampled."""
        short = self.resize_range[1]
        return shrink_uint8(_decode(path, str(path), self.min_side, self.max_pixels, draft_short_side=short), short)

    def add(self, path: Path, image: np.ndarray) -> None:
        self.paths.append(path)
        cached = as_pil_uint8(image)
        nbytes = 4 * cached.width * cached.height  # PIL keeps RGB pixels in 4 bytes
        if self.cached_bytes + nbytes <= self.cache_bytes:
            self.cache[path] = cached
            self.cached_bytes += nbytes

    def _next_image(self, rng):
        while self.paths:
            index = int(rng.integers(len(self.paths)))
            path = self.paths[index]
            if path in self.cache:
                return self.cache[path]
            try:
                return self.decode(path)
            except DataError as err:
                log.warning("skipping %s from now on: %s", path, err)
                self.skipped.add(path, err.reason)
                self.paths.pop(index)
        raise DataError("every training image has become unreadable since it was checked "
                        f"({self.skipped.summary()})", "empty")


class StreamImages(ImageSource):
    """Images from an endless stream (a TFDS split, shuffled by tf.data); `count` is the split's size."""

    random_access = False

    def __init__(self, image_size, resize_range, make_stream: Callable[[], Iterator[np.ndarray]], count: int):
        super().__init__(image_size, resize_range)
        self.make_stream, self.count = make_stream, int(count)
        self.stream: Iterator[np.ndarray] | None = None

    def __len__(self) -> int:
        return self.count

    def restart(self) -> None:
        self.stream = None

    def _next_image(self, rng):
        if self.stream is None:
            self.stream = self.make_stream()
        return next(self.stream)


# ---------------------------------------------------------------- content photos


@dataclass
class ContentData:
    train: ImageSource
    heldout: list[np.ndarray]          # square crops at data.image_size
    heldout_names: list[str]
    skipped: SkipReport
    heldout_full: list[np.ndarray] = field(default_factory=list)  # the same photos uncropped


def _decode_all(decode: Callable[[Path], np.ndarray],
                paths: list[Path]) -> Iterator[tuple[Path, np.ndarray | DataError]]:
    """(path, image or the DataError) for each path, in order; decoded in threads (PIL releases the GIL)."""
    def attempt(path):
        try:
            return decode(path)
        except DataError as err:
            return err

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        yield from zip(paths, pool.map(attempt, paths))


def _load_folder(data_cfg, image_size: int, resize_range, n_heldout: int, seed: int) -> ContentData:
    content_dir = _get(data_cfg, "content_dir", "data", default=None)
    files = find_images(content_dir, "data.content_dir")
    if not files:
        raise DataError(f"data.content_dir={content_dir}: no image files in this folder or below "
                        f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})", "empty", str(content_dir))
    skipped = SkipReport()
    min_side = int(_get(data_cfg, "min_side", "data", 1))
    max_pixels = int(_get(data_cfg, "max_pixels", "data", DEFAULT_MAX_PIXELS))
    train = FolderImages(image_size, resize_range, skipped, min_side, max_pixels,
                         int(_get(data_cfg, "cache_bytes", "data", DEFAULT_CACHE_BYTES)))

    # Held out: the first usable files of a seeded permutation of the sorted list, decoded at full size.
    heldout: dict[Path, np.ndarray] = {}
    candidates = iter(np.random.default_rng(seed).permutation(len(files)).tolist())
    while len(heldout) < n_heldout and (index := next(candidates, None)) is not None:
        try:
            heldout[files[index]] = load_image(files[index], min_side, max_pixels)
        except DataError as err:
            skipped.add(files[index], err.reason)
    tried = set(heldout) | {Path(path) for path, _ in skipped.skipped}
    rest = [p for p in files if p not in tried]
    for path, result in _decode_all(train.decode, rest):
        if isinstance(result, DataError):
            skipped.add(path, result.reason)
        else:
            train.add(path, result)
    skipped.skipped.sort()
    if not heldout and not len(train):
        raise DataError(f"data.content_dir={content_dir}: no usable image among {len(files)} file(s) "
                        f"({skipped.summary()})", "empty", str(content_dir))
    if not len(train):
        raise DataError(f"data.content_dir={content_dir}: {len(heldout)} usable image(s), none left for "
                        f"training after data.heldout_count={n_heldout}; lower data.heldout_count", "empty",
                        str(content_dir))
    names = sorted(heldout)
    return ContentData(train, [style_crop(heldout[p], image_size) for p in names],
                       [p.stem for p in names], skipped, [heldout[p] for p in names])


def _brief(err: Exception) -> str:
    """An exception in one line: TFDS messages can run to hundreds (every dataset name)."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:300]}"


def _tfds_builder(t):
    """The configured TFDS builder, prepared, or a DataError saying how to get it prepared."""
    import tensorflow_datasets as tfds

    builder_dir = t.get("builder_dir")
    if builder_dir:
        try:
            return tfds.builder_from_directory(builder_dir)
        except Exception as err:  # noqa: BLE001 - TFDS raises many kinds for a bad directory
            raise DataError(f"data.tfds.builder_dir={builder_dir}: not a prepared TFDS dataset directory "
                            f"(the folder holding dataset_info.json): {_brief(err)}",
                            "missing", str(builder_dir)) from None
    name = _get(t, "name", "data.tfds")
    try:
        builder = tfds.builder(name, data_dir=t.get("data_dir"))
    except Exception as err:  # noqa: BLE001 - unknown name, bad config name, missing extra dependency
        raise DataError(f"data.tfds.name={name}: {_brief(err)}", "missing") from None
    where = t.get("data_dir") or "the default ~/tensorflow_datasets"
    if not builder.is_prepared():
        if not t.get("download"):
            raise DataError(f"data.tfds.name={name}: not prepared in {where}. Set data.tfds.download=true to "
                            "download and prepare it, or data.tfds.data_dir (or data.tfds.builder_dir) to where "
                            "a prepared copy is.", "missing")
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=t.get("manual_dir")))
        except Exception as err:  # noqa: BLE001 - network, manual files missing, disk full
            raise DataError(f"data.tfds.name={name}: download_and_prepare into {where} failed "
                            f"({_brief(err)}); for manual datasets set "
                            "data.tfds.manual_dir", "missing") from None
    return builder


def _split_size(builder, split: str, key: str) -> int:
    try:
        return builder.info.splits[split].num_examples  # also resolves slices such as train[:90%]
    except Exception:  # noqa: BLE001 - TFDS raises ValueError/KeyError for unknown names or bad slices
        raise DataError(f"{key}={split!r}: no such split in {builder.name} "
                        f"(available: {', '.join(builder.info.splits)})", "missing") from None


def _tfds_examples(builder, t, split: str, decode_example, shuffle_seed: int | None = None):
    """tf.data of (pixels, reason, example id) for a split, decoded in parallel by `decode_example`.

    Images stay encoded through TFDS (SkipDecoding) so that a corrupt one is skipped with a reason
    instead of stopping the pipeline; non-Image features arrive as arrays and are checked the same way.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    key = _get(t, "image_key", "data.tfds", "image")
    if key not in builder.info.features:
        raise DataError(f"data.tfds.image_key={key!r}: no such feature in {builder.name} "
                        f"(features: {', '.join(builder.info.features)})", "config")
    encoded = isinstance(builder.info.features[key], tfds.features.Image)
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                            decoders={key: tfds.decode.SkipDecoding()} if encoded else None,
                            read_config=tfds.ReadConfig(add_tfds_id=True, shuffle_seed=shuffle_seed))
    if shuffle_seed is not None:
        ds = ds.shuffle(int(t.get("shuffle_buffer") or 1000), seed=shuffle_seed).repeat()

    def decode(example):
        pixels, reason = tf.numpy_function(decode_example, [example[key], example["tfds_id"]], (tf.uint8, tf.string))
        return pixels, reason, example["tfds_id"]

    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def _example_decoder(min_side: int, max_pixels: int, short_side: int | None):
    """numpy_function body: encoded bytes or a pixel array -> (uint8 RGB, b"") or (empty, reason)."""
    def decode_example(value, example_id):
        name = example_id.decode()
        try:
            if isinstance(value, bytes):
                image = _decode(value, name, min_side, max_pixels, draft_short_side=short_side)
            else:
                image = _array_to_rgb(value, name, min_side, max_pixels)
            return (shrink_uint8(image, short_side) if short_side else to_uint8(image)), b""
        except DataError as err:
            return np.zeros((0, 0, 3), np.uint8), err.reason.encode()
    return decode_example


def _array_to_rgb(array: np.ndarray, name: str, min_side: int, max_pixels: int) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise DataError(f"{name}: array of shape {array.shape} is not an image", "not_an_image", name)
    _check_header_size(array.shape[1], array.shape[0], name, min_side, max_pixels)
    scale = 65535.0 if array.dtype == np.uint16 else 255.0 if array.dtype == np.uint8 else 1.0
    rgb = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]
    return np.clip(rgb.astype(np.float32) / scale, 0.0, 1.0)


def _load_tfds(data_cfg, image_size: int, resize_range, n_heldout: int, seed: int) -> ContentData:
    import tensorflow_datasets as tfds

    t = _get(data_cfg, "tfds", "data")
    min_side = int(_get(data_cfg, "min_side", "data", 1))
    max_pixels = int(_get(data_cfg, "max_pixels", "data", DEFAULT_MAX_PIXELS))
    builder = _tfds_builder(t)
    train_split = _get(t, "train_split", "data.tfds", "train")
    heldout_split = _get(t, "heldout_split", "data.tfds", "validation")
    count = _split_size(builder, train_split, "data.tfds.train_split")
    skipped = SkipReport()

    heldout, names = [], []
    if n_heldout:
        _split_size(builder, heldout_split, "data.tfds.heldout_split")
        if heldout_split == train_split:
            log.warning("data.tfds.heldout_split == train_split (%s): held-out photos are also trained on", train_split)
        full_size = _example_decoder(min_side, max_pixels, None)
        for pixels, reason, example_id in tfds.as_numpy(_tfds_examples(builder, t, heldout_split, full_size)):
            if reason:
                skipped.add(example_id.decode(), reason.decode())
                continue
            heldout.append(pixels.astype(np.float32) / 255.0)
            names.append(f"{heldout_split}_{len(names)}")
            if len(heldout) == n_heldout:
                break
        if not heldout:
            raise DataError(f"data.tfds.heldout_split={heldout_split!r}: no usable image in {builder.name} "
                            f"({skipped.summary()})", "empty")

    crop_source = _example_decoder(min_side, max_pixels, resize_range[1])
    reported: set[str] = set()  # the stream repeats: count each bad example once

    def stream():
        usable_since_start = 0
        for seen, (pixels, reason, example_id) in enumerate(
                tfds.as_numpy(_tfds_examples(builder, t, train_split, crop_source, shuffle_seed=seed)), 1):
            if not reason:
                usable_since_start += 1
                yield pixels
            elif (name := example_id.decode()) not in reported:
                reported.add(name)
                skipped.add(name, reason.decode())
            if seen >= count and not usable_since_start:
                raise DataError(f"data.tfds.train_split={train_split!r}: no usable image in {builder.name} "
                                f"({skipped.summary()})", "empty")

    return ContentData(StreamImages(image_size, resize_range, stream, count),
                       [style_crop(h, image_size) for h in heldout], names, skipped, heldout)


def load_content(data_cfg) -> ContentData:
    """Training photos and a held-out split, as configured by the `data` group."""
    source = _get(data_cfg, "source", "data")
    image_size = int(_get(data_cfg, "image_size", "data"))
    resize_range = tuple(int(v) for v in _get(data_cfg, "resize_short_side", "data"))
    n_heldout = int(_get(data_cfg, "heldout_count", "data", 0))
    if n_heldout < 0:
        raise DataError(f"data.heldout_count={n_heldout} must be >= 0", "config")
    seed = int(_get(data_cfg, "seed", "data", 0))
    loaders = {"folder": _load_folder, "tfds": _load_tfds}
    if source not in loaders:
        raise DataError(f"data.source={source!r} is not allowed: one of {', '.join(loaders)}", "config")
    return loaders[source](data_cfg, image_size, resize_range, n_heldout, seed)


# ---------------------------------------------------------------- style images


def style_paths(style_cfg) -> tuple[dict[str, Path], dict[str, str]]:
    """The configured paintings as ({name: path}, {name: config key}): every image in `style.dir` (named
    after its file), then the `style.images` entries; `training.config.resolve_style` has already put
    `style.image` (or a `style.dir` given for a single-style group) there."""
    paths: dict[str, Path] = {}
    keys: dict[str, str] = {}
    style_dir = _get(style_cfg, "dir", "style", None)
    if style_dir:
        for path in find_images(style_dir, "style.dir"):
            # Same stem twice (a.jpg, a.png or sub/a.jpg): the later one is named by its relative path.
            name = path.stem if path.stem not in paths else path.relative_to(style_dir).as_posix()
            paths[name], keys[name] = path, "style.dir"
    check_style_image_paths(style_cfg)
    by_image = _get(style_cfg, "image", "style", None) is not None
    for name, path in (_get(style_cfg, "images", "style", None) or {}).items():
        paths[name], keys[name] = Path(path), "style.image" if by_image else f"style.images.{name}"
    return paths, keys


def load_style_images(style_cfg, min_side: int = 64,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict[str, np.ndarray], SkipReport]:
    """{name: image} for the configured styles (`style_paths`, sorted by name); an unusable file of a
    folder is skipped, an explicitly named one (`style.image`, `style.images`) is an error."""
    skipped = SkipReport()
    styles: dict[str, np.ndarray] = {}
    paths, keys = style_paths(style_cfg)
    for name, path in paths.items():
        try:
            styles[name] = load_painting(path, min_side, max_pixels)
        except DataError as err:
            if keys[name] == "style.dir":
                skipped.add(path, err.reason)
                continue
            # an explicit style must work: say which config entry is broken
            key = f"style.image={path}" if keys[name] == "style.image" else keys[name]
            raise DataError(f"{key}: {err}", err.reason, str(path)) from None
    if not styles:
        raise DataError(f"style {_get(style_cfg, 'name', 'style', '')!s}: no usable style image "
                        f"(style.dir={_get(style_cfg, 'dir', 'style', None)}, style.images empty; {skipped.summary()})",
                        "empty")
    return dict(sorted(styles.items())), skipped


# ---------------------------------------------------------------- batches


class TrainingBatches:
    """Endless batches {content, style, style_index}, deterministic for a seed; with `style.augment`, also
    style_jitter, each style crop's colour jitter for the objective to apply (training/data/color_jitter.py)."""

    def __init__(self, content: ContentData, styles: dict[str, np.ndarray], data_cfg, style_cfg,
                 batch_size: int, seed: int):
        if not styles:
            raise DataError("TrainingBatches needs at least one style image", "empty")
        self.content = content.train
        self.size = int(_get(data_cfg, "image_size", "data"))
        # The style image keeps its own size: the predictor and the Gram targets must see the
        # painting at the scale they will see it after training, whatever the content crop.
        self.style_size = int(_get(data_cfg, "style_size", "data", self.size))
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment = bool(_get(style_cfg, "augment", "style", False))
        if self.augment:
            # Augmentation never needs more than the largest short side it samples: shrink once, and keep
            # PIL images, so a crop converts nothing (as the content cache does).
            largest = _style_short_side_range(self.style_size)[1]
            self.styles = [as_pil_uint8(shrink_uint8(s, largest)) for s in styles.values()]
        else:  # uint8 like the content crops: to_uint8 of these [0, 1] crops is exact (they are k / 255)
            self.styles = [to_uint8(style_crop(s, self.style_size)) for s in styles.values()]

    @property
    def random_access(self) -> bool:
        """Batch i can be made on its own (a folder), in any order and in parallel; a stream cannot."""
        return self.content.random_access

    def _make(self, rng: np.random.Generator, dtype: str = "float32") -> dict[str, np.ndarray]:
        # Content crops are made and stacked in uint8 (a quarter of the bytes to move) and become
        # floats once, for the whole batch; uint8 batches never pass through floats at all.
        content = np.stack([self.content.sample_uint8(rng) for _ in range(self.batch_size)])
        index = rng.integers(len(self.styles), size=self.batch_size).astype(np.int32)
        extra = {}
        if self.augment:  # uint8 crops here; their colour jitter is applied on the device (training/data/color_jitter.py)
            crops, jitter = zip(*(augment_style(self.styles[i], rng, self.style_size) for i in index))
            style, extra["style_jitter"] = np.stack(crops), np.stack(jitter)
        else:
            style = np.stack([self.styles[i] for i in index])
        return {"content": from_uint8(content, dtype), "style": from_uint8(style, dtype), "style_index": index, **extra}

    def batch(self, index: int, dtype: str = "float32") -> dict[str, np.ndarray]:
        """Batch number `index` of this seed's sequence (random-access sources only), images in `dtype`."""
        if not self.random_access:
            raise TypeError("a streamed source has no random access: iterate the batches instead")
        return self._make(np.random.default_rng((self.seed, int(index))), dtype)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.iterate(0)

    def iterate(self, start: int, dtype: str = "float32") -> Iterator[dict[str, np.ndarray]]:
        """Batches from number `start` on. A stream cannot seek: a resumed one draws a fresh sequence."""
        if self.random_access:
            index = int(start)
            while True:
                yield self.batch(index, dtype)
                index += 1
        rng = np.random.default_rng(self.seed if not start else (self.seed, int(start)))
        self.content.restart()
        while True:
            yield self._make(rng, dtype)

    def as_tf_dataset(self, start: int = 0, dtype: str = "float32"):
        """The batches from `start` as a tf.data pipeline, images in `dtype` (see to_input_dtype)."""
        import tensorflow as tf

        content = tf.TensorSpec((self.batch_size, self.size, self.size, 3), dtype)
        style = tf.TensorSpec((self.batch_size, self.style_size, self.style_size, 3), dtype)
        spec = {"content": content, "style": style, "style_index": tf.TensorSpec((self.batch_size,), tf.int32)}
        if self.augment:
            spec["style_jitter"] = tf.TensorSpec((self.batch_size, 3), tf.float32)

        return tf.data.Dataset.from_generator(lambda: self.iterate(start, dtype), output_signature=spec).prefetch(2)

    def training_input(self, start: int, steps: int, workers: int, dtype: str = "float32", processes: bool = False):
        """What `fit` reads for `steps` steps from batch `start`: {content, style, style_index} batches,
        images in `dtype` (float32 in [0, 1], or uint8 0..255, which the objective turns back into
        [0, 1] on the device); style_index picks fixed style targets (trainer.fixed_style_targets);
        style_jitter (augmented styles) is the colour jitter the objective applies.

        A folder's batches are made by `workers` threads (PIL and NumPy release the GIL), or with
        `processes` by that many forked processes (training/data/batch_processes.py: no GIL between them),
        through a backend-neutral keras PyDataset, so the input keeps up with a GPU and needs no TensorFlow.
        A stream is read in order by one tf.data generator (its position cannot be sought).
        """
        if self.random_access and processes:
            from training.data.batch_processes import ProcessBatches

            return ProcessBatches(self, start, steps, workers, dtype)
        if self.random_access:
            return IndexedBatches(self, start, steps, workers, dtype)
        return self.as_tf_dataset(start, dtype)


def to_input_dtype(images: np.ndarray, dtype: str) -> np.ndarray:
    """[0, 1] float images as sent to the device: unchanged (float32), or rounded to uint8, a quarter
    of the bytes to copy per step (the photos are 8-bit; rounding moves a pixel by at most 0.5/255)."""
    if dtype == "float32":
        return images
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def from_uint8(images: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 images as sent to the device in `dtype`: as they are, or float32 [0, 1] (see to_input_dtype)."""
    return images if dtype == "uint8" else unit_float32(images)


class IndexedBatches(keras.utils.PyDataset):
    """Batches start .. start + steps - 1 of a TrainingBatches, made in worker threads."""

    def __init__(self, batches: TrainingBatches, start: int, steps: int, workers: int, dtype: str = "float32"):
        super().__init__(workers=max(1, int(workers)), use_multiprocessing=False, max_queue_size=max(4, 2 * int(workers)))
        self.batches, self.start, self.steps, self.dtype = batches, int(start), int(steps), dtype

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.steps:
            raise IndexError(i)
        return self.batches.batch(self.start + i, self.dtype)
