"""`evaluate(cfg) -> metrics`: latency and quality of exported models on this host, a row per model.

Reads `outputs/export/manifest.json` and the export folders of `evaluate.compare` (e.g. a fast model's
teacher), each checked against its manifest; Magenta's published model is the baseline. Writes
`metrics.json`, `report.md` (each model's LiteRT latency as a fraction of the published model's, its
GFLOP and activation MB per frame, its quality measures), `latency.png` (chart), `stylized_grid.png`,
`quality_summary.json` (the measures of `evaluation/quality.py`, which do not use the training loss)
and `side_by_side/<photo>.png`; logs all of it to MLflow under the training run. Runtimes that this
host lacks are listed under `skipped` with the reason.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from evaluation import quality as quality_lib
from evaluation.latency import summarize, time_alternating, time_calls
from export.manifest import MANIFEST_NAME, REEXPORT, ManifestError, read_manifest, verified_files
from training.errors import StylepipeError
from training.fileio import atomic_write_bytes, atomic_write_text
from training.weights.parity import psnr_db
from training.weights.tflite_runner import tflite_runner

log = logging.getLogger("stylepipe.evaluate")
PUBLISHED_NAME = "magenta_published"
BASELINE_MODEL = "magenta_published_fp16"  # the baseline rows' model: Magenta's published fp16 TFLite file, as released
IDENTITY_NAME = "identity"  # the held-out photo itself, scored as if it were a stylized output
SIDE_BY_SIDE_DIR = "side_by_side"
STYLE_EMBEDDING_SIZE = 256  # the published style predictor's input
# Side-by-side columns: title -> entry of the scored outputs (the exported formats match Keras: see the grid).
SIDE_BY_SIDE_COLUMNS = {"photo": IDENTITY_NAME, "Magenta published": PUBLISHED_NAME, "ours (keras)": "keras"}


def _grid(rows: list[tuple[str, list[np.ndarray]]], columns: list[str], labels: list[list[str]] | None = None,
          tile: int = 192) -> bytes:
    """Images in rows and columns, each under its label: `labels[row][column]` (lines split on
    newlines), or "row | column"; the longer side of a tile is `tile` px."""
    from training.loop.sample_grid import LABEL_HEIGHT, png_bytes, to_uint8
    from PIL import Image, ImageDraw

    labels = labels or [[f"{row_name} | {column}" for column in columns] for row_name, _ in rows]
    label_h = LABEL_HEIGHT * max(text.count("\n") + 1 for row in labels for text in row)
    tile_h, tile_w = rows[0][1][0].shape[:2]
    scale = tile / max(tile_h, tile_w)
    th, tw = int(tile_h * scale), int(tile_w * scale)
    grid = Image.new("RGB", (tw * len(columns), (th + label_h) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (_, images) in enumerate(rows):
        for c, image in enumerate(images):
            y = r * (th + label_h)
            grid.paste(Image.fromarray(to_uint8(image)).resize((tw, th)), (c * tw, y + label_h))
            for k, line in enumerate(labels[r][c].split("\n")):
                draw.text((c * tw + 3, y + 1 + k * LABEL_HEIGHT), line[: tw // 7], fill="black")
    return png_bytes(grid)


def predictor_style_embedder(predictor):
    """A style predictor built with the published weights (Keras, float32) as a `quality` embedder:
    images -> (N, 100) bottlenecks, each image cropped as style images are (`style_crop`: short side
    to 256, centre crop). `evaluate.style_embedder=float`: the published file's network with its int8
    weights dequantized and its activations in float, so images that agree to float precision get
    the same bottleneck (the int8 file's quantized activations do not: docs/quality.md)."""
    from training.data.datasets import style_crop

    def embed(images: np.ndarray) -> np.ndarray:
        crops = np.stack([style_crop(image, STYLE_EMBEDDING_SIZE) for image in images]).astype(np.float32)
        return keras.ops.convert_to_numpy(predictor(crops, training=False)).reshape(len(images), -1)

    return embed


def published_style_embedder(predictor_path):
    """Magenta's published style predictor file (int8 TFLite, as released) as a `quality` embedder:
    images -> (N, 100) bottlenecks (`evaluate.style_embedder=int8`).

    Each image is cropped as style images are (`style_crop`: short side to 256, centre crop) and
    run alone (the file's batch is 1).
    """
    from training.data.datasets import style_crop
    from training.weights.magenta_import import run_tflite

    def embed(images: np.ndarray) -> np.ndarray:
        return np.concatenate([run_tflite(predictor_path, [style_crop(image, STYLE_EMBEDDING_SIZE)[None]]).reshape(1, -1)
                               for image in images])

    return embed


# MobileNetV2 layers whose statistics describe style, from edges and colours to textures and parts.
STATISTICS_LAYERS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "out_relu")


