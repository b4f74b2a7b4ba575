"""The baked exports' `strength` input: folded norm parameters, parity of every format at 0, 0.5 and 1,
strength 1 as the baked model without the input, strength 0 as the neutral bottleneck, the manifest's record.

The export stage runs once, on Magenta's real published weights (every baked format, 64x64); the folding
itself is also checked on both transfer networks at random weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import CONTENT_DIR, REPO, compose_export, photo, random_bottleneck, realtime_stylizer

STRENGTHS = (0.0, 0.5, 1.0)
SIZE = 64


def strength_feed(strength: float) -> np.ndarray:
    return np.full((1,), strength, np.float32)


def psnr(a, b) -> float:
    from training.weights.parity import psnr_db

    return psnr_db(np.asarray(a, np.float32), np.asarray(b, np.float32))


def transformer_of(architecture: str):
    import keras

    from training.network.magenta_network import build_transfer_network
    from training.network.realtime_network import build_realtime_network

    keras.utils.set_random_seed(0)
    if architecture == "realtime":
        return build_realtime_network(channels=16, stem_channels=8, residual_blocks=2, head_channels=8)
    return build_transfer_network(alpha=0.25)


# ---------------------------------------------------------------- the folding, both networks


@pytest.mark.parametrize("architecture", ["magenta", "realtime"])
def test_folded_strength_is_the_transformer_fed_the_blended_bottleneck(architecture):
    import keras

    from export.strength import blend, fold_strength

    transformer = transformer_of(architecture)
    neutral, style = random_bottleneck(1), random_bottleneck(2)
    folded = fold_strength(transformer, neutral, style)
    # No 100-d style_params convolution is left: every norm parameter is a 1x1 conv of the strength.
    assert not [layer.name for layer in folded.layers if isinstance(layer, keras.layers.Conv2D)
                and layer.kernel.shape[-2] == 100]
    x = photo(32, 48)
    for strength in STRENGTHS:
        ours = keras.ops.convert_to_numpy(folded([x, np.full((1, 1, 1, 1), strength, np.float32)], training=False))
        ref = keras.ops.convert_to_numpy(transformer([x, blend(neutral, style, strength)], training=False))
        np.testing.assert_allclose(ours, ref, atol=2e-5, err_msg=f"strength {strength}")


def test_a_bottleneck_read_by_anything_but_a_linear_1x1_conv_is_refused():
    import keras

    from export.strength import StrengthFoldError, fold_strength

    content = keras.Input(shape=(None, None, 3), name="content_image")
    bottleneck = keras.Input(shape=(1, 1, 100), name="style_bottleneck")
    scale = keras.layers.Conv2D(3, 1, activation="relu", name="scale")(bottleneck)
    toy = keras.Model([content, bottleneck], keras.layers.Multiply()([content, scale]), name="transformer")
    with pytest.raises(StrengthFoldError, match="scale .*not a linear 1x1 convolution"):
        fold_strength(toy, random_bottleneck(1), random_bottleneck(2))


def test_neutral_bottleneck_is_the_mean_over_the_readable_photos(tmp_path):
    import keras

    from export.strength import neutral_bottleneck
    from training.data.datasets import load_image, style_crop

    for name in ("chelsea.jpg", "astronaut.jpg", "baboon.jpg"):
        (tmp_path / name).write_bytes((CONTENT_DIR / name).read_bytes())
    (tmp_path / "broken.jpg").write_text("not a photo")
    image = keras.Input(shape=(32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True)(image)
    predictor = keras.Model(image, keras.layers.Conv2D(100, 1)(pooled))
    neutral = neutral_bottleneck(predictor, tmp_path, 32)
    assert neutral.photos == 3 and len(neutral.skipped) == 1 and "broken.jpg" in neutral.skipped[0]
    one_by_one = [keras.ops.convert_to_numpy(predictor(style_crop(load_image(tmp_path / n), 32)[None]))
                  for n in ("astronaut.jpg", "baboon.jpg", "chelsea.jpg")]
    np.testing.assert_allclose(neutral.values, np.mean(one_by_one, axis=0), rtol=1e-5, atol=1e-6)
    assert neutral.values.shape == (1, 1, 1, 100)
    assert len(neutral.manifest()["values"]) == 100


@pytest.mark.slow
def test_realtime_baked_tflite_takes_strength_within_the_gpu_rules(tmp_path):
    import keras

    from export.strength import STRENGTH_SIGNATURE, blend
    from export.tf_graph import constant_module, make_module
    from export.tflite import check_gpu_delegate_rules, convert_signatures, run_signature

    stylizer = realtime_stylizer()
    transformer = stylizer.get_layer("transformer")
    neutral, style = random_bottleneck(3), random_bottleneck(4)
    modules = {"serve": make_module("baked", stylizer, SIZE, SIZE, style),
               STRENGTH_SIGNATURE: make_module("baked_strength", stylizer, SIZE, SIZE, style, neutral)}
    flatbuffer = convert_signatures({k: constant_module(m).serve for k, m in modules.items()})
    report = check_gpu_delegate_rules(flatbuffer)
    assert report.ok, report.problems
    assert report.signature_ops[STRENGTH_SIGNATURE]["TRANSPOSE_CONV"] == 2
    path = tmp_path / "realtime.tflite"
    path.write_bytes(flatbuffer)
    x = photo(SIZE, SIZE)
    for strength in STRENGTHS:
        ours = run_signature(path, STRENGTH_SIGNATURE, {"content_image": x, "strength": strength_feed(strength)})
        ref = keras.ops.convert_to_numpy(transformer([x, blend(neutral, style, strength)], training=False))
        assert psnr(ours["stylized_image"], ref) >= 40.0, strength


# ---------------------------------------------------------------- the export stage, every format


@pytest.fixture(scope="module")
def exported(tmp_path_factory, published_model_path):
    from export.stage import export

    tmp = tmp_path_factory.mktemp("strength-export")
    cfg = compose_export(tmp, published_model_path, [
        f"export.sizes=[[{SIZE},{SIZE}]]", "export.parity_photos=1", "export.style=starry",
        "export.formats=[frozen_graph,tflite_fp16,coreml,bender]", "export.arbitrary_formats=[]"])
    manifest = export(cfg)
    return manifest, tmp / "outputs" / "export", cfg


@pytest.fixture(scope="module")
def keras_parts(exported):
    import keras

    from training.data.datasets import load_painting, style_crop
    from training.network.stylizer import load_stylizer

    manifest, _, _ = exported
    stylizer = load_stylizer(manifest["model"])
    style = keras.ops.convert_to_numpy(stylizer.get_layer("style_predictor")(
        style_crop(load_painting(manifest["style_image"]), 256)[None], training=False))
    neutral = np.asarray(manifest["neutral_bottleneck"]["values"], np.float32).reshape(1, 1, 1, 100)
    return stylizer, style, neutral


def keras_at(keras_parts, x, bottleneck) -> np.ndarray:
    import keras

    stylizer, _, _ = keras_parts
    return keras.ops.convert_to_numpy(stylizer.get_layer("transformer")([x, bottleneck], training=False))


def artifact(manifest, fmt) -> dict:
    return next(a for a in manifest["artifacts"] if a["format"] == fmt and a["variant"] == "baked")


def run_baked(fmt, path, x, strength=None) -> np.ndarray:
    """One 64x64 photo through a baked artifact, at `strength` (None: the input left out / `serve`)."""
    if fmt == "frozen_graph":
        from export.tf_graph import load_frozen_graph, run_frozen_graph

        feeds = {"content_image": x} if strength is None else {"content_image": x, "strength": strength_feed(strength)}
        return run_frozen_graph(load_frozen_graph(path), feeds, ["stylized_image"])["stylized_image"]
    if fmt == "tflite_fp16":
        from export.tflite import run_signature

        if strength is None:
            return run_signature(path, "serve", {"content_image": x})["stylized_image"]
        return run_signature(path, "serve_strength", {"content_image": x, "strength": strength_feed(strength)})["stylized_image"]
    import coremltools as ct

    from export import coreml

    model = ct.models.MLModel(str(path), skip_model_load=True)  # read back from the package, as saved
    feeds = {"content_image": x[0] * 255.0} | ({} if strength is None else {"strength": strength_feed(strength)})
    return coreml.predict(path, model, feeds)["stylized_image"][None].astype(np.float32) / 255.0


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["frozen_graph", "tflite_fp16", "coreml"])
def test_each_format_matches_keras_fed_the_blended_bottleneck(exported, keras_parts, fmt):
    from export.strength import blend

    manifest, out, cfg = exported
    entry = artifact(manifest, fmt)
    threshold = float(cfg.export.thresholds[fmt])
    assert set(entry["parity"]["strength"]) == {"default", "0", "0.5", "1"}
    assert all(p["psnr_db"] >= threshold for p in entry["parity"]["strength"].values()), entry["parity"]
    _, style, neutral = keras_parts
    x = photo(SIZE, SIZE, "fruits.jpg")  # not the stage's parity photo
    for strength in STRENGTHS:
        ours = run_baked(fmt, out / entry["path"], x, strength)
        assert psnr(ours, keras_at(keras_parts, x, blend(neutral, style, strength))) >= threshold, strength


@pytest.mark.slow
def test_strength_1_is_the_baked_model_without_the_input(exported, keras_parts):
    """Each format at strength 1 gives what the baked model gave before it had the input; left out, the
    input is 1 (frozen graph and Core ML defaults; TFLite's `serve` is the old baked graph itself)."""
    from export.tf_graph import freeze, make_module, run_frozen_graph

    manifest, out, _ = exported
    stylizer, style, _ = keras_parts
    x = photo(SIZE, SIZE, "fruits.jpg")
    old_graph, _, _ = freeze(make_module("baked", stylizer, SIZE, SIZE, style))
    old = run_frozen_graph(old_graph, {"content_image": x}, ["stylized_image"])["stylized_image"]
    frozen = out / artifact(manifest, "frozen_graph")["path"]
    np.testing.assert_allclose(run_baked("frozen_graph", frozen, x, 1.0), old, atol=1e-5)
    np.testing.assert_array_equal(run_baked("frozen_graph", frozen, x), run_baked("frozen_graph", frozen, x, 1.0))
    tflite = out / artifact(manifest, "tflite_fp16")["path"]
    assert psnr(run_baked("tflite_fp16", tflite, x), old) >= 60.0  # `serve`: the old graph, fp16 weights
    assert psnr(run_baked("tflite_fp16", tflite, x, 1.0), run_baked("tflite_fp16", tflite, x)) >= 60.0
    mlpackage = out / artifact(manifest, "coreml")["path"]
    np.testing.assert_array_equal(run_baked("coreml", mlpackage, x), run_baked("coreml", mlpackage, x, 1.0))


@pytest.mark.slow
def test_strength_0_is_the_model_fed_the_neutral_bottleneck(exported, keras_parts):
    manifest, out, _ = exported
    _, _, neutral = keras_parts
    x = photo(SIZE, SIZE, "fruits.jpg")
    at_neutral = keras_at(keras_parts, x, neutral)
    np.testing.assert_allclose(run_baked("frozen_graph", out / artifact(manifest, "frozen_graph")["path"], x, 0.0),
                               at_neutral, atol=1e-5)
    assert psnr(run_baked("tflite_fp16", out / artifact(manifest, "tflite_fp16")["path"], x, 0.0), at_neutral) >= 60.0
    # And it is a different picture from the full style.
    assert np.abs(at_neutral - keras_at(keras_parts, x, keras_parts[1])).mean() > 0.02


@pytest.mark.slow
def test_manifest_names_the_neutral_bottleneck_and_each_formats_strength(exported, keras_parts):
    import coremltools as ct
    import keras

    from training.data.datasets import find_images, load_image, style_crop

    manifest, out, _ = exported
    neutral = manifest["neutral_bottleneck"]
    photos = find_images(CONTENT_DIR, "data")
    assert neutral["photos"] == len(photos) and neutral["skipped"] == []
    assert neutral["photos_dir"].endswith("data/samples/content") and "style predictor" in neutral["source"]
    stylizer, _, _ = keras_parts
    predictor = stylizer.get_layer("style_predictor")
    one_by_one = [keras.ops.convert_to_numpy(predictor(style_crop(load_image(p), 256)[None], training=False)) for p in photos]
    np.testing.assert_allclose(neutral["values"], np.mean(one_by_one, axis=0).reshape(-1), atol=1e-5)

    assert artifact(manifest, "frozen_graph")["strength"] == {"input": "strength", "shape": [1], "range": [0.0, 1.0],
                                                              "default": 1.0}
    assert {"name": "strength", "shape": [1], "dtype": "float32", "default": 1.0} in artifact(manifest, "frozen_graph")["inputs"]
    tflite = artifact(manifest, "tflite_fp16")
    assert tflite["strength"]["signature"] == "serve_strength" and tflite["strength"]["default"] is None
    assert [i["name"] for i in tflite["inputs"]] == ["content_image"]  # `serve`, as before
    assert sorted(i["name"] for i in tflite["strength"]["inputs"]) == ["content_image", "strength"]
    assert tflite["ops_strength"]["CONV_2D"] == tflite["ops"]["CONV_2D"] + 26  # a 1x1 conv per gamma and beta
    assert artifact(manifest, "coreml")["strength"]["default"] == 1.0
    assert artifact(manifest, "bender")["strength"] == {"input": None, "fixed": 1.0}
    assert "strength" not in artifact(manifest, "bender")["parity"]

    spec = ct.models.MLModel(str(out / artifact(manifest, "coreml")["path"]), skip_model_load=True).get_spec()
    strength = next(f for f in spec.description.input if f.name == "strength")
    assert strength.type.isOptional and strength.type.multiArrayType.floatDefaultValue == 1.0
    assert list(strength.type.multiArrayType.shape) == [1]
    assert spec.specificationVersion == 7  # iOS 16, the deployment target, takes input defaults


@pytest.mark.slow
def test_stylize_with_a_baked_export_honours_strength(tmp_path, exported):
    from hydra import compose, initialize_config_dir

    from export.apply import stylize

    _, out, _ = exported
    results = {}
    for strength in (None, 1.0, 0.5, 0.0):
        target = tmp_path / f"{strength}.png"
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose("stylize", overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path}",
                                                f"export_dir={out}", f"input={CONTENT_DIR / 'chelsea.jpg'}", "size=model",
                                                f"strength={'null' if strength is None else strength}", f"output={target}"])
        summary = stylize(cfg)
        assert ("(baked TFLite, strength" in summary["model"]) == (strength is not None)
        results[strength] = np.asarray(Image.open(target).convert("RGB"), np.float32) / 255.0
    full = results[None]
    assert np.abs(results[1.0] - full).max() <= 2 / 255  # the strength signature at 1 vs `serve`: fp16 rounding
    half, none = (np.abs(results[s] - full).mean() for s in (0.5, 0.0))
    assert 0.01 < half < none  # less of the painting the lower the strength


