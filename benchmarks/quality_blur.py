"""How the independent quality measures respond to blur: a table.

    python -m benchmarks.quality_blur [--photos 2] [--size 384] [--sigmas 0.5 0.8 1.2] [--style starry] [--style-embedder float]

Magenta's published model (its Keras re-implementation with the published weights) stylizes the first
--photos held-out photos with the painting of --style, at --size x --size, as the evaluate stage
scores them; each stylization is then blurred by a Gaussian of each sigma (pixels) and scored again
with the evaluate stage's measures (evaluation/quality.py). It shows how much of a style distance
is fine detail: a model whose strokes come out a little softer than another's scores as if blurred.
Writes outputs/benchmarks/quality_blur.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEASURES = ("style_distance_relative", "style_statistics_distance", "palette_distance", "structure_similarity")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality_blur", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=2, help="held-out photos scored (the evaluate stage's default: 2)")
    parser.add_argument("--size", type=int, default=384, help="photo side in pixels, a multiple of 4")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 0.8, 1.2], help="Gaussian blur sigmas, pixels")
    parser.add_argument("--style", default="starry", help="a configs/style name")
    parser.add_argument("--style-embedder", choices=["float", "int8"], default="float",
                        help="the style distance's predictor, as evaluate.style_embedder")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "quality_blur.json"))
    args = parser.parse_args()
    if args.photos < 1 or args.size < 16 or args.size % 4 or any(s <= 0 for s in args.sigmas):
        parser.error("--photos must be >= 1, --size a multiple of 4 >= 16, and every sigma > 0")

    from hydra import compose, initialize_config_dir
    from scipy.ndimage import gaussian_filter

    from evaluation import quality
    from evaluation.stage import (STYLE_EMBEDDING_SIZE, predictor_feature_maps, predictor_style_embedder,
                                  published_style_embedder)
    from training.config import style_image_path
    from training.data.datasets import fit_crop, load_content, load_painting, style_crop
    from training.weights.magenta_import import PUBLISHED_PREDICTOR_INT8, published_stylizer, verified_path

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={REPO}", f"style={args.style}"])
    content = load_content(cfg.data)
    photos = np.stack([fit_crop(p, args.size, args.size) for p in content.heldout_full[: args.photos]])
    style_image = style_crop(load_painting(style_image_path(args.style, cfg.paths)), STYLE_EMBEDDING_SIZE)
    stylizer = published_stylizer(cfg.paths.published_dir)
    predictor = stylizer.get_layer("style_predictor")
    embed = (predictor_style_embedder(predictor) if args.style_embedder == "float"
             else published_style_embedder(verified_path(cfg.paths.published_dir, PUBLISHED_PREDICTOR_INT8)))
    features = predictor_feature_maps(predictor)
    stylized = np.stack([np.asarray(stylizer({"content": p[None], "style": style_image[None]}, training=False))[0]
                         for p in photos])

    def row(image: str, sigma: float, images) -> dict:
        scores = quality.score(embed, images, photos, style_image, features)
        return {"image": image, "blur_sigma": sigma, **{k: v for k, v in scores.items() if k != "per_photo"}}

    # sigma 0: gaussian_filter returns the images unchanged
    rows = [row("photo (identity)", 0.0, photos)] + [
        row("published model", sigma, np.clip(gaussian_filter(stylized, (0, sigma, sigma, 0)), 0, 1))
        for sigma in (0.0, *args.sigmas)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"photos": content.heldout_names[: args.photos], "size": args.size,
                                          "style": args.style, "rows": rows}, indent=2))
    print(f"| image | blur sigma (px) | {' | '.join(MEASURES)} |")
    print("| --- | ---: |" + " ---: |" * len(MEASURES))
    for row in rows:
        print(f"| {row['image']} | {row['blur_sigma']:g} | " + " | ".join(f"{row[m]:.4f}" for m in MEASURES) + " |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