def predictor_feature_maps(predictor):
    """The frozen ImageNet MobileNetV2 of a style predictor built with the published weights as a
    `quality` feature extractor: an image, cropped as style images are, -> its maps at
    STATISTICS_LAYERS (float32, Keras)."""
    from training.data.datasets import style_crop

    backbone = predictor.get_layer("backbone_mobilenet_v2")
    net = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))  # fed [0, 1] as the predictor feeds it
    maps = keras.Model(net.inputs[0], [net.get_layer(name).output for name in STATISTICS_LAYERS])

    def features(images: np.ndarray) -> list[np.ndarray]:
        crops = np.stack([style_crop(image, STYLE_EMBEDDING_SIZE) for image in images])
        return [keras.ops.convert_to_numpy(m) for m in maps(crops, training=False)]

    return features


def _measures_label(title: str, scores: dict) -> str:
    return (f"{title}\nstyle distance {scores['style_distance']:.2f} ({scores['style_distance_relative']:.2f} of the photo's)"
            f"\npalette {scores['palette_distance']:.3f}  structure {scores['structure_similarity']:.2f}")


def _side_by_side(photo_name: str, images: dict[str, np.ndarray], scores: dict[str, dict]) -> bytes:
    """One photo: a column per entry of `images`, each labelled with its measures (full size)."""
    labels = [[_measures_label(f"{photo_name} | {column}", scores[column]) for column in images]]
    return _grid([(photo_name, list(images.values()))], list(images), labels, tile=max(next(iter(images.values())).shape[:2]))


