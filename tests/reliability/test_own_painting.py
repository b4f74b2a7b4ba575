"""Your own painting, by path: train for it, export bakes it, and mistakes end in one line.

What the tests guard: `style.image=PATH` trains for a painting the project does not ship and
records it (name, path, sha256, settings) in style.json beside model.keras:
test_training_by_path_records_the_painting; a plain export bakes that painting and names it in the
manifest, MLflow and the TFLite metadata: test_plain_export_bakes_the_trained_painting; an export of
another style is refused: test_exporting_another_style_is_refused_in_one_line; a missing or
undecodable `style.image`: test_bad_style_image_is_one_line; evaluate scores against the exported
painting: test_evaluate_scores_against_the_exported_painting.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from PIL import Image

from helpers import STYLE_DIR
from reliability_helpers import TINY, error_lines, run_stage

PAINTING_NAME = "harbour_at_dusk"  # not a configs/style/ name, not a shipped file


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`python -m pipelines.train style.image=<a painting the project does not ship>` at toy sizes."""
    tmp = tmp_path_factory.mktemp("own_painting")
    painting = tmp / "paintings" / f"{PAINTING_NAME}.png"
    painting.parent.mkdir()
    # A shipped painting, turned and re-encoded: other pixels, other bytes than anything in data/samples.
    Image.open(STYLE_DIR / "great_wave.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_90).save(painting)
    result = run_stage("train", [*TINY, "trainer.steps=2", f"style.image={painting}"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, painting


@pytest.mark.slow
def test_training_by_path_records_the_painting(trained):
    tmp, painting = trained
    train_dir = tmp / "outputs" / "train"
    record = json.loads((train_dir / "style.json").read_text())
    assert record["name"] == PAINTING_NAME and record["single"] is True
    assert record["image"] == str(painting.resolve()) and record["sha256"] == sha256(painting)
    assert record["images"] == [{"name": PAINTING_NAME, "path": str(painting.resolve()), "sha256": sha256(painting)}]
    assert record["strength"] == 5.0 and record["texture_size"] == 64  # style.strength, style.texture_size (data.style_size)
    metrics = json.loads((train_dir / "metrics.json").read_text())
    assert metrics["style"] == PAINTING_NAME and metrics["styles"] == [PAINTING_NAME]


def test_style_name_can_be_given(tmp_path):
    """style.name=... names the painting instead of its file's stem (config only: the same resolution
    training runs through)."""
    from helpers import compose_train
    from training.config import resolve_style
    from training.data.datasets import style_paths

    painting = tmp_path / "my painting.jpg"
    painting.write_bytes((STYLE_DIR / "bricks.jpg").read_bytes())
    by_path = {"my painting": painting.resolve()}
    for overrides, name, paths in (
            ([f"style.image={painting}"], "my painting", by_path),
            ([f"style.image={painting}", "style.name=wall"], "wall", {"wall": painting.resolve()}),
            (["style=great_wave", f"style.image={painting}"], "my painting", by_path),
            ([f"style.dir={tmp_path}"], tmp_path.name, {"my painting": painting}),  # a folder: a multi-style model
            (["style=all", f"style.dir={tmp_path}"], "all", {"my painting": painting}),
            (["style=great_wave"], "great_wave", {"great_wave": STYLE_DIR / "great_wave.jpg"})):
        cfg = compose_train(overrides, tmp_path)
        resolve_style(cfg)
        assert cfg.style.name == name and cfg.run_name.startswith(f"train-{name}-"), overrides
        assert style_paths(cfg.style)[0] == paths, overrides


@pytest.mark.parametrize("kind", ["missing", "undecodable"])
def test_bad_style_image_is_one_line(tmp_path, kind):
    """A missing file stops before any work; a file that is no image stops when it is decoded. Both in
    one line naming style.image and the path."""
    path = tmp_path / "nowhere" / "painting.jpg"
    if kind == "undecodable":
        path = tmp_path / "painting.jpg"
        path.write_text("this is not a jpeg")
    start = time.perf_counter()
    result = run_stage("train", [*TINY, f"style.image={path}"], tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: style.image={path}: "), line
    if kind == "missing":
        assert "no such file" in line and "style.image=path/to/painting.jpg" in line, line
        assert result.stderr.strip().splitlines() == [line]
        assert not (tmp_path / "outputs").exists() and time.perf_counter() - start < 30


EXPORT_FAST = ["export.formats=[tflite_fp16]", "export.arbitrary_formats=[]", "export.sizes=[[64,64]]",
               "export.parity_photos=1"]


@pytest.mark.slow
def test_plain_export_bakes_the_trained_painting(trained):
    """`python -m pipelines.export` with no style named bakes the painting the model was trained for
    (it used to bake Starry Night into any model, exit 0), and every place that names a style names it."""
    import mlflow

    from export.tflite import read_metadata
    from training.tracking import RUN_ID_RECORD, recorded_run_id

    tmp, painting = trained
    result = run_stage("export", EXPORT_FAST, tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp / "outputs" / "export"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["style"] == PAINTING_NAME and manifest["trained_style"] == PAINTING_NAME
    assert manifest["style_sha256"] == sha256(painting) and manifest["style_source"] == "trained"
    [artifact] = manifest["artifacts"]
    assert artifact["style"] == PAINTING_NAME and artifact["path"] == f"baked_{PAINTING_NAME}_64x64.tflite"
    assert read_metadata(out / artifact["path"]) == {"style": PAINTING_NAME, "style_sha256": sha256(painting),
                                                     "variant": "baked", "model": "transfer"}
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["manifest.json", RUN_ID_RECORD, artifact["path"]])
    run = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}").get_run(recorded_run_id(out))
    assert run.data.tags["style"] == PAINTING_NAME and run.data.params["style_sha256"] == sha256(painting)


def test_exporting_another_style_is_refused_in_one_line(trained):
    """A model trained for one painting refuses to bake another (export.style=starry), before any work,
    and says how to do it knowingly; the override passes the check."""
    tmp, _ = trained
    model = tmp / "outputs" / "train" / "model.keras"
    result = run_stage("export", [f"export.model_path={model}", "export.style=starry",
                                  "export.output_dir=${paths.output_dir}/export_starry", *EXPORT_FAST], tmp)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == error_lines(result.stderr), result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: export.style=starry is not the painting {model} was trained for ({PAINTING_NAME}, "), line
    assert line.endswith("or add export.allow_style_mismatch=true to bake this one anyway"), line
    assert not (tmp / "outputs" / "export_starry").exists()


def test_which_painting_an_export_bakes(trained, tmp_path):
    """export/style.py on the trained model: its painting by path (another copy) is the trained style;
    the mismatch override; a model with no recorded style needs one named."""
    import shutil

    from export.style import baked_style
    from test_export import compose_export
    from training.errors import ConfigError

    tmp, painting = trained
    model = tmp / "outputs" / "train" / "model.keras"
    copy = tmp_path / "copy.png"
    shutil.copy(painting, copy)
    style = baked_style(compose_export(tmp_path, model, [f"export.style_image={copy}", "export.style=null"]))
    assert (style["name"], style["source"], style["sha256"]) == (PAINTING_NAME, "export.style_image", sha256(painting))
    style = baked_style(compose_export(tmp_path, model, ["export.style=great_wave", "export.allow_style_mismatch=true"]))
    assert (style["name"], style["trained"]) == ("great_wave", PAINTING_NAME)
    with pytest.raises(ConfigError, match="export.style=great_wave is not the painting"):
        baked_style(compose_export(tmp_path, model, ["export.style=great_wave"]))
    bare = tmp_path / "imported" / "model.keras"  # no style.json beside it, as import_magenta writes
    bare.parent.mkdir()
    shutil.copy(model, bare)
    with pytest.raises(ConfigError, match=r"^export.style is not set and .* records no trained style .*export.style=NAME "
                                          r"\(one of .*starry.*\) or export.style_image=PATH$"):
        baked_style(compose_export(tmp_path, bare, ["export.style=null"]))


def test_evaluate_scores_against_the_exported_painting(tmp_path):
    """evaluation.stage.baked_style_image: the manifest's painting while it is the one exported; a
    changed or missing one is refused; a manifest from before exports recorded it names a configs/style."""
    from evaluation.stage import baked_style_image
    from export.manifest import ManifestError
    from test_export import compose_export

    paths = compose_export(tmp_path, tmp_path / "model.keras").paths
    painting = tmp_path / "mine.png"
    Image.open(STYLE_DIR / "bricks.jpg").save(painting)
    manifest = {"style": "mine", "style_image": str(painting), "style_sha256": sha256(painting)}
    assert baked_style_image(manifest, paths) == painting
    Image.open(STYLE_DIR / "bricks.jpg").rotate(180).save(painting)
    with pytest.raises(ManifestError, match=f"^{painting}: the painting baked by the export has changed since the export"):
        baked_style_image(manifest, paths)
    painting.unlink()
    with pytest.raises(ManifestError, match="is missing"):
        baked_style_image(manifest, paths)
    assert baked_style_image({"style": "starry"}, paths) == STYLE_DIR / "starry_night.jpg"
