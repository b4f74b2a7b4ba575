"""The export stage on Magenta's real published weights: formats, parity, manifest, failures."""

from __future__ import annotations

import json

import pytest

from helpers import REPO, compose_export as compose_export_config
from export.tflite import check_gpu_delegate_rules

FAST = ["export.sizes=[[64,64],[64,128]]", "export.parity_photos=1",
        "export.style=starry"]  # Magenta's published model has no single trained style: name one


def compose_export(tmp_path, model_path, overrides=()):
    """The export config at FAST sizes (reliability tests use it too)."""
    return compose_export_config(tmp_path, model_path, [*FAST, *overrides])


def tf_formats_only():
    return ["export.formats=[frozen_graph,tflite_fp16]", "export.arbitrary_formats=[frozen_graph,tflite_fp16]"]


@pytest.mark.slow
def test_frozen_graph_and_tflite_match_keras_and_fill_the_manifest(tmp_path, published_model_path):
    from export.stage import export
    from training.tracking import RUN_ID_RECORD

    out = tmp_path / "outputs" / "export"
    (out / ".hydra-run").mkdir(parents=True)  # Hydra's files of this export, written before the stage runs
    (out / ".hydra-run" / "export.log").write_text("this run's log")
    (out / "baked_oldstyle_64x64.tflite").write_bytes(b"an earlier style's model")
    manifest = export(compose_export(tmp_path, published_model_path, tf_formats_only()))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["artifacts"] == manifest["artifacts"]
    # The new export replaced the folder: no earlier style's file beside it; Hydra's run files kept.
    assert sorted(p.name for p in out.iterdir()) == sorted([".hydra-run", "manifest.json", RUN_ID_RECORD,
                                                            *(a["path"] for a in manifest["artifacts"])])
    assert (out / ".hydra-run" / "export.log").read_text().startswith("this run's log")
    assert not list(out.parent.glob(".export*"))
    kinds = {(a["format"], a["variant"], a["model"], a["path"].rsplit("_", 1)[-1].split(".")[0]) for a in manifest["artifacts"]}
    for fmt in ("frozen_graph", "tflite_fp16"):
        for size in ("64x64", "64x128"):
            assert (fmt, "baked", "transfer", size) in kinds and (fmt, "arbitrary", "transfer", size) in kinds
        assert (fmt, "arbitrary", "predictor", "256x256") in kinds
    for a in manifest["artifacts"]:
        assert (out / a["path"]).is_file()
        assert a["parity"]["psnr_db"] >= 40.0, a
        assert len(a["sha256"]) == 64 and a["bytes"] == (out / a["path"]).stat().st_size
        assert a["inputs"][0]["name"] in ("content_image", "style_image")
    tflite = [a for a in manifest["artifacts"] if a["format"] == "tflite_fp16" and a["model"] == "transfer"]
    assert all(a["ops"].get("RESIZE_NEAREST_NEIGHBOR") == 2 and "VAR_HANDLE" not in a["ops"] for a in tflite)


def test_gpu_rules_reject_a_dynamic_resize():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def dynamic(x):
        size = tf.shape(x)[1:3] * 2  # computed at run time: the delegate needs a constant size
        return tf.image.resize(x, size, method="nearest")

    converter = tf.lite.TFLiteConverter.from_concrete_functions([dynamic.get_concrete_function()], dynamic)
    report = check_gpu_delegate_rules(converter.convert())
    assert not report.ok
    assert any("RESIZE_NEAREST_NEIGHBOR" in p and "constant" in p for p in report.problems)
    assert any("dynamic" in p for p in report.problems)


def test_gpu_rules_take_a_constant_slice_and_refuse_a_computed_one():
    """The realtime network's border crop is a SLICE with constant bounds (the delegate takes 3- or
    4-dimensional ones); bounds computed at run time are refused."""
    import tensorflow as tf

    def rules(fn, spec):
        f = tf.function(fn, input_signature=[spec])
        return check_gpu_delegate_rules(tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert())

    constant = rules(lambda x: tf.slice(x, [0, 4, 4, 0], [1, 8, 8, 3]), tf.TensorSpec([1, 16, 16, 3], tf.float32))
    assert constant.ok and constant.ops["SLICE"] == 1, constant.problems
    computed = rules(lambda x: tf.slice(x, [0, 1, 1, 0], tf.shape(x) - [0, 2, 2, 0]), tf.TensorSpec([1, None, None, 3], tf.float32))
    assert any("SLICE" in p and "constant" in p for p in computed.problems), computed.problems


def test_published_magenta_transfer_model_passes_the_rules():
    data = (REPO / "models" / "magenta-published" / "style_transfer_f16_384.tflite").read_bytes()
    report = check_gpu_delegate_rules(data)
    assert report.ok, report.problems
    assert report.ops["MIRROR_PAD"] == 16 and report.ops["CONV_2D"] == 42


@pytest.mark.parametrize("override, key", [("export.sizes=[[66,64]]", "export.sizes"), ("export.style=nope", "export.style")])
def test_bad_export_config_is_a_clear_error(tmp_path, published_model_path, override, key):
    from export.stage import export
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        export(compose_export(tmp_path, published_model_path, [override]))
    assert not (tmp_path / "outputs" / "export").exists()


@pytest.mark.slow
def test_coreml_models_have_image_io_metadata_and_match_keras(tmp_path, published_model_path):
    import coremltools as ct

    from export.stage import export

    manifest = export(compose_export(tmp_path, published_model_path, [
        "export.sizes=[[64,64]]", "export.formats=[coreml]", "export.arbitrary_formats=[coreml]"]))
    entries = {(a["variant"], a["model"]): a for a in manifest["artifacts"]}
    assert set(entries) == {("baked", "transfer"), ("arbitrary", "transfer"), ("arbitrary", "predictor")}
    for entry in entries.values():
        assert entry["parity"]["psnr_db"] >= 40.0, entry
    baked = ct.models.MLModel(str(tmp_path / "outputs" / "export" / entries[("baked", "transfer")]["path"]), skip_model_load=True)
    spec = baked.get_spec()
    assert spec.specificationVersion >= 7  # iOS 16
    # The photo, and the optional style strength (default 1: tests/test_baked_strength.py).
    assert [(f.name, f.type.WhichOneof("Type")) for f in spec.description.input] == [
        ("content_image", "imageType"), ("strength", "multiArrayType")]
    assert [f.type.WhichOneof("Type") for f in spec.description.output] == ["imageType"]
    assert spec.description.output[0].name == "stylized_image"
    assert baked.author == "stylepipe" and "Apache-2.0" in baked.license
    assert baked.user_defined_metadata["style"] == "starry" and "style starry" in baked.short_description
    assert baked.user_defined_metadata["style_sha256"] == manifest["style_sha256"]
    assert "pixels 0..255" in baked.input_description["content_image"]
    from export.mil_executor import mil_ops_used

    ops = mil_ops_used(baked)  # read back from the saved package
    # The network's 16 convs and, per norm parameter, the 1x1 conv of the strength.
    assert ops["conv"] == 16 + 26 and ops["pad"] == 16 and ops["resize_nearest_neighbor"] == 2
