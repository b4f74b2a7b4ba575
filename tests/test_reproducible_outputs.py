"""Stage outputs are the same bytes for the same content, so a `dvc repro` anywhere writes the dvc.lock
that is committed: .keras archives, protobuf files, Core ML packages, recorded paths; the MLflow run
of a stage is recorded beside its outputs, not in them."""

from __future__ import annotations

import json
import time
import zipfile

import keras
import numpy as np


def _model_with_a_shared_initializer(seed: int = 0) -> keras.Model:
    """Two layers sharing one initializer: Keras names it by its memory address when saving."""
    initializer = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((4,), name="x")  # named: Keras numbers unnamed ones per process
    hidden = keras.layers.Dense(3, kernel_initializer=initializer, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer=initializer, name="out")(hidden), name="shared")
    for variable in model.weights:
        variable.assign(np.full(variable.shape, 0.5, np.float32))
    return model


def test_the_same_model_saved_twice_is_the_same_keras_file(tmp_path):
    from training.fileio import save_keras_atomically

    first = save_keras_atomically(_model_with_a_shared_initializer(), tmp_path / "a.keras")
    time.sleep(1.1)  # zip entries hold times to the second
    second = save_keras_atomically(_model_with_a_shared_initializer(), tmp_path / "b.keras")

    assert first.read_bytes() == second.read_bytes()
    assert b'"shared_object_id": 0' in zipfile.ZipFile(first).read("config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras"]  # no temporary file left
    reloaded = keras.models.load_model(first)
    assert [w.tolist() for w in reloaded.get_weights()] == [w.tolist() for w in _model_with_a_shared_initializer().get_weights()]


def test_a_reproducible_keras_archive_keeps_its_entries_and_the_keras_version(tmp_path):
    from training.fileio import ZIP_EPOCH, reproducible_keras_archive

    model = _model_with_a_shared_initializer()
    model.save(tmp_path / "plain.keras")
    plain = zipfile.ZipFile(tmp_path / "plain.keras")
    (tmp_path / "fixed.keras").write_bytes(reproducible_keras_archive((tmp_path / "plain.keras").read_bytes()))
    fixed = zipfile.ZipFile(tmp_path / "fixed.keras")

    assert [e.filename for e in fixed.infolist()] == [e.filename for e in plain.infolist()]
    assert {e.date_time for e in fixed.infolist()} == {ZIP_EPOCH}
    assert fixed.read("model.weights.h5") == plain.read("model.weights.h5")
    metadata = json.loads(fixed.read("metadata.json"))
    assert metadata == {"keras_version": keras.__version__, "date_saved": "1980-01-01@00:00:00"}


def _saved_mlpackage(path, metadata: dict, earlier_consts: int = 0):
    """A small Core ML program saved as a package, its user metadata set in the given order; its
    unnamed consts numbered after `earlier_consts` others (coremltools' counter runs on)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))], opset_version=ct.target.iOS16)
    def program(x):
        for _ in range(earlier_consts):
            mb.const(val=np.float32(0.0))  # unused: dropped by the conversion's passes
        return mb.relu(x=mb.sub(x=mb.mul(x=x, y=mb.const(val=np.float32(2.0))), y=mb.const(val=np.float32(1.0))), name="y")

    mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16)
    mlmodel.user_defined_metadata.update(metadata)
    mlmodel.save(str(path))
    return path


def _package_files(package) -> dict[str, bytes]:
    return {p.relative_to(package).as_posix(): p.read_bytes() for p in sorted(package.rglob("*")) if p.is_file()}


def test_a_core_ml_package_saved_twice_is_the_same_bytes_and_still_loads(tmp_path):
    """coremltools names a package's items by random UUIDs, numbers the consts it adds from a counter,
    writes metadata maps in hash order and stamps the day of conversion: after reproducible_mlpackage
    two saves are the same files, and the program runs as before."""
    import coremltools as ct

    from export.manifest import COREML_CONVERSION_DATE, artifact_sha256, reproducible_mlpackage
    from export.mil_executor import run_mil_program

    first = _saved_mlpackage(tmp_path / "a.mlpackage", {"style": "starry", "variant": "baked", "model": "transfer"})
    second = _saved_mlpackage(tmp_path / "b.mlpackage", {"model": "transfer", "variant": "baked", "style": "starry"},
                              earlier_consts=3)
    as_saved = _package_files(first), _package_files(second)
    assert as_saved[0]["Manifest.json"] != as_saved[1]["Manifest.json"]  # random item ids
    assert as_saved[0]["Data/com.apple.CoreML/model.mlmodel"] != as_saved[1]["Data/com.apple.CoreML/model.mlmodel"]
    for package in (first, second):
        reproducible_mlpackage(package)

    assert _package_files(first) == _package_files(second) and artifact_sha256(first) == artifact_sha256(second)
    spec = ct.models.MLModel(str(first), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    metadata = dict(spec.description.metadata.userDefined)
    assert {k: metadata.get(k) for k in ("style", "variant", "model")} == {"style": "starry", "variant": "baked", "model": "transfer"}
    assert COREML_CONVERSION_DATE not in metadata and metadata["com.github.apple.coremltools.version"] == ct.__version__
    x = np.linspace(-1, 1, 3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    [y] = run_mil_program(ct.models.MLModel(str(first), skip_model_load=True), {"x": x}).values()
    np.testing.assert_allclose(y, np.maximum(2 * x - 1, 0), atol=1e-3)


def test_recorded_paths_are_relative_to_the_working_directory_inside_it(tmp_path, monkeypatch):
    from training.fileio import recorded_path

    (tmp_path / "repo" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    assert recorded_path("data/painting.jpg") == "data/painting.jpg"
    assert recorded_path(tmp_path / "repo" / "data" / "painting.jpg") == "data/painting.jpg"
    assert recorded_path(tmp_path / "elsewhere.jpg") == str((tmp_path / "elsewhere.jpg").resolve())


def test_the_mlflow_run_is_recorded_beside_the_outputs_and_dvc_leaves_it_out(tmp_path):
    import subprocess
    import sys

    from export.stage import training_metadata
    from helpers import REPO
    from training.tracking import RUN_ID_RECORD, record_run_id, recorded_run_id

    assert recorded_run_id(tmp_path) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"model": "magenta_lite"}))
    record_run_id(tmp_path, "0123abcd")
    assert recorded_run_id(tmp_path) == "0123abcd"
    assert training_metadata(tmp_path) == {"model": "magenta_lite", "mlflow_run_id": "0123abcd"}

    # What records one run on one machine inside the stages' output folders is not hashed into dvc.lock.
    records = [f"outputs/train/{RUN_ID_RECORD}", "outputs/train/.hydra/hydra.yaml", "outputs/train/train.log",
               "outputs/magenta_published/import_magenta.log", f"outputs/export/{RUN_ID_RECORD}",
               "outputs/export/.hydra-run/export.log"]
    kept = ["outputs/train/model.keras", "outputs/train/metrics.json", "outputs/train/run.json", "outputs/export/manifest.json"]
    result = subprocess.run([sys.executable, "-m", "dvc", "check-ignore", *records, *kept], cwd=REPO,
                            capture_output=True, text=True)
    assert result.stdout.split() == records, result.stdout + result.stderr
