"""Import Magenta's published mobile model (TFLite) into the Keras network, by tensor name.

- transfer network (fp16 file): every conv by its Magenta scope; the contract's batch norm
  arrives folded into conv weights + bias, held by our batch norm layer as an identity
  (moving mean 0, moving variance 1 - eps) with beta = the folded bias;
- style predictor (int8 file, dequantised): MobileNetV2 from slim names to keras.applications
  names, batch norm folded the same way, and the `mobilenet_conv/Conv` bottleneck.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from training.errors import StylepipeError
from training.network.layers import magenta_scope
from training.weights.parity import cosine, psnr_db
from training.pretrained import sha256_of
from training.weights.tflite_runner import tflite_runner
from training.weights.tflite_weights import depthwise_to_keras, ohwi_to_hwio, read_constant_tensors


class MagentaImportError(StylepipeError):
    """A published file is not the one expected, or does not fit the network."""


@dataclass(frozen=True)
class PublishedFile:
    name: str
    sha256: str


PUBLISHED_TRANSFER_FP16 = PublishedFile(
    "style_transfer_f16_384.tflite", "c60cff7395544eda1f0915d6dddaedd8ed868cefe8ec6c5ed220ba801f120303")
PUBLISHED_TRANSFER_INT8 = PublishedFile(
    "style_transfer_quantized_384.tflite", "1972f7d438b6e9ff326c466db1a8005a8a0efa0274886bbd52f91dc8be2f4f04")
PUBLISHED_PREDICTOR_INT8 = PublishedFile(
    "style_predict_quantized_256.tflite", "203dbd6a09da1091ab7e48e8b101aef8c2d81438ad047a5cb150747a977134c1")


def verified_path(directory, published: PublishedFile) -> Path:
    path = Path(directory) / published.name
    if not path.is_file():
        raise MagentaImportError(f"{path}: missing (expected Magenta's published {published.name})")
    if (got := sha256_of(path)) != published.sha256:
        raise MagentaImportError(f"{path}: sha256 {got} differs from the published file's {published.sha256}")
    return path


def _identity_batch_norm(bn: keras.layers.BatchNormalization, folded_bias: np.ndarray) -> None:
    """Hold a bias in a batch norm layer without changing the maths: y = x + bias (inference)."""
    values = {"gamma": np.ones_like(folded_bias), "beta": folded_bias,
              "moving_mean": np.zeros_like(folded_bias), "moving_variance": np.full_like(folded_bias, 1.0 - bn.epsilon)}
    bn.set_weights([values[w.name] for w in bn.weights])


def _check_tensor_set(tensors: dict, used: set[str], ignorable: set[str], path) -> None:
    missing = sorted(used - set(tensors))
    extra = sorted(set(tensors) - used - ignorable)
    if missing or extra:
        raise MagentaImportError(
            f"{path}: tensor set does not match the network; missing {len(missing)} of {len(used)}: "
            f"{missing[:8] or 'none'}; unexpected {len(extra)}: {extra[:8] or 'none'}")


def import_transfer(transformer: keras.Model, path) -> list[str]:
    """Load the published transfer weights into `transformer` (alpha 0.25); returns tensor names used."""
    tensors = read_constant_tensors(path)
    used: set[str] = set()
    ignorable: set[str] = set()
    convs = [l for l in transformer.layers if isinstance(l, keras.layers.Conv2D)]
    plan = []
    for conv in convs:
        scope = magenta_scope(conv)
        weights, bias = f"{scope}/weights", f"{scope}/Conv2D_bias"
        used.add(weights)
        if conv.use_bias:
            used.add(bias)
        elif "/contract/" in scope:
            used.add(bias)  # batch norm folded into a bias
        else:
            ignorable.add(bias)  # a zero bias before an instance norm, which would cancel it anyway
        plan.append((conv, scope, weights, bias))
    _check_tensor_set(tensors, used, ignorable, path)
    for conv, scope, weights, bias in plan:
        kernel = ohwi_to_hwio(tensors[weights])
        if tuple(conv.kernel.shape) != kernel.shape:
            raise MagentaImportError(f"{path}: {weights} has shape {kernel.shape}, the network's is {tuple(conv.kernel.shape)}")
        if conv.use_bias:
            conv.set_weights([kernel, tensors[bias]])
            continue
        conv.set_weights([kernel])
        if "/contract/" in scope:
            _identity_batch_norm(transformer.get_layer(conv.name + ".BatchNorm"), tensors[bias])
        elif bias in tensors and np.abs(tensors[bias]).max() > 1e-6:
            raise MagentaImportError(f"{path}: {bias} is not zero; the network has no bias there")
    return sorted(used)


def mobilenet_v2_names() -> list[tuple[str, str, str]]:
    """(slim scope, keras conv layer, keras batch norm layer) for every MobileNetV2 conv."""
    names = [("MobilenetV2/Conv", "Conv1", "bn_Conv1"),
             ("MobilenetV2/expanded_conv/depthwise", "expanded_conv_depthwise", "expanded_conv_depthwise_BN"),
             ("MobilenetV2/expanded_conv/project", "expanded_conv_project", "expanded_conv_project_BN")]
    for i in range(1, 17):
        for part in ("expand", "depthwise", "project"):
            names.append((f"MobilenetV2/expanded_conv_{i}/{part}", f"block_{i}_{part}", f"block_{i}_{part}_BN"))
    names.append(("MobilenetV2/Conv_1", "Conv_1", "Conv_1_bn"))
    return names


def _find_layer(model: keras.Model, name: str):
    for layer in model._flatten_layers(include_self=False):
        if layer.name == name:
            return layer
    raise MagentaImportError(f"the style predictor has no layer {name!r} (is backbone=mobilenet_v2?)")


def import_predictor(predictor: keras.Model, path) -> list[str]:
    """Load the published int8 MobileNetV2 style predictor (dequantised) into `predictor`."""
    tensors = read_constant_tensors(path)
    plan, used = [], set()
    for scope, conv_name, bn_name in mobilenet_v2_names():
        depthwise = scope.endswith("/depthwise")
        weights = f"{scope}/depthwise_weights" if depthwise else f"{scope}/weights"
        bias = f"{scope}/depthwise_bias" if depthwise else f"{scope}/Conv2D_bias"
        used |= {weights, bias}
        plan.append((conv_name, bn_name, weights, bias, depthwise))
    used |= {"mobilenet_conv/Conv/weights", "mobilenet_conv/Conv/Conv2D_bias"}
    _check_tensor_set(tensors, used, set(), path)
    for conv_name, bn_name, weights, bias, depthwise in plan:
        kernel = (depthwise_to_keras if depthwise else ohwi_to_hwio)(tensors[weights])
        conv = _find_layer(predictor, conv_name)
        if tuple(conv.kernel.shape) != kernel.shape:
            raise MagentaImportError(f"{path}: {weights} has shape {kernel.shape}, {conv_name} has {tuple(conv.kernel.shape)}")
        conv.set_weights([kernel])
        _identity_batch_norm(_find_layer(predictor, bn_name), tensors[bias])
    bottleneck = predictor.get_layer("mobilenet_conv.Conv")
    bottleneck.set_weights([ohwi_to_hwio(tensors["mobilenet_conv/Conv/weights"]), tensors["mobilenet_conv/Conv/Conv2D_bias"]])
    return sorted(used)


# Backbone config of Magenta's distilled predictor: MobileNetV2 fed images in [0, 1], frozen.
PUBLISHED_BACKBONE = {"name": "mobilenet_v2", "weights": None, "trainable": False, "input_range": [0.0, 1.0]}
PUBLISHED_ALPHA = 0.25


def published_predictor(published_dir, cache_dir) -> keras.Model:
    """Magenta's published style predictor on its own (frozen MobileNetV2 + bottleneck), weights imported."""
    from omegaconf import OmegaConf

    from training.network.backbones import build_backbone
    from training.network.stylizer import build_style_predictor

    predictor = build_style_predictor(build_backbone(OmegaConf.create(PUBLISHED_BACKBONE), cache_dir), "mobilenet_v2")
    import_predictor(predictor, verified_path(published_dir, PUBLISHED_PREDICTOR_INT8))
    return predictor


