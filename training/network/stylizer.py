"""The stylizer: a style predictor and a transfer network, built from config or loaded from a file.

Two models make up a stylizer, like Magenta's published pair:
- the style predictor: style image in [0, 1] -> backbone -> bottleneck (B, 1, 1, 100);
- the transformer: content image in [0, 1] + bottleneck -> stylized image in [0, 1], Magenta's
  (training/network/magenta_network.py) or the fast one (training/network/realtime_network.py).
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import keras
from keras import layers

from training.errors import StylepipeError
from training.network import vgg16  # noqa: F401 - registers VGGPreprocess, used by the vgg16 backbone
from training.network.backbones import build_backbone
from training.network.layers import BOTTLENECK_DIM, SpatialMean, dotted
from training.network.magenta_network import build_transfer_network
from training.network.realtime_network import build_realtime_from_config


def bottleneck_scope(backbone_name: str) -> str:
    """Magenta's name of the 1x1 conv to the 100-d bottleneck."""
    return "mobilenet_conv/Conv" if backbone_name == "mobilenet_v2" else "Conv"


def build_style_predictor(backbone: keras.Model, backbone_name: str, name: str = "style_predictor") -> keras.Model:
    """Style image in [0, 1] -> backbone -> spatial mean -> 1x1 conv -> bottleneck (B, 1, 1, 100)."""
    style = keras.Input(shape=(None, None, 3), name="style_image")
    pooled = SpatialMean(name="spatial_mean")(backbone(style))
    bottleneck = layers.Conv2D(BOTTLENECK_DIM, 1, name=dotted(bottleneck_scope(backbone_name)))(pooled)
    bottleneck = layers.Activation("linear", dtype="float32", name="style_bottleneck")(bottleneck)
    return keras.Model(style, bottleneck, name=name)


def build_stylizer(model_cfg, backbone_cfg, cache_dir) -> keras.Model:
    """The arbitrary stylization model: {content, style} images in [0, 1] -> stylized image.

    Its sub-models `style_predictor` and `transformer` are what the export stage writes. The transformer
    is Magenta's (`model.architecture: magenta`, the default) or the fast one of
    training/network/realtime_network.py (`model.architecture: realtime`).
    """
    predictor = build_style_predictor(build_backbone(backbone_cfg, cache_dir), backbone_cfg.name)
    if model_cfg.get("architecture", "magenta") == "realtime":
        transformer = build_realtime_from_config(model_cfg)
    else:
        transformer = build_transfer_network(
            alpha=model_cfg.alpha,
            batch_norm_momentum=model_cfg.get("batch_norm_momentum", 0.99),
            freeze_batch_norm=model_cfg.get("freeze_batch_norm", False),
        )
    content = keras.Input(shape=(None, None, 3), name="content")
    style = keras.Input(shape=(None, None, 3), name="style")
    stylized = transformer([content, predictor(style)])
    return keras.Model({"content": content, "style": style}, stylized, name="stylizer")


# What a model trained in mixed precision saved as its layers' dtypes, and what it is loaded as.
MIXED_PRECISION = {"mixed_bfloat16": "float32", "mixed_float16": "float32", "bfloat16": "float32", "float16": "float32"}


def _float32_config(config):
    """`config` with every mixed-precision dtype policy and half-precision tensor dtype made float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and config.get("config", {}).get("name") in MIXED_PRECISION:
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: (MIXED_PRECISION.get(v, v) if k == "dtype" and isinstance(v, str) else _float32_config(v))
                for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


def _in_float32(path: Path, folder: Path) -> Path:
    """`path`, or a copy of it in `folder` whose layers compute in float32 when it was trained in mixed
    precision: what export, stylize and a teacher run (the weights are float32 either way)."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        float32 = _float32_config(config)
        if float32 == config:
            return path
        copy = folder / path.name
        with zipfile.ZipFile(copy, "w") as out:
            for item in archive.infolist():
                data = json.dumps(float32).encode() if item.filename == "config.json" else archive.read(item)
                out.writestr(item, data)
    return copy


def load_stylizer(path) -> keras.Model:
    """Load a stylizer written by the training or import stage (safe mode), computing in float32
    whatever precision it was trained in, or explain why not."""
    path = Path(path)
    if not path.is_file():
        raise StylepipeError(f"{path}: no such model file (run `python -m pipelines.train` or `python -m pipelines.import_magenta` first)")
    if not zipfile.is_zipfile(path):  # Keras would call a truncated archive "File not found"
        raise StylepipeError(f"{path}: not a readable Keras model file (not a whole .keras zip archive: "
                             "truncated, damaged or another format)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = keras.models.load_model(_in_float32(path, Path(tmp)), safe_mode=True, compile=False)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise StylepipeError(f"{path}: not a readable Keras model file ({first_line})") from None
    names = {layer.name for layer in model.layers}
    if not {"style_predictor", "transformer"} <= names:
        raise StylepipeError(f"{path}: a Keras model, but not a stylepipe stylizer (it has no style_predictor/transformer)")
    return model
