"""Train a small sweep of style settings and show their effect: one grid image and a table.

    python -m benchmarks.style_knobs --settings "style.strength=2" "style.strength=5" "style.strength=9" \
        --steps 600 --eval-every 100 --out outputs/style_knobs -- init=magenta_published

Each setting is a list of Hydra overrides of the training config (after the shared overrides given
after `--`); each trains its own model for --steps from the same start. Every --eval-every steps the
held-out photos are stylized and scored with the independent quality measures (evaluation/quality.py:
style distance to the painting by Magenta's published style predictor, style statistics distance
by its ImageNet MobileNetV2, palette distance, structure similarity), none of which is the training loss. Writes `style_knobs.png` (a row per setting, the
published model's row first when the run starts from it) and `style_knobs.json` (the measures over
steps) and `stylized.npz` (the held-out photos and each setting's final images, uint8), and prints
the table. On a CPU add `experiment=smoke`; on a GPU the defaults (experiment=full).

`--init-weights FILE.npz` loads the starting weights from a file written by `--save-init-weights`
(a machine without LiteRT, which reads Magenta's published TFLite files, can then start from them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=[f"paths.root_dir={REPO}", "trainer.progress=false", *overrides])


def save_weights(model, path) -> None:
    np.savez(path, **{v.path: np.asarray(v.numpy()) for v in model.weights})


def load_weights(model, path) -> None:
    with np.load(path, allow_pickle=False) as arrays:
        missing = [v.path for v in model.weights if v.path not in arrays]
        if missing:
            sys.exit(f"error: --init-weights {path} lacks {len(missing)} of the model's weights, e.g. {missing[0]}")
        for v in model.weights:
            v.assign(arrays[v.path])


def initialise(stylizer, cfg, init_weights) -> None:
    if init_weights:
        load_weights(stylizer, init_weights)
    elif cfg.get("init") and cfg.init.name == "magenta_published":
        from training.weights.magenta_import import load_published_into

        load_published_into(stylizer, cfg.paths.published_dir)


def built_stylizer(cfg, init_weights):
    """The stylizer of `cfg`, its variables created, with its starting weights."""
    from training.network.stylizer import build_stylizer

    stylizer = build_stylizer(cfg.model, cfg.backbone, cfg.paths.cache_dir)
    stylizer({"content": np.zeros((1, 64, 64, 3), np.float32), "style": np.zeros((1, 64, 64, 3), np.float32)})
    initialise(stylizer, cfg, init_weights)
    return stylizer


def published_measures(cfg, init_weights):
    """Magenta's published style predictor (frozen, apart from any model trained here) as the embedder,
    and its ImageNet MobileNetV2's feature maps for the style statistics distance."""
    import keras

    from evaluation.stage import predictor_feature_maps, predictor_style_embedder

    published = compose(["init=magenta_published", f"paths.cache_dir={cfg.paths.cache_dir}"])
    keras.mixed_precision.set_global_policy("float32")
    predictor = built_stylizer(published, init_weights).get_layer("style_predictor")
    return predictor_style_embedder(predictor), predictor_feature_maps(predictor)


def run_setting(name, cfg, content, styles, measures, args, photos):
    import keras

    from evaluation.quality import score
    from training.data import datasets as data_lib
    from training.loop.train import _build, _build_objective, fix_style_targets, stylize

    keras.utils.set_random_seed(int(cfg.seed))
    painting = next(iter(styles.values()))
    style_image = data_lib.style_crop(painting, cfg.data.style_size)
    objective, optimizer, _ = _build_objective(cfg, Path(cfg.paths.cache_dir), [style_image])
    _build(objective, optimizer, cfg.data.image_size, cfg.data.style_size)
    initialise(objective.stylizer, cfg, args.init_weights)
    textures = [data_lib.texture_image(painting, int(cfg.style.texture_size))]
    batches = data_lib.TrainingBatches(content, styles, cfg.data, cfg.style, cfg.trainer.batch_size, seed=int(cfg.seed))
    fix_style_targets(objective, batches, cfg.trainer.fixed_style_targets, textures)

    def measure(step, seconds):
        stylized = np.stack(stylize(objective.stylizer, photos, style_image))
        scores = score(measures[0], stylized, np.stack(photos), style_image, features=measures[1])
        row = {"setting": name, "step": step, "train_seconds": round(seconds, 1),
               **{k: round(v, 5) for k, v in scores.items() if k != "per_photo"}}
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        return row, stylized

    row, start = measure(0, 0.0)
    curve, seconds, step, stylized = [row], 0.0, 0, start
    while step < args.steps:
        chunk = min(args.eval_every, args.steps - step)
        dataset = batches.training_input(step, chunk, workers=args.workers, dtype=cfg.trainer.input_dtype)
        began = time.perf_counter()
        objective.fit(dataset, steps_per_epoch=chunk, epochs=1, verbose=0, shuffle=False)
        seconds += time.perf_counter() - began
        step += chunk
        row, stylized = measure(step, seconds)
        curve.append(row)
    return curve, start, stylized