def load_published_into(stylizer: keras.Model, published_dir) -> dict[str, int]:
    """Import both published files into a stylizer built with alpha 0.25 and PUBLISHED_BACKBONE."""
    transfer = import_transfer(stylizer.get_layer("transformer"), verified_path(published_dir, PUBLISHED_TRANSFER_FP16))
    predictor = import_predictor(stylizer.get_layer("style_predictor"), verified_path(published_dir, PUBLISHED_PREDICTOR_INT8))
    return {"transfer_tensors": len(transfer), "predictor_tensors": len(predictor)}


def published_stylizer(published_dir, model_path=None) -> keras.Model:
    """Magenta's published stylizer (alpha 0.25): the import stage's model file `model_path` when it
    exists, otherwise a freshly built stylizer with the published TFLite files in `published_dir`
    loaded. Cached: callers share one model per pair of paths."""
    return _published_stylizer(str(published_dir), None if model_path is None else str(model_path))


@functools.lru_cache(maxsize=2)
def _published_stylizer(published_dir: str, model_path: str | None) -> keras.Model:
    if model_path is not None and Path(model_path).is_file():
        from training.network.stylizer import load_stylizer

        return load_stylizer(model_path)
    import tempfile

    from omegaconf import OmegaConf

    from training.network.stylizer import build_stylizer

    model_cfg = OmegaConf.create({"name": "magenta_lite", "alpha": PUBLISHED_ALPHA, "freeze_batch_norm": True})
    stylizer = build_stylizer(model_cfg, OmegaConf.create(PUBLISHED_BACKBONE), tempfile.gettempdir())
    load_published_into(stylizer, published_dir)
    return stylizer


