"""init=tfhub: a hub-format SavedModel loads into the full network by Magenta's variable names.

Offline there is no TF Hub, so the test writes a module in the published one's format: Magenta's
variable names, `variables` exposed for reuse, and a call (content, style) in [0, 1] -> [stylized].
Its stylization is computed from those named variables only (a stateless call of our network).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from helpers import CACHE_DIR, CONTENT_DIR, STYLE_DIR, compose_train

# Small and fast: no training, one held-out photo scored at 64 px, style images at 96 px (InceptionV3 needs 76+).
SMALL = ["experiment=smoke", "trainer.steps=0", "data.heldout_count=1", "data.heldout_size=64", "data.style_size=96"]


def _randomize(stylizer, seed=0):
    """Distinct random values in every weight, so a weight loaded into the wrong place shows."""
    rng = np.random.default_rng(seed)
    for w in stylizer.weights:
        shape = tuple(w.shape)
        if w.name == "moving_variance":
            w.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        else:
            w.assign(rng.normal(0.0, 0.05, shape).astype("float32"))


def save_hub_module(stylizer, path, variables: dict) -> None:
    """A reusable SavedModel like the published module: named variables, `variables`, __call__ -> [stylized]."""
    import tensorflow as tf

    named = {name: tf.Variable(np.asarray(v), name=name) for name, v in variables.items()}
    by_id = {id(v): named[name] for name, v in variables.items() if name in named}
    module = tf.train.Checkpoint()
    module.variables = list(named.values())
    trainable = [by_id[id(v)] for v in stylizer.trainable_variables]
    non_trainable = [by_id[id(v)] for v in stylizer.non_trainable_variables]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)] * 2)
    def stylize(content, style):
        out, _ = stylizer.stateless_call(trainable, non_trainable, {"content": content, "style": style}, training=False)
        return [out]

    module.__call__ = stylize
    tf.saved_model.save(module, str(path))


@pytest.fixture(scope="module")
def hub_module(tmp_path_factory):
    from training.network.stylizer import build_stylizer
    from training.weights.tfhub_import import magenta_variables

    cfg = compose_train(["init=tfhub", *SMALL], tmp_path_factory.mktemp("compose"))
    source = build_stylizer(cfg.model, cfg.backbone, CACHE_DIR)
    _randomize(source)
    path = tmp_path_factory.mktemp("hub") / "arbitrary-image-stylization-v1-256"
    save_hub_module(source, path, magenta_variables(source))
    return path, source


def test_magenta_names_and_shapes_of_the_full_model(hub_module):
    from training.weights.tfhub_import import magenta_variables

    names = {n: tuple(v.shape) for n, v in magenta_variables(hub_module[1]).items()}
    assert len(names) == 359  # 77 transfer network, 2 bottleneck, 70 InceptionV3 convs x (weights + 3 batch norm)
    # Shapes read off Magenta's and slim's sources: they pin the order the auto-named Keras convs are matched in.
    expected = {
        "transformer/contract/conv1/weights": (9, 9, 3, 32),
        "transformer/contract/conv3/BatchNorm/moving_variance": (128,),
        "transformer/expand/conv3/conv/weights": (9, 9, 32, 3),
        "style_params/transformer/expand/conv3/conv/StyleNorm/Conv_1/biases": (3,),
        "style_params/transformer/residual/residual5/conv2/StyleNorm/Conv/weights": (1, 1, 100, 128),
        "Conv/weights": (1, 1, 768, 100),
        "InceptionV3/Conv2d_4a_3x3/weights": (3, 3, 80, 192),
        "InceptionV3/Mixed_5b/Branch_3/Conv2d_0b_1x1/weights": (1, 1, 192, 32),
        "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/weights": (5, 5, 48, 64),
        "InceptionV3/Mixed_6a/Branch_0/Conv2d_1a_1x1/weights": (3, 3, 288, 384),
        "InceptionV3/Mixed_6b/Branch_2/Conv2d_0b_7x1/weights": (7, 1, 128, 128),
        "InceptionV3/Mixed_6c/Branch_1/Conv2d_0b_1x7/weights": (1, 7, 160, 160),
        "InceptionV3/Mixed_6e/Branch_2/Conv2d_0e_1x7/BatchNorm/beta": (192,),
    }
    assert {n: names.get(n) for n in expected} == expected
    inception = hub_module[1].get_layer("style_predictor").get_layer("backbone_inception_v3").get_layer("inception_v3")
    assert {l.get_config()["activation"] for l in inception.layers if isinstance(l, keras.layers.Activation)} == {"relu6"}


@pytest.mark.slow
def test_tfhub_init_loads_every_weight_and_reproduces_the_module(hub_module, tmp_path):
    import tensorflow_hub as hub

    from training.data.datasets import fit_crop, load_image, style_crop
    from training.network.stylizer import load_stylizer
    from training.loop.train import train

    path, source = hub_module
    cfg = compose_train(["init=tfhub", f"init.handle={path}", *SMALL], tmp_path)
    assert cfg.model.alpha == 1.0 and cfg.backbone.name == "inception_v3" and cfg.backbone.activation == "relu6"
    train(cfg)
    loaded = load_stylizer(tmp_path / "outputs" / "train" / "model.keras")
    assert len(loaded.weights) == len(source.weights) == 359
    for ours, theirs in zip(loaded.weights, source.weights):  # the same structure: weight i is weight i
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=ours.path)

    content = fit_crop(load_image(CONTENT_DIR / "chelsea.jpg"), 64, 96)[None]
    style = style_crop(load_image(STYLE_DIR / "starry_night.jpg"), 96)[None]
    expected = hub.load(str(path))(content, style)[0].numpy()
    got = np.asarray(loaded({"content": content, "style": style}, training=False))
    assert expected.shape == (1, 64, 96, 3) and expected.std() > 1e-3  # a real image, not a constant
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_tfhub_init_refuses_a_module_whose_variables_differ(hub_module, tmp_path):
    from training.network.stylizer import build_stylizer
    from training.weights.tfhub_import import TfHubImportError, magenta_variables
    from training.loop.train import train

    cfg = compose_train(["init=tfhub", *SMALL], tmp_path)
    stylizer = build_stylizer(cfg.model, cfg.backbone, CACHE_DIR)
    variables = magenta_variables(stylizer)
    variables["global_step"] = variables.pop("InceptionV3/Mixed_6e/Branch_3/Conv2d_0b_1x1/BatchNorm/moving_mean")
    save_hub_module(stylizer, tmp_path / "odd", variables)
    with pytest.raises(TfHubImportError, match=r"missing 1 of 359: \['InceptionV3/Mixed_6e/Branch_3/Conv2d_0b_1x1/"
                                               r"BatchNorm/moving_mean'\]; unexpected 1: \['global_step'\]"):
        train(compose_train(["init=tfhub", f"init.handle={tmp_path / 'odd'}", *SMALL], tmp_path))
    with pytest.raises(TfHubImportError, match=r"variable\(s\) have other shapes .*model.alpha"):
        train(compose_train(["init=tfhub", f"init.handle={hub_module[0]}", "model.alpha=0.5", *SMALL], tmp_path))
    with pytest.raises(TfHubImportError, match=r"init.handle=.*nowhere: could not load a TF Hub module"):
        train(compose_train(["init=tfhub", f"init.handle={tmp_path / 'nowhere'}", *SMALL], tmp_path))
    assert not (tmp_path / "outputs" / "train" / "model.keras").exists()