def grid_png(rows: list[tuple[str, list[np.ndarray]]]) -> bytes:
    from PIL import Image, ImageDraw

    from training.loop.sample_grid import LABEL_HEIGHT, png_bytes, to_uint8

    tile = 192
    grid = Image.new("RGB", (tile * max(len(images) for _, images in rows), (tile + LABEL_HEIGHT) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        y = r * (tile + LABEL_HEIGHT)
        draw.text((3, y + 1), label, fill="black")
        for c, image in enumerate(images):
            grid.paste(Image.fromarray(to_uint8(image)).resize((tile, tile)), (c * tile, y + LABEL_HEIGHT))
    return png_bytes(grid)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.style_knobs", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", required=True, help="one quoted string of overrides per setting")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4, help="threads making batches")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "style_knobs")
    parser.add_argument("--init-weights", help="start from this .npz (see --save-init-weights)")
    parser.add_argument("--save-init-weights", help="write the starting weights to this .npz and stop")
    parser.add_argument("overrides", nargs="*", help="overrides shared by every setting (after --)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1:
        parser.error("--steps and --eval-every must be >= 1")

    import keras

    from training.data import datasets as data_lib
    from training.config import validate_train_config
    from training.errors import StylepipeError

    base = compose(args.overrides)
    try:
        validate_train_config(base)
        if args.save_init_weights:
            save_weights(built_stylizer(base, None), args.save_init_weights)
            print(f"wrote {args.save_init_weights}")
            return
        content = data_lib.load_content(base.data)
        styles, _ = data_lib.load_style_images(base.style, min_side=base.data.min_side, max_pixels=base.data.max_pixels)
        if len(styles) != 1:
            parser.error("the sweep trains one style: pick one with style=NAME")
        size = int(base.data.heldout_size)
        photos = [data_lib.fit_crop(photo, size, size) for photo in content.heldout_full]
        measures = published_measures(base, args.init_weights)
        curves, rows, images = {}, [], {}
        for setting in args.settings:
            cfg = compose([*args.overrides, *setting.split()])
            validate_train_config(cfg)
            curve, start, stylized = run_setting(setting, cfg, content, styles, measures, args, photos)
            if not rows and cfg.get("init"):  # every setting starts from these weights: show where they start
                first = curve[0]
                rows.append((f"start ({cfg.init.name}): style distance {first['style_distance_relative']:.3f}, "
                             f"statistics {first['style_statistics_distance']:.4f}, "
                             f"structure {first['structure_similarity']:.3f}", list(start)))
            curves[setting] = curve
            images[setting] = np.round(np.clip(stylized, 0, 1) * 255).astype(np.uint8)
            images.setdefault("start", np.round(np.clip(start, 0, 1) * 255).astype(np.uint8))
            last = curve[-1]
            rows.append((f"{setting} ({args.steps} steps): style distance {last['style_distance_relative']:.3f}, "
                         f"statistics {last['style_statistics_distance']:.4f}, "
                         f"structure {last['structure_similarity']:.3f}", list(stylized)))
            keras.backend.clear_session()
    except StylepipeError as err:
        sys.exit(f"error: {err}")
    style_image = data_lib.style_crop(next(iter(styles.values())), size)
    header = ("photos | painting", [*photos, style_image])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "style_knobs.png").write_bytes(grid_png([header, *rows]))
    np.savez_compressed(args.out / "stylized.npz", photos=np.round(np.stack(photos) * 255).astype(np.uint8),
                        settings=np.array(list(images)), **{f"images_{i}": v for i, v in enumerate(images.values())})
    (args.out / "style_knobs.json").write_text(json.dumps({"overrides": args.overrides, "steps": args.steps,
                                                           "curves": curves}, indent=2))
    print("\n| setting | steps | train s | style distance (relative) | style statistics distance | palette distance "
          "| structure similarity |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for setting, curve in curves.items():
        for row in (curve[0], curve[-1]):
            print(f"| {setting} | {row['step']} | {row['train_seconds']} | {row['style_distance_relative']:.3f} | "
                  f"{row['style_statistics_distance']:.4f} | {row['palette_distance']:.4f} | "
                  f"{row['structure_similarity']:.3f} |")
    print(f"wrote {args.out / 'style_knobs.png'} and {args.out / 'style_knobs.json'}")


if __name__ == "__main__":
    main()
