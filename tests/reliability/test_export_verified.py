"""What evaluate loads is what export verified: the manifest's sha256 of the model and every artifact
is checked before anything is loaded or run, and a broken manifest is one `error:` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.manifest import ManifestError, artifact_sha256, read_manifest, verified_files
from reliability_helpers import error_lines, run_stage


def write_export(folder: Path) -> dict:
    """An export folder as the export stage lays it out: a model, a file artifact and a folder artifact."""
    folder.mkdir(parents=True)
    model = folder.parent / "model.keras"
    model.write_bytes(b"keras model bytes")
    (folder / "baked_starry_384x384.tflite").write_bytes(b"tflite bytes")
    package = folder / "baked_starry_384x384.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "weights.bin").write_bytes(b"weights")
    (package / "Manifest.json").write_text("{}")
    artifacts = [{"format": fmt, "variant": "baked", "model": "transfer", "path": path.name, "sha256": artifact_sha256(path)}
                 for fmt, path in (("tflite_fp16", folder / "baked_starry_384x384.tflite"), ("coreml", package))]
    manifest = {"model": str(model), "model_sha256": artifact_sha256(model), "style": "starry", "artifacts": artifacts}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_unchanged_files_are_verified(tmp_path):
    manifest = write_export(tmp_path / "export")
    files = verified_files(read_manifest(tmp_path / "export" / "manifest.json"), tmp_path / "export")
    assert files["model"] == Path(manifest["model"])
    assert {key[0] for key in files if key != "model"} == {"tflite_fp16", "coreml"}


@pytest.mark.parametrize("tamper, message", [
    (lambda d: (d / "baked_starry_384x384.tflite").write_bytes(b"another valid model"), "the tflite_fp16 artifact differs"),
    (lambda d: (d / "baked_starry_384x384.mlpackage" / "Data" / "weights.bin").write_bytes(b"other"), "the coreml artifact differs"),
    (lambda d: (d.parent / "model.keras").write_bytes(b"retrained since"), "the Keras model differs"),
    (lambda d: (d / "baked_starry_384x384.tflite").unlink(), "is missing"),
])
def test_a_file_changed_after_export_is_refused(tmp_path, tamper, message):
    write_export(tmp_path / "export")
    tamper(tmp_path / "export")
    with pytest.raises(ManifestError, match=message):
        verified_files(read_manifest(tmp_path / "export" / "manifest.json"), tmp_path / "export")


def test_an_artifact_path_outside_the_export_folder_is_refused(tmp_path):
    manifest = write_export(tmp_path / "export")
    manifest["artifacts"][0]["path"] = "../model.keras"
    with pytest.raises(ManifestError, match="leaves the export folder"):
        verified_files(manifest, tmp_path / "export")


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "not an export manifest"),
    ("{not json", "not a readable manifest"),
    ('{"model": "m", "model_sha256": "0", "style": "s", "artifacts": [{"path": "x"}]}', "artifacts list is malformed"),
])
def test_a_broken_manifest_is_named_with_what_is_wrong(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "manifest.json")


def test_evaluate_refuses_a_broken_manifest_in_one_line(tmp_path):
    manifest = tmp_path / "outputs" / "export" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    result = run_stage("evaluate", [], tmp_path)
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert errors and errors[0] == (f"error: {manifest}: not an export manifest (no model, model_sha256, style, artifacts); "
                                    "run `python -m pipelines.export` again"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def _graph_with(op: str):
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    node = graph.node.add()
    node.name, node.op = "content_image", "Placeholder"
    extra = graph.node.add()
    extra.name, extra.op = "payload", op
    return graph


def test_a_frozen_graph_with_a_file_writing_op_is_refused_before_import(tmp_path):
    from export.tf_graph import UnsafeGraphError, load_frozen_graph, run_frozen_graph

    path = tmp_path / "baked_starry_64x64.pb"
    path.write_bytes(_graph_with("WriteFile").SerializeToString())
    with pytest.raises(UnsafeGraphError, match=f"{path}: refused, it holds ops an exported stylizer never has: WriteFile"):
        load_frozen_graph(path)
    with pytest.raises(UnsafeGraphError, match="PyFunc"):  # also when a graph is run without going through a file
        run_frozen_graph(_graph_with("PyFunc"), {"content_image": np.zeros((1, 2, 2, 3))}, ["content_image"])
    path.write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(UnsafeGraphError, match="not a readable frozen graph"):
        load_frozen_graph(path)


@pytest.mark.slow
def test_the_exported_graphs_ops_are_all_allowed(tmp_path, published_model_path):
    # The allow-list holds every op the exporter writes (real export of the published model, frozen graph only).
    from export.stage import export
    from export.tf_graph import load_frozen_graph
    from test_export import compose_export

    manifest = export(compose_export(tmp_path, published_model_path, [
        "export.formats=[frozen_graph]", "export.arbitrary_formats=[frozen_graph]"]))
    for a in manifest["artifacts"]:
        load_frozen_graph(tmp_path / "outputs" / "export" / a["path"])
