"""Quality measures independent of the training loss (evaluation/quality.py), on hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import REPO, STYLE_DIR
from evaluation import quality

PUBLISHED_DIR = REPO / "models" / "magenta-published"


def flat(color, size=64) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, np.float32), (size, size, 3)).copy()


def grating(size=384, period=96, amplitude=0.4) -> np.ndarray:
    """Grey vertical stripes: 0.5 + amplitude * sin(2 pi x / period), the same in R, G and B."""
    row = 0.5 + amplitude * np.sin(2 * np.pi * np.arange(size) / period)
    return np.repeat(np.broadcast_to(row, (size, size))[..., None], 3, axis=-1).astype(np.float32)


def channel_stats(images: np.ndarray) -> np.ndarray:
    """A stand-in embedder: per-channel means and standard deviations, (N, 6)."""
    images = images.astype(np.float64)
    return np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1)


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([quality.gaussian_blur(image[..., c], sigma) for c in range(3)], axis=-1)


# ---------------------------------------------------------------- structure (SSIM)


def ssim_by_loops(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written out window by window, as Wang et al. define it (11x11 Gaussian, sigma 1.5)."""
    t = np.arange(-5, 6)
    w = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            x, y = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
            cov = (w * (x - mx) * (y - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_window_by_window_computation():
    rng = np.random.default_rng(3)
    a = rng.random((14, 17))
    b = np.clip(0.6 * a + 0.4 * rng.random((14, 17)), 0, 1)
    assert quality.ssim(a, b) == pytest.approx(ssim_by_loops(a, b), rel=1e-10)


def test_ssim_of_two_flat_images_is_their_luminance_term():
    # No variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) = (0.24 + 1e-4) / (0.40 + 1e-4).
    assert quality.ssim(np.full((16, 16), 0.2), np.full((16, 16), 0.6)) == pytest.approx(0.2401 / 0.4001)


def test_identical_images_have_structure_similarity_one(real_photo):
    photo = real_photo[:384, :384]
    assert quality.structure_similarity(photo, photo) == pytest.approx(1.0, abs=1e-12)
    assert quality.structure_similarity(photo, photo, sigma=0) == pytest.approx(1.0, abs=1e-12)


def test_structure_similarity_is_symmetric(real_photo):
    photo = real_photo[:384, :384]
    other = real_photo[-384:, -384:]
    assert quality.structure_similarity(photo, other) == pytest.approx(quality.structure_similarity(other, photo), abs=1e-12)
    assert quality.structure_similarity(photo, other) < 0.9


def test_flat_grey_against_stripes_scores_near_zero():
    # Per window, against a flat image SSIM <= C2 / (var + C2). The 96-px stripes (amplitude 0.4)
    # keep amplitude a = 0.4 exp(-2 pi^2 7.68^2 / 96^2) = 0.353 through the 7.68-px blur; every 8th
    # pixel makes their period 12 px, frequency w = 2 pi / 12; a Gaussian window (sigma s = 1.5)
    # then sees a variance of at least a^2 (1 - exp(-w^2 s^2))^2 / 2 = 0.0132: SSIM <= 0.064.
    stripes = grating()
    assert 0 < quality.structure_similarity(flat(0.5, 384), stripes) < 0.064


def test_blur_and_texture_are_forgiven(real_photo):
    photo = real_photo[:384, :384]
    assert quality.structure_similarity(blurred(photo, 2.0), photo) > 0.98
    noise = np.random.default_rng(0).uniform(-0.15, 0.15, photo.shape)
    textured = np.clip(photo + noise, 0, 1)
    assert quality.structure_similarity(textured, photo) > 0.95
    assert quality.structure_similarity(textured, photo, sigma=0) < 0.6  # plain SSIM punishes the texture


def test_luma_weighs_rgb_as_bt601():
    assert quality.luma(flat([1, 0, 0], 2))[0, 0] == pytest.approx(0.299)
    assert quality.luma(flat([0.5, 0.5, 0.5], 2))[0, 0] == pytest.approx(0.5)


# ---------------------------------------------------------------- palette


def test_palette_distance_of_an_image_to_itself_is_zero(real_photo):
    assert quality.palette_distance(real_photo, real_photo) == 0.0
    shuffled = np.random.default_rng(0).permutation(real_photo.reshape(-1, 3)).reshape(real_photo.shape)
    assert quality.palette_distance(shuffled, real_photo) == pytest.approx(0.0, abs=1e-12)  # colours, not places


def test_palette_distance_of_two_flat_colours_is_their_colour_distance():
    a, b = np.array([0.9, 0.2, 0.1]), np.array([0.1, 0.3, 0.7])
    projected = 2 * np.abs(quality.PALETTE_DIRECTIONS @ (a - b)).mean()
    assert quality.palette_distance(flat(a, 96), flat(b, 64)) == pytest.approx(projected, rel=1e-6)
    assert projected == pytest.approx(np.linalg.norm(a - b), rel=0.01)  # the directions cover the sphere evenly


def test_palette_distance_counts_proportions():
    # Half the pixels must move from black to white: half of black-to-white's sqrt(3).
    half = flat(0, 64)
    half[:32] = 1.0
    assert quality.palette_distance(half, flat(0, 64)) == pytest.approx(np.sqrt(3) / 2, rel=0.01)


# ---------------------------------------------------------------- style (injected embedder)


def test_style_distance_is_the_embedders_euclidean_distance():
    # channel_stats of a flat colour is (colour, 0, 0, 0): the distance is the colour difference.
    a, b = np.float32([0.8, 0.5, 0.2]), np.float32([0.2, 0.1, 0.2])
    assert quality.style_distance(channel_stats, flat(a), flat(b)) == pytest.approx([np.linalg.norm(a - b)])
    assert quality.style_distance(channel_stats, flat(a), flat(a)) == pytest.approx([0.0])


def test_relative_style_distance_is_one_for_the_photo_and_zero_for_the_style(real_photo):
    photo, style = real_photo[:64, :64], flat([0.9, 0.8, 0.1])
    halfway = (photo + style) / 2  # channel means halfway, stds halved: exactly half the embedding distance
    batch = np.stack([photo, style, halfway])
    relative = quality.relative_style_distance(channel_stats, batch, np.stack([photo] * 3), style)
    assert relative == pytest.approx([1.0, 0.0, 0.5])


def test_score_reports_means_and_per_photo_values(real_photo):
    photos = np.stack([real_photo[:64, :64], real_photo[-64:, -64:]])
    style = flat([0.9, 0.8, 0.1])
    s = quality.score(channel_stats, photos, photos, style)
    assert (s["style_distance_relative"], s["structure_similarity"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert s["style_distance"] == pytest.approx(s["photo_style_distance"]) and s["style_distance"] > 0
    assert len(s["per_photo"]) == 2 and set(s["per_photo"][0]) == set(quality.MEASURES)
    assert s["palette_distance"] == pytest.approx(np.mean([quality.palette_distance(p, style) for p in photos]))


def test_score_refuses_batches_of_different_shapes():
    with pytest.raises(ValueError, match="differ"):
        quality.score(channel_stats, np.zeros((2, 64, 64, 3)), np.zeros((1, 64, 64, 3)), flat(0.5))


# ---------------------------------------------------------------- Magenta's published style predictor


@pytest.fixture(scope="module")
def published_embed():
    from evaluation.stage import published_style_embedder
    from training.weights.magenta_import import PUBLISHED_PREDICTOR_INT8

    return published_style_embedder(PUBLISHED_DIR / PUBLISHED_PREDICTOR_INT8.name)


@pytest.fixture(scope="module")
def starry():
    from training.data.datasets import load_image, style_crop

    return style_crop(load_image(STYLE_DIR / "starry_night.jpg"), 256)


def test_published_predictor_places_the_painting_nearer_itself_than_a_photo(published_embed, starry, real_photo):
    from training.data.datasets import fit_crop

    embedding = quality.style_embedding(published_embed, starry)
    assert embedding.shape == (1, 100)
    mirrored, photo = starry[:, ::-1], fit_crop(real_photo, 256, 256)
    to_mirror, to_photo = quality.style_distance(published_embed, np.stack([mirrored, photo]), starry)
    assert to_mirror < 0.5 * to_photo


def test_published_transfer_moves_a_heldout_photo_toward_the_painting(published_embed, starry, real_photo):
    from training.data.datasets import fit_crop
    from training.weights.magenta_import import PUBLISHED_PREDICTOR_INT8, PUBLISHED_TRANSFER_FP16, run_tflite

    photo = fit_crop(real_photo, 384, 384)  # chelsea, one of the samples' held-out photos
    bottleneck = run_tflite(PUBLISHED_DIR / PUBLISHED_PREDICTOR_INT8.name, [starry[None]])
    stylized = run_tflite(PUBLISHED_DIR / PUBLISHED_TRANSFER_FP16.name, [photo[None], bottleneck])
    s = quality.score(published_embed, stylized, photo[None], starry)
    assert s["style_distance_relative"] < 0.6  # 0.21 when measured
    assert s["palette_distance"] < 0.5 * quality.palette_distance(photo, starry)
    assert 0.5 < s["structure_similarity"] < 1.0  # strokes over the photo's layout


def test_float_embedder_is_the_published_predictor_without_its_activation_noise(published_embed, starry, real_photo):
    """evaluate.style_embedder=float: the int8 file's network (the painting's bottleneck close to the file's)
    with float activations. A published stylization and the same image plus noise of a quarter of a uint8
    step (four draws) keep its relative style distance to 0.2%; through the int8 file's quantized
    activations it moves by over 1% (3% when measured)."""
    from evaluation.stage import predictor_style_embedder
    from training.data.datasets import fit_crop
    from training.weights.magenta_import import (PUBLISHED_PREDICTOR_INT8, PUBLISHED_TRANSFER_FP16, published_predictor,
                                                 run_tflite)

    float_embed = predictor_style_embedder(published_predictor(PUBLISHED_DIR, REPO / ".cache" / "stylepipe"))
    int8, fp32 = (quality.style_embedding(embed, starry)[0] for embed in (published_embed, float_embed))
    assert np.linalg.norm(fp32 - int8) < 0.1 * np.linalg.norm(int8)
    photo = fit_crop(real_photo, 384, 384)
    bottleneck = run_tflite(PUBLISHED_DIR / PUBLISHED_PREDICTOR_INT8.name, [starry[None]])
    stylized = run_tflite(PUBLISHED_DIR / PUBLISHED_TRANSFER_FP16.name, [photo[None], bottleneck])[0]
    noisy = [np.clip(stylized + np.random.default_rng(seed).normal(0, 1e-3, stylized.shape), 0, 1) for seed in range(4)]
    images, photos = np.stack([stylized, *noisy]).astype(np.float32), np.stack([photo] * 5)
    steady = quality.relative_style_distance(float_embed, images, photos, starry)
    moved = quality.relative_style_distance(published_embed, images, photos, starry)
    assert np.abs(steady[1:] - steady[0]).max() < 2e-3 * steady[0]
    assert np.abs(moved[1:] - moved[0]).max() > 1e-2 * moved[0]
    assert steady[0] == pytest.approx(moved[0], rel=0.1)


# ---------------------------------------------------------------- feature statistics


def pixel_maps(images: np.ndarray) -> list[np.ndarray]:
    """A stand-in feature extractor: the pixels themselves and their squares, two 'layers'."""
    return [images, images**2]


def test_statistics_distance_by_hand():
    """Flat colours: std 0, so each map's ratio is |mu - mu_s|^2 / |mu_s|^2. Pixels 0.5 vs style 0.25 per channel:
    (3 * 0.25^2) / (3 * 0.25^2) = 1 on the pixels; (0.25 - 0.0625)^2 / 0.0625^2 = 9 on the squares: mean 5."""
    distance = quality.statistics_distance(pixel_maps, flat(0.5)[None], flat(0.25))
    assert distance == pytest.approx([5.0])
    assert quality.statistics_distance(pixel_maps, flat(0.25)[None], flat(0.25)) == pytest.approx([0.0])


def test_statistics_distance_ignores_where_things_are(real_photo):
    """Means and standard deviations do not move with the pixels: a mirrored image has the same statistics."""
    image = real_photo[:64, :64]
    assert quality.statistics_distance(pixel_maps, image[None, :, ::-1], image) == pytest.approx([0.0], abs=1e-12)
    assert quality.statistics_distance(pixel_maps, flat(0.5)[None], image)[0] > 0


def test_score_adds_the_statistics_measure_with_a_feature_extractor(real_photo):
    photos = np.stack([real_photo[:64, :64]])
    s = quality.score(channel_stats, photos, photos, flat(0.5), features=pixel_maps)
    assert s[quality.STATISTICS_MEASURE] == pytest.approx(quality.statistics_distance(pixel_maps, photos, flat(0.5))[0])
    assert quality.STATISTICS_MEASURE in s["per_photo"][0]
    assert quality.STATISTICS_MEASURE not in quality.score(channel_stats, photos, photos, flat(0.5))


def test_published_mobilenet_statistics_put_the_stylized_photo_nearer_the_painting(starry, real_photo):
    """The published predictor's frozen MobileNetV2: Magenta's published model moves a held-out photo's
    feature statistics toward the painting's."""
    from evaluation.stage import predictor_feature_maps
    from training.data.datasets import fit_crop
    from training.weights.magenta_import import (PUBLISHED_PREDICTOR_INT8, PUBLISHED_TRANSFER_FP16, published_predictor,
                                                 run_tflite)

    features = predictor_feature_maps(published_predictor(PUBLISHED_DIR, REPO / ".cache" / "stylepipe"))
    photo = fit_crop(real_photo, 384, 384)
    bottleneck = run_tflite(PUBLISHED_DIR / PUBLISHED_PREDICTOR_INT8.name, [starry[None]])
    stylized = run_tflite(PUBLISHED_DIR / PUBLISHED_TRANSFER_FP16.name, [photo[None], bottleneck])
    to_photo, to_stylized = quality.statistics_distance(features, np.stack([photo, stylized[0]]), starry)
    [to_painting] = quality.statistics_distance(features, starry, starry)
    assert to_painting == pytest.approx(0.0, abs=1e-9)
    assert to_stylized < 0.5 * to_photo