def run_tflite(path, inputs: list[np.ndarray], num_threads: int = 2) -> np.ndarray:
    """Run a TFLite model with LiteRT once; inputs are matched to the model's inputs by shape."""
    call = tflite_runner(path, None, {str(i): x for i, x in enumerate(inputs)}, num_threads)
    return call()


def measure_parity(stylizer: keras.Model, published_dir, photos: dict[str, np.ndarray], styles: dict[str, np.ndarray]) -> dict:
    """Keras vs published LiteRT: predictor cosine per style, transfer PSNR per photo.

    photos: 384x384 content images; styles: 256x256 style images (float32 [0, 1]). Each
    photo is stylized with one style (cycling), using the published predictor's bottleneck
    for both models so the transfer networks are compared alone.
    """
    transformer = stylizer.get_layer("transformer")
    predictor = stylizer.get_layer("style_predictor")
    predictor_path = Path(published_dir) / PUBLISHED_PREDICTOR_INT8.name
    transfer_path = Path(published_dir) / PUBLISHED_TRANSFER_FP16.name
    bottlenecks, predictor_rows = {}, []
    for name, style in styles.items():
        published = run_tflite(predictor_path, [style[None]])
        ours = keras.ops.convert_to_numpy(predictor(style[None], training=False))
        bottlenecks[name] = published
        predictor_rows.append({"style": name, "cosine": cosine(published, ours)})
    transfer_rows = []
    style_names = list(styles)
    for i, (name, photo) in enumerate(photos.items()):
        style_name = style_names[i % len(style_names)]
        published = run_tflite(transfer_path, [photo[None], bottlenecks[style_name]])
        ours = keras.ops.convert_to_numpy(transformer([photo[None], bottlenecks[style_name]], training=False))
        transfer_rows.append({"photo": name, "style": style_name, "psnr_db": psnr_db(published, ours),
                              "max_abs": float(np.abs(published - ours).max())})
    return {
        "transfer": transfer_rows,
        "predictor": predictor_rows,
        "min_transfer_psnr_db": min(r["psnr_db"] for r in transfer_rows),
        "min_predictor_cosine": min(r["cosine"] for r in predictor_rows),
    }


def import_magenta(cfg) -> dict:
    """The import stage: build the lite stylizer, import the published weights, measure parity."""
    import json

    from omegaconf import OmegaConf

    from training.data.datasets import find_images, load_image, style_crop
    from training.fileio import atomic_write_text, save_keras_atomically
    from training.network.stylizer import build_stylizer
    from training.schema import check_config
    from training.tracking import mlflow_run, record_run_id

    check_config(cfg, "import_magenta", allow_other_keys=True)
    out_dir = Path(cfg.paths.magenta_published_dir)
    model_cfg = OmegaConf.create({"name": "magenta_lite", "alpha": PUBLISHED_ALPHA, "freeze_batch_norm": True})
    stylizer = build_stylizer(model_cfg, OmegaConf.create(PUBLISHED_BACKBONE), cfg.paths.cache_dir)
    counts = load_published_into(stylizer, cfg.paths.published_dir)
    p = cfg.parity
    photos = {f.stem: style_crop(load_image(f), p.content_size) for f in find_images(p.content_dir, "parity.content_dir")}
    styles = {f.stem: style_crop(load_image(f), p.style_size) for f in find_images(p.style_dir, "parity.style_dir")}
    parity = {**measure_parity(stylizer, cfg.paths.published_dir, photos, styles), **counts,
              "thresholds": {"min_transfer_psnr_db": p.min_transfer_psnr_db, "min_predictor_cosine": p.min_predictor_cosine}}
    parity["passed"] = (parity["min_transfer_psnr_db"] >= p.min_transfer_psnr_db
                        and parity["min_predictor_cosine"] >= p.min_predictor_cosine)
    with mlflow_run(cfg, cfg.run_name, tags={"stage": "import", "model": "magenta_lite", "style": "arbitrary"}) as run:
        import mlflow

        mlflow.log_metrics({"min_transfer_psnr_db": parity["min_transfer_psnr_db"],
                            "min_predictor_cosine": parity["min_predictor_cosine"]})
        if not parity["passed"]:
            raise MagentaImportError(
                f"parity below threshold: transfer PSNR {parity['min_transfer_psnr_db']:.1f} dB "
                f"(need {p.min_transfer_psnr_db}), predictor cosine {parity['min_predictor_cosine']:.4f} "
                f"(need {p.min_predictor_cosine}); nothing written to {out_dir}")
        save_keras_atomically(stylizer, out_dir / "model.keras")
        atomic_write_text(out_dir / "parity.json", json.dumps(parity, indent=2))
        record_run_id(out_dir, run.info.run_id)
        mlflow.log_artifact(str(out_dir / "parity.json"))
    return parity
