"""`evaluate(cfg) -> metrics`: latency and quality of every exported model on this host.

Reads `outputs/export/manifest.json`; writes `metrics.json`, `latency.png` (chart),
`stylized_grid.png`, `quality_summary.json` (the measures of `evaluation/quality.py`, which do
not use the training loss) and `side_by_side/<photo>.png`; logs all of it to MLflow under the
training run. Runtimes that this host lacks are listed under `skipped` with the reason.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

import keras
import numpy as np

from evaluation import quality as quality_lib
from evaluation.latency import summarize, time_calls
from export.manifest import REEXPORT, ManifestError, read_manifest, verified_files
from training.errors import StylepipeError
from training.fileio import atomic_write_bytes, atomic_write_text
from training.weights.parity import psnr_db
from training.weights.tflite_runner import tflite_runner

log = logging.getLogger("stylepipe.evaluate")
PUBLISHED_NAME = "magenta_published"
IDENTITY_NAME = "identity"  # the held-out photo itself, scored as if it were a stylized output
SIDE_BY_SIDE_DIR = "side_by_side"
STYLE_EMBEDDING_SIZE = 256  # the published style predictor's input
# Side-by-side columns: title -> entry of the scored outputs (the exported formats match Keras: see the grid).
SIDE_BY_SIDE_COLUMNS = {"photo": IDENTITY_NAME, "Magenta published": PUBLISHED_NAME, "ours (keras)": "keras"}


def conv_flops(net, height: int, width: int) -> int:
    """Multiply-adds x 2 of every conv of a baked network at an input size."""
    flops, h, w = 0, height, width
    for conv in net.convs():
        flops += conv.flops(h, w)
        h, w = conv.output_hw(h, w)
    return flops


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


def published_style_embedder(predictor_path):
    """Magenta's published style predictor as a `quality` embedder: images -> (N, 100) bottlenecks.

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


def published_feature_maps(published_dir, cache_dir):
    """The frozen ImageNet MobileNetV2 of Magenta's published predictor as a `quality` feature extractor:
    an image, cropped as style images are, -> its maps at STATISTICS_LAYERS (float32, Keras)."""
    from training.weights.magenta_import import published_predictor

    return predictor_feature_maps(published_predictor(published_dir, cache_dir))


def predictor_feature_maps(predictor):
    """published_feature_maps for a style predictor already built with the published weights."""
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


