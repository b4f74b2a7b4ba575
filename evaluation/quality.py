"""Stylization quality without the training loss: style, palette and structure, in NumPy.

Training minimises VGG-16 Gram and content losses, so those losses cannot tell whether it has
learned to style or to game them. These measures use neither VGG-16 nor anything in `training/`:

- style distance: Euclidean distance between style embeddings of the stylized image and the
  style image, from an injected embedder (the evaluate stage uses Magenta's published style
  predictor, a network trained apart from ours). Relative style distance divides it by the
  photo's own distance to the style: 1 = no nearer the painting than the photo, 0 = the
  painting's embedding;
- palette distance: sliced Wasserstein-1 between the RGB pixel distributions of the stylized
  image and the style image (0 = the same colours in the same proportions);
- structure similarity: SSIM of the blurred, subsampled luma of the stylized image and the
  photo: brush strokes and texture are forgiven, the photo's layout must survive (1 = intact).

Images are float RGB in [0, 1], (H, W, 3), or batches (N, H, W, 3).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Embedder = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) float32 in [0, 1] -> (N, D)

LUMA_BT601 = np.array([0.299, 0.587, 0.114])
# SSIM as Wang et al. (2004) define it: an 11x11 Gaussian window of sigma 1.5, constants for range 1.
SSIM_WINDOW_SIGMA = 1.5
SSIM_WINDOW_RADIUS = 5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
# Structure blur: 2% of the short side (7.7 px at 384). Magenta's strokes and texture are a few
# to ~15 px at 384; a blur of that sigma removes them while objects and large edges remain.
# Every sigma-th pixel is then kept (the blur leaves about 1% at that spacing's Nyquist frequency):
# SSIM compares the layout on a ~50 px short side whatever the image size.
STRUCTURE_BLUR_FRACTION = 0.02
PALETTE_DIRECTION_COUNT = 64
PALETTE_QUANTILES = 1024


def _batch(images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    return images[None] if images.ndim == 3 else images


# ---------------------------------------------------------------- style


def style_embedding(embed: Embedder, images) -> np.ndarray:
    """(N, D) float64 style embeddings of one image or a batch; `embed` sees the batch as given."""
    images = _batch(images)
    embeddings = np.asarray(embed(images), np.float64)
    embeddings = embeddings.reshape(len(images), -1)  # the published predictor returns (N, 1, 1, 100)
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("style embedder returned non-finite values")
    return embeddings


def _distances(embeddings: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.linalg.norm(embeddings - target.reshape(1, -1), axis=1)


def style_distance(embed: Embedder, stylized, style_image) -> np.ndarray:
    """(N,) Euclidean distances from each stylized image's style embedding to the style image's."""
    return _distances(style_embedding(embed, stylized), style_embedding(embed, style_image))


def relative_style_distance(embed: Embedder, stylized, photos, style_image) -> np.ndarray:
    """(N,) style distance of each stylized image over that of its photo: 1 = unstyled, 0 = the painting."""
    target = style_embedding(embed, style_image)
    return _distances(style_embedding(embed, stylized), target) / _distances(style_embedding(embed, photos), target)


# ---------------------------------------------------------------- palette


def palette_directions(count: int = PALETTE_DIRECTION_COUNT) -> np.ndarray:
    """(count, 3) unit vectors spread evenly over a hemisphere (a Fibonacci lattice: fixed, no seed).

    A hemisphere is enough: a direction and its opposite give the same 1-D distance.
    """
    k = np.arange(count) + 0.5
    z = k / count  # uniform in z is uniform in area
    azimuth = np.pi * (3.0 - np.sqrt(5.0)) * k
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(azimuth), r * np.sin(azimuth), z], axis=1)


PALETTE_DIRECTIONS = palette_directions()


def _projected_quantiles(image, directions: np.ndarray, quantiles: int) -> np.ndarray:
    pixels = np.asarray(image, np.float64).reshape(-1, 3)
    projected = np.sort(directions @ pixels.T, axis=1)  # (directions, pixels): each row sorted in place
    index = ((np.arange(quantiles) + 0.5) / quantiles * len(pixels)).astype(int)  # midpoint quantiles
    return projected[:, index]


def palette_distance(stylized, style_image, directions: np.ndarray = PALETTE_DIRECTIONS,
                     quantiles: int = PALETTE_QUANTILES) -> float:
    """Sliced Wasserstein-1 distance between the RGB pixel distributions of two images, x 2.

    Each direction projects both images' pixels to a line, where the earth mover's distance is
    the mean gap between their quantiles (images of different sizes compare at the same
    quantiles). Over directions uniform on the sphere, two flat colours a and b give
    E|u . (a - b)| = |a - b| / 2: the factor 2 makes that the plain RGB distance |a - b|.
    0 = the same colours in the same proportions; black against white: sqrt(3) ~ 1.73.
    """
    gaps = _projected_quantiles(stylized, directions, quantiles) - _projected_quantiles(style_image, directions, quantiles)
    return float(2.0 * np.abs(gaps).mean())


# ---------------------------------------------------------------- structure


def luma(images) -> np.ndarray:
    """BT.601 luma of RGB images: (..., H, W, 3) -> (..., H, W)."""
    return np.asarray(images, np.float64) @ LUMA_BT601


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    radius = int(np.ceil(3.0 * sigma)) if radius is None else radius
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(t**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering of a 2-D array, 'valid' part only (no padding)."""
    windows = np.lib.stride_tricks.sliding_window_view
    rows = windows(image, len(kernel), axis=0) @ kernel
    return windows(rows, len(kernel), axis=1) @ kernel


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A 2-D array blurred with a Gaussian, edges mirrored so the size is kept."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    return filter_valid(np.pad(image, radius, mode="symmetric"), kernel)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two 2-D arrays in [0, 1]: Gaussian window (sigma 1.5, 11x11), windows inside the image.

    Per window: (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim compares two 2-D arrays of one shape, got {a.shape} and {b.shape}")
    kernel = gaussian_kernel(SSIM_WINDOW_SIGMA, SSIM_WINDOW_RADIUS)
    if min(a.shape) < len(kernel):
        raise ValueError(f"ssim needs at least {len(kernel)}x{len(kernel)} pixels, got {a.shape}")
    mean_a, mean_b = filter_valid(a, kernel), filter_valid(b, kernel)
    var_a = filter_valid(a * a, kernel) - mean_a**2
    var_b = filter_valid(b * b, kernel) - mean_b**2
    cov = filter_valid(a * b, kernel) - mean_a * mean_b
    luminance = (2.0 * mean_a * mean_b + SSIM_C1) / (mean_a**2 + mean_b**2 + SSIM_C1)
    contrast_structure = (2.0 * cov + SSIM_C2) / (var_a + var_b + SSIM_C2)
    return float(np.mean(luminance * contrast_structure))


def structure_blur_sigma(height: int, width: int) -> float:
    return STRUCTURE_BLUR_FRACTION * min(height, width)


def _coarse(image: np.ndarray, sigma: float) -> np.ndarray:
    # Subsample after the blur so SSIM's 11-px window sees layout-sized neighbourhoods: on the
    # full-size blurred image most windows are nearly flat, and a flat grey image scores well.
    if sigma <= 0:
        return image
    stride = max(1, round(sigma))
    return gaussian_blur(image, sigma)[stride // 2 :: stride, stride // 2 :: stride]


def structure_similarity(stylized, photo, sigma: float | None = None) -> float:
    """SSIM of the two images' BT.601 luma after a Gaussian blur of `sigma` px and subsampling.

    sigma None: 2% of the short side (7.7 px at 384, then every 8th pixel); 0: plain SSIM of the luma.
    1 = the photo's layout intact; a flat image scores near 0 against a photo with structure.
    """
    a, b = luma(stylized), luma(photo)
    if a.shape != b.shape:
        raise ValueError(f"structure_similarity compares images of one size, got {a.shape} and {b.shape}")
    sigma = structure_blur_sigma(*a.shape) if sigma is None else sigma
    return ssim(_coarse(a, sigma), _coarse(b, sigma))


# ---------------------------------------------------------------- feature statistics


FeatureMaps = Callable[[np.ndarray], list]  # (1, H, W, 3) float32 in [0, 1] -> [(1, h, w, c), ...]


def _statistics(features: FeatureMaps, image) -> list[tuple[np.ndarray, np.ndarray]]:
    maps = features(_batch(image)[:1])
    return [(np.asarray(m, np.float64).mean(axis=(0, 1, 2)), np.asarray(m, np.float64).std(axis=(0, 1, 2))) for m in maps]


def statistics_distance(features: FeatureMaps, stylized, style_image) -> np.ndarray:
    """(N,) distances between the per-channel means and standard deviations of each stylized image's
    feature maps and the style image's, relative to the style image's, averaged over the maps:
    mean over maps of (|mu - mu_s|^2 + |sd - sd_s|^2) / (|mu_s|^2 + |sd_s|^2). 0 = the same statistics.

    The statistics of a frozen ImageNet network are a second view of style (the one AdaIN transfers):
    unlike the style embedding, they are not the input of any transfer network.
    """
    target = _statistics(features, style_image)
    out = []
    for image in _batch(stylized):
        ratios = [(np.sum((m - tm) ** 2) + np.sum((d - td) ** 2)) / (np.sum(tm**2) + np.sum(td**2))
                  for (m, d), (tm, td) in zip(_statistics(features, image), target)]
        out.append(float(np.mean(ratios)))
    return np.asarray(out)


# ---------------------------------------------------------------- a batch


MEASURES = ("style_distance", "style_distance_relative", "palette_distance", "structure_similarity")
STATISTICS_MEASURE = "style_statistics_distance"  # with `features`


def score(embed: Embedder, stylized_batch, photo_batch, style_image, features: FeatureMaps | None = None) -> dict:
    """Every measure for stylized images against their photos and the style image.

    Returns {measure: mean over photos} for MEASURES (and STATISTICS_MEASURE when `features` is given),
    plus `photo_style_distance` (the photos' own mean distance to the style, the relative distance's
    reference) and `per_photo` (a dict of the same measures per photo, in order). The relative
    distance's mean is the mean of ratios.
    """
    stylized, photos = _batch(stylized_batch), _batch(photo_batch)
    if stylized.shape != photos.shape:
        raise ValueError(f"stylized {stylized.shape} and photos {photos.shape} differ in shape")
    target = style_embedding(embed, style_image)
    distance = _distances(style_embedding(embed, stylized), target)
    photo_distance = _distances(style_embedding(embed, photos), target)
    per_photo = [{"style_distance": float(d), "style_distance_relative": float(d / p),
                  "palette_distance": palette_distance(s, style_image),
                  "structure_similarity": structure_similarity(s, photo)}
                 for d, p, s, photo in zip(distance, photo_distance, stylized, photos)]
    measures = MEASURES
    if features is not None:
        measures = (*MEASURES, STATISTICS_MEASURE)
        for row, value in zip(per_photo, statistics_distance(features, stylized, style_image)):
            row[STATISTICS_MEASURE] = float(value)
    means = {m: float(np.mean([row[m] for row in per_photo])) for m in measures}
    return {**means, "photo_style_distance": float(photo_distance.mean()), "per_photo": per_photo}