def _latency_chart(rows: list[dict]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['format']} {r['variant']} {r['runtime']}" + (f" t{r['threads']}" if r["threads"] else "")
              + f" {r['height']}x{r['width']}" + (f" [{r['device']}]" if r["device"] != "host" else "") for r in rows]
    fig, ax = plt.subplots(figsize=(13, 0.32 * len(rows) + 1.2))
    ax.barh(range(len(rows)), [r["median_ms"] for r in rows], xerr=[[0] * len(rows), [r["p90_ms"] - r["median_ms"] for r in rows]],
            color=["#d62728" if PUBLISHED_NAME in r["format"] else "#1f77b4" for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median latency, ms (bar to p90); red: Magenta's published model")
    ax.set_title("stylepipe latency by format, runtime, threads and size")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def baked_style_image(manifest: dict, paths_cfg) -> Path:
    """The painting the export baked: the manifest's `style_image`, checked against its sha256 (a
    manifest written before exports recorded it: the configs/style file of its `style`)."""
    from training.config import style_image_path, style_image_sha256

    if "style_image" not in manifest:
        return Path(style_image_path(manifest["style"], paths_cfg))
    path = Path(manifest["style_image"])
    if not path.is_file() or style_image_sha256(path) != manifest.get("style_sha256"):
        what = "is missing" if not path.is_file() else "has changed since the export (sha256 differs from the manifest)"
        raise ManifestError(f"{path}: the painting baked by the export {what}; {REEXPORT}")
    return path


@dataclass
class ExportedModel:
    """One export folder, verified and loaded: the model it exported and the style it baked."""

    name: str                 # the training's model name (magenta_lite, realtime, ...), or the folder's
    manifest: dict
    export_dir: Path
    verified: dict            # artifact path in the manifest -> the verified file
    stylizer: keras.Model     # style_predictor + transformer
    painting: np.ndarray
    style_image: np.ndarray   # the painting as the style predictors see it (256 px crop)
    bottleneck: np.ndarray    # the baked style's bottleneck, from the model's own predictor
    trained: dict             # the training's metrics.json (style strength, texture size, MLflow run)

    @property
    def transformer(self) -> keras.Model:
        return self.stylizer.get_layer("transformer")

    def baked(self, fmt: str, height: int, width: int) -> Path | None:
        """The verified baked artifact of a format at a size, or None if the export did not write it."""
        for a in self.manifest["artifacts"]:
            if a["variant"] == "baked" and a["format"] == fmt and a["path"].rsplit("_", 1)[-1].split(".")[0] == f"{height}x{width}":
                return self.verified[(a["format"], a["variant"], a["model"], a["path"])]
        return None


def load_exported(manifest_path, paths_cfg) -> ExportedModel:
    """Read an export folder's manifest, check every file against it, and load its model and painting."""
    from export.stage import training_metadata
    from training.data.datasets import load_painting, style_crop
    from training.network.stylizer import load_stylizer

    manifest = read_manifest(manifest_path)
    export_dir = Path(manifest_path).parent
    verified = verified_files(manifest, export_dir)  # nothing is loaded or run that the export did not verify
    stylizer = load_stylizer(verified["model"])
    painting = load_painting(baked_style_image(manifest, paths_cfg))
    style_image = style_crop(painting, STYLE_EMBEDDING_SIZE)
    bottleneck = keras.ops.convert_to_numpy(stylizer.get_layer("style_predictor")(style_image[None], training=False))
    trained = training_metadata(Path(manifest["model"]).parent)
    name = manifest.get("model_name") or trained.get("model") or export_dir.name
    return ExportedModel(name, manifest, export_dir, verified, stylizer, painting, style_image, bottleneck, trained)


def extra_photos(directory, heldout_names: list[str], data_cfg) -> tuple[list[str], list[np.ndarray]]:
    """`evaluate.extra_photos_dir`: every image in that folder (sorted, named by file stem), scored after
    the held-out photos. Photos no training reads widen the test beyond the few a data split holds out."""
    from training.data.datasets import DEFAULT_MAX_PIXELS, DataError, find_images, load_image

    files = find_images(directory, "evaluate.extra_photos_dir")
    if not files:
        raise DataError(f"evaluate.extra_photos_dir={directory}: no image files in this folder or below", "empty",
                        str(directory))
    names = [path.stem for path in files]
    clashes = sorted({n for n in names if names.count(n) > 1 or n in heldout_names})
    if clashes:
        raise DataError(f"evaluate.extra_photos_dir={directory}: photo name(s) {', '.join(clashes)} also name another "
                        "scored photo (a held-out one or a file of another type); rename them", "duplicate", str(directory))
    try:
        images = [load_image(path, int(data_cfg.get("min_side", 1)), int(data_cfg.get("max_pixels", DEFAULT_MAX_PIXELS)))
                  for path in files]
    except DataError as err:
        raise DataError(f"evaluate.extra_photos_dir: {err}", err.reason, err.path) from None
    return names, images


def compared_models(ev, paths_cfg) -> list[ExportedModel]:
    """The export of `evaluate.manifest` first, then each folder of `evaluate.compare`, uniquely named."""
    manifests = [Path(ev.manifest)] + [Path(folder) / MANIFEST_NAME for folder in ev.get("compare") or []]
    for path in manifests[1:]:
        if not path.is_file():
            raise StylepipeError(f"evaluate.compare: {path.parent} holds no export ({MANIFEST_NAME} missing): "
                                 "give export folders written by `python -m pipelines.export`")
    models = [load_exported(path, paths_cfg) for path in manifests]
    names = [m.name for m in models] + [BASELINE_MODEL]
    for model in models:
        if names.count(model.name) > 1:
            model.name = f"{model.name} ({model.export_dir.name})"
    return models


def add_ratios(rows: list[dict]) -> None:
    """Each host LiteRT row gets its latency as a fraction of Magenta's published model's at the same threads.

    The published file has a fixed 384x384 input: at other sizes its time is estimated in proportion to
    the pixels (`published_estimated`)."""
    published = {r["threads"]: r["median_ms"] for r in rows if r["model"] == BASELINE_MODEL and r["device"] == "host"}
    for r in rows:
        if r["device"] == "host" and r["runtime"] == "litert_xnnpack" and r["threads"] in published:
            pixels = r["height"] * r["width"] / (384 * 384)
            r["ratio_to_published"] = r["median_ms"] / (published[r["threads"]] * pixels)
            r["published_estimated"] = pixels != 1


def evaluate(cfg) -> dict:
    from evaluation import device_results as device_lib
    from export.tf_graph import constant_module, load_frozen_graph, make_module, run_frozen_graph
    from export.tflite import convert, tflite_cost
    from training.data.datasets import fit_crop, load_content, texture_image
    from training.network.vgg16 import build_loss_network
    from training.objective.objective import StylizationObjective
    from training.schema import check_config
    from training.tracking import mlflow_run
    from training.weights.magenta_import import (PUBLISHED_PREDICTOR_INT8, PUBLISHED_TRANSFER_FP16, published_predictor,
                                                 run_tflite, verified_path)

    check_config(cfg, "evaluate", allow_other_keys=True)
    ev = cfg.evaluate
    external = device_lib.load(ev.device_results) if ev.get("device_results") else []  # validate before any work
    content = load_content(cfg.data)
    photos = content.heldout_full[: int(ev.quality_photos)]
    photo_names = content.heldout_names[: int(ev.quality_photos)]
    heldout_count = len(photos)
    if ev.get("extra_photos_dir"):  # read before the exports are loaded and verified: a bad folder fails at once
        extra_names, extra = extra_photos(ev.extra_photos_dir, photo_names, cfg.data)
        photos, photo_names = [*photos, *extra], [*photo_names, *extra_names]
    models = compared_models(ev, cfg.paths)
    main = models[0]
    published_dir = Path(cfg.paths.published_dir)
    published_predictor_file = verified_path(published_dir, PUBLISHED_PREDICTOR_INT8)  # the pinned sha256
    published_transfer_file = verified_path(published_dir, PUBLISHED_TRANSFER_FP16)
    published_bottleneck = run_tflite(published_predictor_file, [main.style_image[None]])

    latency, skipped, costs = [], [], []

    def record(times, **fields):
        row = summarize(times, **fields).as_dict()
        log.info("%-22s %-30s %-9s %-8s t=%-4s %4dx%-4d median %7.1f ms  p90 %7.1f ms", row["model"], row["format"],
                 row["variant"], row["runtime"], row["threads"], row["height"], row["width"], row["median_ms"], row["p90_ms"])
        latency.append(row)

    def measure(call, **fields):
        record(time_calls(call, int(ev.warmup), int(ev.runs)), **fields)

    for height, width in ev.sizes:
        x = fit_crop(photos[0], height, width)[None]
        feeds = {"content_image": x}
        # Every model's baked TFLite fp16 and the published model, alternating one run each per round.
        fp16 = {m.name: (tflite_runner, m.baked("tflite_fp16", height, width), "serve", feeds) for m in models
                if m.baked("tflite_fp16", height, width)}
        if (height, width) == (384, 384):  # the published transfer model's only size: the baseline row
            fp16[BASELINE_MODEL] = (tflite_runner, published_transfer_file, None,
                                    {"content_image": x, "style_bottleneck": published_bottleneck})
        else:
            skipped.append({"format": f"{PUBLISHED_NAME}_tflite_fp16", "runtime": "litert_xnnpack", "height": height,
                            "width": width, "reason": "Magenta's published transfer model has a fixed 384x384 input"})
        for threads in ev.threads:
            calls = {name: make(path, signature, inputs, threads) for name, (make, path, signature, inputs) in fp16.items()}
            for name, times in time_alternating(calls, int(ev.warmup), int(ev.runs)).items():
                published = name == BASELINE_MODEL
                record(times, model=name, format=f"{PUBLISHED_NAME}_tflite_fp16" if published else "tflite_fp16",
                       variant="arbitrary" if published else "baked", runtime="litert_xnnpack", threads=threads,
                       height=height, width=width)
        for m in models:
            fp32 = convert(constant_module(make_module("baked", m.stylizer, height, width, m.bottleneck)),
                           "serve", fp16=False)
            cost = tflite_cost(fp32)
            costs.append({"model": m.name, "height": height, "width": width, "params": int(m.transformer.count_params()),
                          "gflop": cost.flops / 1e9, "activation_mb": cost.activation_bytes / 1e6})
            for threads in ev.threads:
                measure(tflite_runner(fp32, "serve", feeds, threads), model=m.name, format="tflite_fp32", variant="baked",
                        runtime="litert_xnnpack", threads=threads, height=height, width=width)
            if m.baked("frozen_graph", height, width):
                graph_def = load_frozen_graph(m.baked("frozen_graph", height, width))
                measure(lambda: run_frozen_graph(graph_def, feeds, ["stylized_image"]), model=m.name, format="frozen_graph",
                        variant="baked", runtime="tensorflow", threads=None, height=height, width=width)
            measure(lambda: m.transformer([x, m.bottleneck], training=False), model=m.name, format="keras",
                    variant="arbitrary", runtime=f"keras_{keras.backend.backend()}", threads=None, height=height, width=width)
            coreml_path = m.baked("coreml", height, width)
            if coreml_path and platform.system() == "Darwin":
                import coremltools as ct
                from PIL import Image

                pixels = {"content_image": Image.fromarray((x[0] * 255).round().astype(np.uint8))}
                for units in ("CPU_ONLY", "CPU_AND_GPU", "ALL"):
                    coreml_model = ct.models.MLModel(str(coreml_path), compute_units=getattr(ct.ComputeUnit, units))
                    measure(lambda: coreml_model.predict(pixels), model=m.name, format="coreml", variant="baked",
                            runtime=f"coreml_{units.lower()}", threads=None, height=height, width=width)
            elif coreml_path:
                skipped.append({"model": m.name, "format": "coreml", "runtime": "coreml", "height": height, "width": width,
                                "reason": "Core ML runs only on macOS (this host is " + platform.system() + ")"})
    add_ratios(latency)

    # Quality at 384x384 on held-out photos: each format's output vs Keras, and the training losses.
    qh, qw = (384, 384)
    # Scored by the training objective's own loss code (as training scores its held-out photos).
    # With the style strength and texture size the model was trained with (its training metrics).
    loss_network, _ = build_loss_network(cfg.loss_network.weights, cfg.paths.cache_dir)
    objective = StylizationObjective.from_config(main.stylizer, loss_network, cfg.loss_network,
                                                 main.trained.get("style_strength", 1.0))
    style_targets = objective.style_targets([texture_image(main.painting, int(main.trained.get("texture_size", 256)))])

    def loss_terms(outputs, inputs):
        terms = objective.loss_terms(np.asarray(outputs, np.float32), inputs, None, style_targets)
        return {name: float(value) for name, value in terms.items()}

    def keras_output(m: ExportedModel, inputs):
        return keras.ops.convert_to_numpy(m.transformer([inputs, np.repeat(m.bottleneck, len(inputs), 0)], training=False))

    inputs = np.stack([fit_crop(p, qh, qw) for p in photos])
    outputs = {"keras": keras_output(main, inputs)}
    if main.baked("tflite_fp16", qh, qw):
        outputs["tflite_fp16"] = np.concatenate([tflite_runner_output(main.baked("tflite_fp16", qh, qw), x[None]) for x in inputs])
    if main.baked("frozen_graph", qh, qw):
        graph_def = load_frozen_graph(main.baked("frozen_graph", qh, qw))
        outputs["frozen_graph"] = np.concatenate([run_frozen_graph(graph_def, {"content_image": x[None]}, ["stylized_image"])
                                                  ["stylized_image"] for x in inputs])
    outputs[PUBLISHED_NAME] = np.concatenate([run_tflite(published_transfer_file, [x[None], published_bottleneck])
                                              for x in inputs])
    compared = {m.name: keras_output(m, inputs) for m in models[1:]}
    quality = {"style": main.manifest["style"], "size": [qh, qw], "photos": len(inputs), "heldout_photos": heldout_count,
               "extra_photos": len(inputs) - heldout_count, "formats": {}, "models": {}}
    for name, out in outputs.items():
        quality["formats"][name] = {**loss_terms(out, inputs),
                                    "psnr_db_vs_keras": None if name == PUBLISHED_NAME else psnr_db(out, outputs["keras"])}
    quality["style_loss_ours_vs_published"] = {
        "ours": quality["formats"]["keras"]["style_loss"], "published": quality["formats"][PUBLISHED_NAME]["style_loss"]}
    # Measures independent of the training loss (evaluation/quality.py), the photo itself as the reference.
    predictor = published_predictor(published_dir, cfg.paths.cache_dir)
    embed = (predictor_style_embedder(predictor) if ev.style_embedder == "float"
             else published_style_embedder(published_predictor_file))
    scored = {IDENTITY_NAME: inputs, **outputs}
    features = predictor_feature_maps(predictor)
    measures = (*quality_lib.MEASURES, quality_lib.STATISTICS_MEASURE)
    independent = {name: quality_lib.score(embed, out, inputs, main.style_image, features) for name, out in scored.items()}
    for name, scores in independent.items():
        entry = {m: scores[m] for m in measures}
        entry["per_photo"] = dict(zip(photo_names, scores["per_photo"]))
        if name == IDENTITY_NAME:
            quality[IDENTITY_NAME] = entry
        else:
            quality["formats"][name].update(entry)
    # A row per model: the published model, this export's and each compared export's (their Keras outputs).
    by_model = {BASELINE_MODEL: independent[PUBLISHED_NAME], main.name: independent["keras"]}
    by_model.update({name: quality_lib.score(embed, out, inputs, main.style_image, features) for name, out in compared.items()})
    quality["models"] = {name: {m: scores[m] for m in measures} for name, scores in by_model.items()}
    quality_summary = {f"{name}.{m}": round(scores[m], 4) for name, scores in independent.items() for m in measures}
    quality_summary.update({f"model.{name}.{m}": round(scores[m], 4) for name, scores in by_model.items() for m in measures})
    columns = {"photo": (inputs, independent[IDENTITY_NAME]), "Magenta published": (outputs[PUBLISHED_NAME], by_model[BASELINE_MODEL]),
               f"{main.name} (keras)": (outputs["keras"], by_model[main.name]),
               **{f"{name} (keras)": (out, by_model[name]) for name, out in compared.items()}}
    side_by_side = {photo: _side_by_side(photo, {title: images[i] for title, (images, _) in columns.items()},
                                         {title: scores["per_photo"][i] for title, (_, scores) in columns.items()})
                    for i, photo in enumerate(photo_names)}
    latency.extend(external)

    metrics = {"latency": latency, "skipped": skipped, "quality": quality, "models": costs,
               "host": {"machine": platform.machine(), "system": platform.system(), "processor": platform.processor()}}
    out_dir = Path(ev.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = _latency_chart(latency)
    grid = _grid([(f"photo {i}", [inputs[i]] + [outputs[k][i] for k in outputs] + [out[i] for out in compared.values()])
                  for i in range(len(inputs))], ["input", *outputs, *compared])
    report = comparison_report(latency, costs, quality["models"], quality[IDENTITY_NAME])
    parent = main.trained.get("mlflow_run_id")
    run_name = cfg.run_name or f"evaluate-{main.manifest['style']}-{main.name}"
    tags = {"stage": "evaluate", "style": main.manifest["style"], "model": main.name}
    with mlflow_run(cfg, run_name, tags=tags, parent_run_id=parent) as run:
        import mlflow

        metrics["mlflow_run_id"] = run.info.run_id
        for row in latency:
            mlflow.log_metric(f"latency_ms.{_row_key(row)}", row["median_ms"])
        for name, q in quality["formats"].items():
            mlflow.log_metrics({f"style_loss.{name}": q["style_loss"], f"content_loss.{name}": q["content_loss"]})
        for name, scores in independent.items():
            mlflow.log_metrics({f"{m}.{name}": scores[m] for m in measures})
        for name, scores in by_model.items():
            mlflow.log_metrics({f"{m}.model.{_metric_name(name)}": scores[m] for m in measures})
        atomic_write_bytes(out_dir / "latency.png", chart)
        atomic_write_bytes(out_dir / "stylized_grid.png", grid)
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
        atomic_write_text(out_dir / "report.md", report)
        # Flat files for `dvc metrics show` and `dvc plots show`.
        atomic_write_text(out_dir / "latency_summary.json", json.dumps({_row_key(r): round(r["median_ms"], 2) for r in latency}, indent=2))
        atomic_write_text(out_dir / "latency_plot.json", json.dumps(
            [{"model": _row_key(r), "median_ms": round(r["median_ms"], 2)} for r in latency], indent=2))
        atomic_write_text(out_dir / "quality_summary.json", json.dumps(quality_summary, indent=2))
        side_dir = out_dir / SIDE_BY_SIDE_DIR
        side_dir.mkdir(exist_ok=True)
        for stale in side_dir.glob("*.png"):  # the folder holds this run's photos only
            stale.unlink()
        for name, png in side_by_side.items():
            atomic_write_bytes(side_dir / f"{name}.png", png)
        for name in ("latency.png", "stylized_grid.png", "metrics.json", "report.md"):
            mlflow.log_artifact(str(out_dir / name))
        mlflow.log_artifacts(str(side_dir), artifact_path=SIDE_BY_SIDE_DIR)
    return metrics


def comparison_report(latency: list[dict], costs: list[dict], quality: dict[str, dict], identity: dict) -> str:
    """Markdown tables: each model's LiteRT latency against the published model's, its cost per frame, and
    its quality measures (the photo itself as the reference row)."""
    cost = {(c["model"], c["height"], c["width"]): c for c in costs}
    lines = ["| model | format | size | threads | median ms | / published | GFLOP | activation MB |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in latency:
        if r["device"] != "host" or r["runtime"] != "litert_xnnpack" or r["format"] == "tflite_fp32":
            continue
        c = cost.get((r["model"], r["height"], r["width"]))
        ratio = r.get("ratio_to_published")
        lines.append(f"| {r['model']} | {r['format']} | {r['height']}x{r['width']} | {r['threads']} | {r['median_ms']:.1f} | "
                     + (f"{'~' if r['published_estimated'] else ''}{ratio:.2f}" if ratio is not None else "-") + " | "
                     + (f"{c['gflop']:.2f} | {c['activation_mb']:.0f} |" if c else "- | - |"))
    lines += ["", "~: against the published model's 384x384 time scaled by the pixels (its file has a fixed 384x384 input).",
              "", "| model | style distance (relative) | style statistics distance | palette distance | structure similarity |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, s in {"photo (identity)": identity, **quality}.items():
        lines.append(f"| {name} | {s['style_distance_relative']:.3f} | {s[quality_lib.STATISTICS_MEASURE]:.4f} | "
                     f"{s['palette_distance']:.3f} | {s['structure_similarity']:.3f} |")
    return "\n".join(lines) + "\n"


def _metric_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def _row_key(row: dict) -> str:
    key = f"{row['format']}.{row['runtime']}.t{row['threads'] or 0}.{row['height']}x{row['width']}"
    return (key if row["device"] == "host" else f"{row['device']}.{key}").replace(" ", "_")


def tflite_runner_output(path, x: np.ndarray) -> np.ndarray:
    from export.tflite import run_signature

    return run_signature(path, "serve", {"content_image": x})["stylized_image"]
