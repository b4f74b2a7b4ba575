"""Load Magenta's full arbitrary model from TF Hub (or a local hub-format SavedModel), by variable name.

The published module (`google/magenta/arbitrary-image-stylization-v1-256/2`) holds Magenta's TF1
variables under their scopes, e.g. `transformer/contract/conv1/weights`,
`transformer/contract/conv1/BatchNorm/moving_mean`, `style_params/<layer>/StyleNorm/Conv_1/biases`,
`Conv/weights` (the 100-d bottleneck) and `InceptionV3/Mixed_6e/Branch_2/Conv2d_0e_1x7/BatchNorm/beta`.
Our layer names are the same scopes ("." for "/"), except keras.applications' InceptionV3, whose
layers are auto-named (`conv2d_17`): its convs are matched to slim's scopes in creation order,
which follows slim's branch order, and every shape is checked.
"""

from __future__ import annotations

import keras
import numpy as np

from training.errors import StylepipeError
from training.network.layers import magenta_scope
from training.network.stylizer import bottleneck_scope


class TfHubImportError(StylepipeError):
    """A TF Hub module could not be loaded or does not fit the network."""


def inception_v3_scopes() -> list[str]:
    """slim's `inception_v3_base` conv scopes up to Mixed_6e, in the order the layers are built."""
    scopes = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    for block in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        # slim's Mixed_5c names its 5x5 branch differently (a quirk kept in every checkpoint).
        branch_1 = ["Conv2d_0b_1x1", "Conv_1_0c_5x5"] if block == "Mixed_5c" else ["Conv2d_0a_1x1", "Conv2d_0b_5x5"]
        scopes += [f"{block}/Branch_0/Conv2d_0a_1x1", *(f"{block}/Branch_1/{c}" for c in branch_1),
                   *(f"{block}/Branch_2/{c}" for c in ("Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_0c_3x3")),
                   f"{block}/Branch_3/Conv2d_0b_1x1"]
    scopes += ["Mixed_6a/Branch_0/Conv2d_1a_1x1",
               *(f"Mixed_6a/Branch_1/{c}" for c in ("Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_1a_1x1"))]
    for block in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        scopes += [f"{block}/Branch_0/Conv2d_0a_1x1",
                   *(f"{block}/Branch_1/{c}" for c in ("Conv2d_0a_1x1", "Conv2d_0b_1x7", "Conv2d_0c_7x1")),
                   *(f"{block}/Branch_2/{c}" for c in ("Conv2d_0a_1x1", "Conv2d_0b_7x1", "Conv2d_0c_1x7",
                                                        "Conv2d_0d_7x1", "Conv2d_0e_1x7")),
                   f"{block}/Branch_3/Conv2d_0b_1x1"]
    return [f"InceptionV3/{s}" for s in scopes]


def _creation_index(layer) -> int:
    """keras auto-names layers `conv2d`, `conv2d_1`, ...: the suffix is the order they were built in."""
    stem, _, suffix = layer.name.rpartition("_")
    return int(suffix) if stem and suffix.isdigit() else 0


def _layer_variables(layer, scope: str) -> dict[str, keras.Variable]:
    """Magenta's names of one conv's or batch norm's variables."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return {f"{scope}/{w.name}": w for w in layer.weights}  # beta, (gamma,) moving_mean, moving_variance
    names = {"kernel": "weights", "bias": "biases"}
    return {f"{scope}/{names[w.name]}": w for w in layer.weights}


def _inception_variables(predictor: keras.Model) -> dict[str, keras.Variable]:
    all_layers = list(predictor._flatten_layers(include_self=False))
    backbone = [l for l in all_layers if l.name == "inception_v3"]
    if not backbone:
        raise TfHubImportError("init=tfhub needs backbone=inception_v3 (Magenta's full style predictor)")
    inner = list(backbone[0]._flatten_layers(include_self=False))
    convs = sorted((l for l in inner if isinstance(l, keras.layers.Conv2D)), key=_creation_index)
    norms = sorted((l for l in inner if isinstance(l, keras.layers.BatchNormalization)), key=_creation_index)
    scopes = inception_v3_scopes()
    if len(convs) != len(scopes) or len(norms) != len(scopes):
        raise TfHubImportError(f"the InceptionV3 backbone has {len(convs)} convs / {len(norms)} batch norms; "
                               f"Magenta's (to Mixed_6e) has {len(scopes)}")
    variables = {}
    for scope, conv, norm in zip(scopes, convs, norms):
        variables |= _layer_variables(conv, scope) | _layer_variables(norm, f"{scope}/BatchNorm")
    return variables


def magenta_variables(stylizer: keras.Model) -> dict[str, keras.Variable]:
    """Every weight of a full-model stylizer under the name Magenta's module gives it."""
    variables = {}
    transformer = stylizer.get_layer("transformer")
    for layer in transformer.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.BatchNormalization)):
            variables |= _layer_variables(layer, magenta_scope(layer))
    predictor = stylizer.get_layer("style_predictor")
    bottleneck = predictor.get_layer(bottleneck_scope("inception_v3").replace("/", "."))
    variables |= _layer_variables(bottleneck, bottleneck_scope("inception_v3"))
    return variables | _inception_variables(predictor)


def load_module(handle: str):
    """hub.load a URL or a local directory; one clear line when it cannot."""
    import tensorflow_hub as hub

    try:
        return hub.load(str(handle))
    except Exception as err:  # network, missing path, not a SavedModel: say which handle and what to do
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise TfHubImportError(f"init.handle={handle}: could not load a TF Hub module ({type(err).__name__}: {first}). "
                               "Offline, download the module elsewhere and pass its directory as init.handle.") from None


def module_variables(module, handle) -> dict[str, np.ndarray]:
    """{name without ':0': value} of a loaded module's variables."""
    variables = getattr(module, "variables", None)
    if not variables:
        raise TfHubImportError(f"init.handle={handle}: the module exposes no variables (not a reusable hub SavedModel)")
    return {v.name.split(":")[0]: v.numpy() for v in variables}


def load_tfhub_into(stylizer: keras.Model, handle: str) -> dict[str, int]:
    """Set every weight of `stylizer` from the module's variable of the same Magenta name."""
    published = module_variables(load_module(handle), handle)
    ours = magenta_variables(stylizer)
    missing, unexpected = sorted(set(ours) - set(published)), sorted(set(published) - set(ours))
    if missing or unexpected:
        raise TfHubImportError(
            f"init.handle={handle}: its variables do not match the network (model={stylizer.name}); "
            f"missing {len(missing)} of {len(ours)}: {missing[:6] or 'none'}; unexpected {len(unexpected)}: {unexpected[:6] or 'none'}")
    wrong = [f"{n} {published[n].shape} vs {tuple(v.shape)}" for n, v in ours.items() if published[n].shape != tuple(v.shape)]
    if wrong:
        raise TfHubImportError(f"init.handle={handle}: {len(wrong)} variable(s) have other shapes than the network's "
                               f"(is model.alpha right?): {wrong[:4]}")
    for name, variable in ours.items():
        variable.assign(published[name])
    return {"variables": len(ours)}
