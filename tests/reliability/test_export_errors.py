"""Export: bad model files and an artifact failing parity end in clear errors, and the artifacts
of an earlier good export stay byte for byte as they were.

What each test guards: a model file that is not a stylepipe model, a truncated `.keras` file, a file
that is not a model at all, an artifact failing parity: test_failure_leaves_earlier_artifacts_untouched;
the same through the CLI (one line, exit 1): test_truncated_model_is_a_one_line_cli_error; an export
SIGKILLed before each step of its install (tests/reliability/export_killer.py) leaves the old set or
the new one, whole: test_an_export_killed_at_any_step_of_its_install_leaves_one_whole_set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import keras
import pytest

from helpers import CACHE_DIR, REPO, compose_export as compose_export_config, tracking_uri
from reliability_helpers import error_lines, run_stage
from training.errors import StylepipeError

FAST = ["export.style=starry", "export.sizes=[[64,64]]", "export.parity_photos=1", "export.formats=[frozen_graph,tflite_fp16]",
        "export.arbitrary_formats=[]"]


def compose_export(tmp_path, model_path, overrides=()):
    return compose_export_config(tmp_path, model_path, [*FAST, *overrides])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, published_model_path):
    """A good export of Magenta's published weights, and the bytes of everything it wrote."""
    from export.stage import export

    tmp = tmp_path_factory.mktemp("export")
    export(compose_export(tmp, published_model_path))
    return tmp, snapshot(tmp / "outputs" / "export")


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def bad_model(kind, folder, published_model_path):
    path = folder / f"{kind}.keras"
    if kind == "truncated":
        data = published_model_path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_a_model":
        path.write_bytes(b"not a zip")
    elif kind == "other_keras_model":  # a real Keras model, but not a stylizer
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]).save(path)
    return path


@pytest.mark.parametrize("kind, match", [
    ("truncated", "not a readable Keras model file"),
    ("not_a_model", "not a readable Keras model file"),
    ("other_keras_model", "not a stylepipe stylizer"),
    ("parity", "export failed parity, previous artifacts left untouched: .*tflite_fp16"),
])
@pytest.mark.slow
def test_failure_leaves_earlier_artifacts_untouched(exported, published_model_path, tmp_path, kind, match):
    """Guards load_stylizer's checks and the staging folder: each failure is a StylepipeError naming the
    problem, and the earlier export's files (artifacts and manifest) are unchanged, no staging left."""
    from export.stage import export

    tmp, before = exported
    if kind == "parity":  # a good model, but a threshold no TFLite file can meet
        cfg = compose_export(tmp, published_model_path, ["export.thresholds.tflite_fp16=1000"])
    else:
        cfg = compose_export(tmp, bad_model(kind, tmp_path, published_model_path))
    with pytest.raises(StylepipeError, match=match) as err:
        export(cfg)
    assert "\n" not in str(err.value)
    assert snapshot(tmp / "outputs" / "export") == before
    assert not list((tmp / "outputs").glob(".export-staging-*"))


def test_truncated_model_is_a_one_line_cli_error(tmp_path, published_model_path):
    """Guards the CLI path: exit 1, one `error:` line naming the file, no traceback."""
    model = bad_model("truncated", tmp_path, published_model_path)
    result = run_stage("export", [f"export.model_path={model}", *FAST], tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    [line] = error_lines(result.stderr)
    assert line == (f"error: {model}: not a readable Keras model file (not a whole .keras zip archive: truncated, "
                    "damaged or another format)") and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs" / "export" / "manifest.json").exists()


def test_an_export_killed_between_its_two_renames_is_put_back(tmp_path):
    from export.stage import recover_interrupted_install

    out = tmp_path / "outputs" / "export"
    previous = out.with_name(".export.previous")  # the old export, renamed away; the new one not yet in place
    previous.mkdir(parents=True)
    (previous / "manifest.json").write_text("{}")
    dead = tmp_path / "outputs" / ".export-staging-999999999-abc"  # no process has this pid
    (dead / "x").mkdir(parents=True)
    alive = tmp_path / "outputs" / f".export-staging-{os.getpid()}-abc"  # a running export's own staging
    alive.mkdir()
    done = recover_interrupted_install(out)
    assert (out / "manifest.json").read_text() == "{}" and not previous.exists()
    assert not dead.exists() and alive.exists()
    assert done == [f"restored {out} from .export.previous", f"removed {dead.name}"]
    previous.mkdir()  # the swap finished, its cleanup was cut short
    assert recover_interrupted_install(out) == ["removed .export.previous"] and out.exists() and not previous.exists()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["hidden", "old_away", "new_in", "cleanup"])
def test_an_export_killed_at_any_step_of_its_install_leaves_one_whole_set(tmp_path, published_model_path, exported, point):
    """Fault injection: a second export (another size) SIGKILLed just before each step of its install over
    the first (a copy of the module's export); what the next start recovers is either the first export,
    byte for byte, or the second, complete and verified against its manifest; no staging or old folder is left."""
    import shutil

    from export.manifest import read_manifest, verified_files
    from export.stage import recover_interrupted_install

    args = [f"export.model_path={published_model_path}", *FAST]
    shutil.copytree(exported[0] / "outputs", tmp_path / "outputs")  # the first export: the module's, as it was
    out = tmp_path / "outputs" / "export"
    visible = lambda: {k: v for k, v in snapshot(out).items() if not k.parts[0].startswith(".")}  # noqa: E731
    first = visible()

    second = [*args, "export.sizes=[[64,96]]"]
    cmd = [sys.executable, str(REPO / "tests" / "reliability" / "export_killer.py"), point,
           f"paths.output_dir={tmp_path / 'outputs'}", f"paths.cache_dir={CACHE_DIR}",
           f"mlflow.tracking_uri={tracking_uri(tmp_path)}", *second]
    killed = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    recover_interrupted_install(out)
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".export")]
    assert leftovers == [], leftovers
    manifest = read_manifest(out / "manifest.json")
    verified_files(manifest, out)  # every artifact the manifest names is there, as exported
    sizes = {tuple(a["inputs"][0]["shape"][1:3]) for a in manifest["artifacts"]}
    if point != "cleanup":  # the new folder was not in place yet: the old one is put back
        assert visible() == first
    else:
        assert visible() != first and (64, 96) in sizes, sizes