def evaluate(cfg) -> dict:
    from evaluation import device_results as device_lib
    from export.baked import bake
    from export.tf_graph import constant_module, load_frozen_graph, make_module, run_frozen_graph
    from export.tflite import convert
    from training.data.datasets import fit_crop, load_content, load_painting, style_crop
    from training.weights.magenta_import import PUBLISHED_PREDICTOR_INT8, PUBLISHED_TRANSFER_FP16, run_tflite, verified_path
    from training.network.stylizer import load_stylizer
    from training.objective.objective import StylizationObjective
    from training.tracking import mlflow_run
    from training.network.vgg16 import build_loss_network

    ev = cfg.evaluate
    external = device_lib.load(ev.device_results) if ev.get("device_results") else []  # validate before any work
    manifest = read_manifest(ev.manifest)
    export_dir = Path(ev.manifest).parent
    verified = verified_files(manifest, export_dir)  # nothing is loaded or run that the export did not verify
    stylizer = load_stylizer(verified["model"])
    transformer = stylizer.get_layer("transformer")
    painting = load_painting(baked_style_image(manifest, cfg.paths))
    style_image = style_crop(painting, 256)
    bottleneck = keras.ops.convert_to_numpy(stylizer.get_layer("style_predictor")(style_image[None], training=False))
    content = load_content(cfg.data)
    photos = content.heldout_full[: int(ev.quality_photos)]
    photo_names = content.heldout_names[: int(ev.quality_photos)]
    baked = {(a["format"], a["path"].rsplit("_", 1)[-1].split(".")[0]): a for a in manifest["artifacts"]
             if a["variant"] == "baked"}
    published_dir = Path(cfg.paths.published_dir)
    published_predictor_file = verified_path(published_dir, PUBLISHED_PREDICTOR_INT8)  # the pinned sha256
    published_transfer_file = verified_path(published_dir, PUBLISHED_TRANSFER_FP16)

    latency, skipped = [], []

    def measure(call, **fields):
        row = summarize(time_calls(call, int(ev.warmup), int(ev.runs)), **fields).as_dict()
        log.info("%-30s %-9s %-8s t=%-4s %4dx%-4d median %7.1f ms  p90 %7.1f ms", row["format"], row["variant"],
                 row["runtime"], row["threads"], row["height"], row["width"], row["median_ms"], row["p90_ms"])
        latency.append(row)

    for height, width in ev.sizes:
        size = f"{height}x{width}"
        x = fit_crop(photos[0], height, width)[None]
        feeds = {"content_image": x}
        if ("tflite_fp16", size) in baked:
            for threads in ev.threads:
                measure(tflite_runner(export_dir / baked[("tflite_fp16", size)]["path"], "serve", feeds, threads),
                        format="tflite_fp16", variant="baked", runtime="litert_xnnpack", threads=threads, height=height, width=width)
        fp32 = convert(constant_module(make_module("baked", stylizer, height, width, bottleneck)), "serve", fp16=False)
        for threads in ev.threads:
            measure(tflite_runner(fp32, "serve", feeds, threads), format="tflite_fp32", variant="baked",
                    runtime="litert_xnnpack", threads=threads, height=height, width=width)
        if ("frozen_graph", size) in baked:
            graph_def = load_frozen_graph(export_dir / baked[("frozen_graph", size)]["path"])
            measure(lambda: run_frozen_graph(graph_def, feeds, ["stylized_image"]), format="frozen_graph", variant="baked",
                    runtime="tensorflow", threads=None, height=height, width=width)
        measure(lambda: transformer([x, bottleneck], training=False), format="keras", variant="arbitrary",
                runtime=f"keras_{keras.backend.backend()}", threads=None, height=height, width=width)
        if ("coreml", size) in baked:
            if platform.system() == "Darwin":
                import coremltools as ct
                from PIL import Image

                pixels = {"content_image": Image.fromarray((x[0] * 255).round().astype(np.uint8))}
                for units in ("CPU_ONLY", "CPU_AND_GPU", "ALL"):
                    model = ct.models.MLModel(str(export_dir / baked[("coreml", size)]["path"]),
                                              compute_units=getattr(ct.ComputeUnit, units))
                    measure(lambda: model.predict(pixels), format="coreml", variant="baked",
                            runtime=f"coreml_{units.lower()}", threads=None, height=height, width=width)
            else:
                skipped.append({"format": "coreml", "runtime": "coreml", "height": height, "width": width,
                                "reason": "Core ML runs only on macOS (this host is " + platform.system() + ")"})
        if (height, width) == (384, 384):  # the published transfer model's only size: the baseline row
            published_bottleneck = run_tflite(published_predictor_file, [style_image[None]])
            for threads in ev.threads:
                measure(tflite_runner(published_transfer_file, None,
                                      {"content_image": x, "style_bottleneck": published_bottleneck}, threads),
                        format=f"{PUBLISHED_NAME}_tflite_fp16", variant="arbitrary", runtime="litert_xnnpack",
                        threads=threads, height=height, width=width)
        else:
            skipped.append({"format": f"{PUBLISHED_NAME}_tflite_fp16", "runtime": "litert_xnnpack", "height": height,
                            "width": width, "reason": "Magenta's published transfer model has a fixed 384x384 input"})

    # Quality at 384x384 on held-out photos: each format's output vs Keras, and the training losses.
    qh, qw = (384, 384)
    # Scored by the training objective's own loss code (as training scores its held-out photos).
    # With the style strength and texture size the model was trained with (its training metrics).
    from export.stage import training_metadata
    from training.data.datasets import texture_image

    trained = training_metadata(Path(manifest["model"]).parent)
    loss_network, _ = build_loss_network(cfg.loss_network.weights, cfg.paths.cache_dir)
    objective = StylizationObjective.from_config(stylizer, loss_network, cfg.loss_network, trained.get("style_strength", 1.0))
    style_targets = objective.style_targets([texture_image(painting, int(trained.get("texture_size", 256)))])

    def loss_terms(outputs, inputs):
        terms = objective.loss_terms(np.asarray(outputs, np.float32), inputs, None, style_targets)
        return {name: float(value) for name, value in terms.items()}

    inputs = np.stack([fit_crop(p, qh, qw) for p in photos])
    outputs = {"keras": keras.ops.convert_to_numpy(transformer([inputs, np.repeat(bottleneck, len(inputs), 0)], training=False))}
    size = f"{qh}x{qw}"
    if ("tflite_fp16", size) in baked:
        path = export_dir / baked[("tflite_fp16", size)]["path"]
        outputs["tflite_fp16"] = np.concatenate([tflite_runner_output(path, x[None]) for x in inputs])
    if ("frozen_graph", size) in baked:
        graph_def = load_frozen_graph(export_dir / baked[("frozen_graph", size)]["path"])
        outputs["frozen_graph"] = np.concatenate([run_frozen_graph(graph_def, {"content_image": x[None]}, ["stylized_image"])
                                                  ["stylized_image"] for x in inputs])
    published_bottleneck = run_tflite(published_predictor_file, [style_image[None]])
    outputs[PUBLISHED_NAME] = np.concatenate([run_tflite(published_transfer_file, [x[None], published_bottleneck])
                                              for x in inputs])
    quality = {"style": manifest["style"], "size": [qh, qw], "photos": len(inputs), "formats": {}}
    for name, out in outputs.items():
        quality["formats"][name] = {**loss_terms(out, inputs),
                                    "psnr_db_vs_keras": None if name == PUBLISHED_NAME else psnr_db(out, outputs["keras"])}
    quality["style_loss_ours_vs_published"] = {
        "ours": quality["formats"]["keras"]["style_loss"], "published": quality["formats"][PUBLISHED_NAME]["style_loss"]}
    # Measures independent of the training loss (evaluation/quality.py), the photo itself as the reference.
    embed = published_style_embedder(published_predictor_file)
    scored = {IDENTITY_NAME: inputs, **outputs}
    features = published_feature_maps(published_dir, cfg.paths.cache_dir)
    measures = (*quality_lib.MEASURES, quality_lib.STATISTICS_MEASURE)
    independent = {name: quality_lib.score(embed, out, inputs, style_image, features) for name, out in scored.items()}
    for name, scores in independent.items():
        entry = {m: scores[m] for m in measures}
        entry["per_photo"] = dict(zip(photo_names, scores["per_photo"]))
        if name == IDENTITY_NAME:
            quality[IDENTITY_NAME] = entry
        else:
            quality["formats"][name].update(entry)
    quality_summary = {f"{name}.{m}": round(scores[m], 4) for name, scores in independent.items() for m in measures}
    side_by_side = {photo: _side_by_side(photo, {title: scored[key][i] for title, key in SIDE_BY_SIDE_COLUMNS.items()},
                                         {title: independent[key]["per_photo"][i] for title, key in SIDE_BY_SIDE_COLUMNS.items()})
                    for i, photo in enumerate(photo_names)}

    net = bake(transformer, bottleneck)
    models = [{"path": a["path"], "format": a["format"], "variant": a["variant"], "params": int(transformer.count_params()),
               "flops": conv_flops(net, *[int(d) for d in a["path"].rsplit("_", 1)[-1].split(".")[0].split("x")]),
               "bytes": a.get("bytes")} for a in manifest["artifacts"] if a["model"] == "transfer" and a["variant"] == "baked"]
    latency.extend(external)

    metrics = {"latency": latency, "skipped": skipped, "quality": quality, "models": models,
               "host": {"machine": platform.machine(), "system": platform.system(), "processor": platform.processor()}}
    out_dir = Path(ev.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = _latency_chart(latency)
    grid = _grid([(f"photo {i}", [inputs[i]] + [outputs[k][i] for k in outputs]) for i in range(len(inputs))],
                 ["input", *outputs])
    parent = trained.get("mlflow_run_id")
    model_name = manifest.get("model_name") or Path(manifest["model"]).parent.name
    run_name = cfg.run_name or f"evaluate-{manifest['style']}-{model_name}"
    tags = {"stage": "evaluate", "style": manifest["style"], "model": model_name}
    with mlflow_run(cfg, run_name, tags=tags, parent_run_id=parent) as run:
        import mlflow

        metrics["mlflow_run_id"] = run.info.run_id
        for row in latency:
            mlflow.log_metric(f"latency_ms.{_row_key(row)}", row["median_ms"])
        for name, q in quality["formats"].items():
            mlflow.log_metrics({f"style_loss.{name}": q["style_loss"], f"content_loss.{name}": q["content_loss"]})
        for name, scores in independent.items():
            mlflow.log_metrics({f"{m}.{name}": scores[m] for m in measures})
        atomic_write_bytes(out_dir / "latency.png", chart)
        atomic_write_bytes(out_dir / "stylized_grid.png", grid)
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
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
        for name in ("latency.png", "stylized_grid.png", "metrics.json"):
            mlflow.log_artifact(str(out_dir / name))
        mlflow.log_artifacts(str(side_dir), artifact_path=SIDE_BY_SIDE_DIR)
    return metrics


def _row_key(row: dict) -> str:
    key = f"{row['format']}.{row['runtime']}.t{row['threads'] or 0}.{row['height']}x{row['width']}"
    return (key if row["device"] == "host" else f"{row['device']}.{key}").replace(" ", "_")


def tflite_runner_output(path, x: np.ndarray) -> np.ndarray:
    from export.tflite import run_signature

    return run_signature(path, "serve", {"content_image": x})["stylized_image"]