@pytest.mark.slow
def test_stylize_strength_with_a_baked_model_exported_before_the_input_is_one_line(tmp_path, exported, keras_parts):
    import json
    import shutil

    from export.manifest import artifact_sha256
    from export.tf_graph import constant_module, make_module
    from export.tflite import convert
    from reliability.reliability_helpers import error_lines, run_stage

    manifest, out, _ = exported
    stylizer, style, _ = keras_parts
    old_export = tmp_path / "old-export"
    shutil.copytree(out, old_export)
    entry = artifact(manifest, "tflite_fp16")
    old_model = old_export / entry["path"]  # the baked TFLite as exported before: `serve` alone
    old_model.write_bytes(convert(constant_module(make_module("baked", stylizer, SIZE, SIZE, style)), "serve"))
    old_manifest = manifest | {"artifacts": [a | {"sha256": artifact_sha256(old_model)} if a["path"] == entry["path"] else a
                                             for a in manifest["artifacts"]]}
    (old_export / "manifest.json").write_text(json.dumps(old_manifest))
    result = run_stage("stylize", [f"input={CONTENT_DIR / 'chelsea.jpg'}", f"export_dir={old_export}", "strength=0.5"], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "has no strength input" in lines[0] and "pipelines.export" in lines[0], result.stderr[-2000:]
