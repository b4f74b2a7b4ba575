"""The evaluation stage after an export: latency rows, quality, chart, grid, MLflow, device results."""

from __future__ import annotations

import json
import math
import shutil

import mlflow
import numpy as np
import pytest
from PIL import Image

from helpers import CACHE_DIR, REPO, tracking_uri

SIZES = "[[64,64],[64,128]]"


def compose(name, tmp_path, overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose(name, overrides=[
            f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path / 'outputs'}", f"paths.cache_dir={CACHE_DIR}",
            f"mlflow.tracking_uri={tracking_uri(tmp_path)}", *overrides])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, published_model_path):
    from export.stage import export

    tmp_path = tmp_path_factory.mktemp("evaluate")
    export(compose("export", tmp_path, [f"export.model_path={published_model_path}", f"export.sizes={SIZES}",
                                        "export.parity_photos=1", "export.formats=[frozen_graph,tflite_fp16]", "export.style=starry",
                                        "export.arbitrary_formats=[tflite_fp16]"]))
    return tmp_path


def write_device_results(path, **override):
    data = {"device": "iPhone 12", "source": "Bender app", "measurements": [
        {"format": "bender", "variant": "baked", "runtime": "bender_metal", "threads": None, "height": 384,
         "width": 768, "median_ms": 70.0, "p90_ms": 74.0, "runs": 50}]}
    data.update(override)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.slow
def test_evaluate_writes_latency_quality_chart_grid_and_mlflow(exported, tmp_path):
    from evaluation.stage import evaluate

    phone = write_device_results(tmp_path / "phone.json")
    extra = tmp_path / "unseen"
    extra.mkdir()
    shutil.copy(REPO / "data" / "evaluation" / "quokka.jpg", extra)
    metrics = evaluate(compose("evaluate", exported, [f"evaluate.sizes={SIZES}", "evaluate.runs=2", "evaluate.warmup=1",
                                                      "evaluate.quality_photos=1", f"evaluate.extra_photos_dir={extra}",
                                                      f"device_results={phone}"]))
    out = exported / "outputs" / "evaluate"
    assert json.loads((out / "metrics.json").read_text())["latency"] == metrics["latency"]
    rows = {(r["format"], r["threads"], r["height"], r["width"]) for r in metrics["latency"] if r["device"] == "host"}
    for h, w in ((64, 64), (64, 128)):
        assert {("tflite_fp16", 1, h, w), ("tflite_fp16", 2, h, w), ("tflite_fp32", 1, h, w), ("frozen_graph", None, h, w)} <= rows
    assert all(r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["runs"] == 2
               for r in metrics["latency"] if r["device"] == "host")
    assert [r["device"] for r in metrics["latency"] if r["device"] != "host"] == ["iPhone 12"]
    assert {s["format"] for s in metrics["skipped"]} == {"magenta_published_tflite_fp16"}  # only 384x384
    q = metrics["quality"]["formats"]
    assert {"keras", "magenta_published"} <= set(q) and q["keras"]["style_loss"] > 0
    for name in ("latency.png", "stylized_grid.png"):
        assert Image.open(out / name).size[0] > 200
    # The measures independent of the training loss, for every format and the photo itself.
    measures = ("style_distance", "style_distance_relative", "palette_distance", "structure_similarity")
    identity = metrics["quality"]["identity"]
    assert identity["style_distance_relative"] == pytest.approx(1.0) and identity["structure_similarity"] == pytest.approx(1.0)
    photo = next(iter(identity["per_photo"]))  # the held-out photo first, then the extra folder's
    assert list(identity["per_photo"]) == [photo, "quokka"] and photo != "quokka"
    assert (metrics["quality"]["photos"], metrics["quality"]["heldout_photos"], metrics["quality"]["extra_photos"]) == (2, 1, 1)
    summary = json.loads((out / "quality_summary.json").read_text())
    for name in ("identity", *q):
        scores = identity if name == "identity" else q[name]
        assert all(math.isfinite(scores[m]) and summary[f"{name}.{m}"] == pytest.approx(scores[m], abs=1e-4) for m in measures)
        assert list(scores["per_photo"]) == [photo, "quokka"]
        assert scores["style_distance_relative"] == pytest.approx(
            sum(p["style_distance_relative"] for p in scores["per_photo"].values()) / 2)
    assert q["magenta_published"]["style_distance_relative"] < 1.0  # the published model styles the photo
    side = Image.open(out / "side_by_side" / f"{photo}.png")
    assert side.size[0] == 3 * 384 and side.size[1] > 384  # photo | published | ours, labelled above
    mlflow.set_tracking_uri(f"sqlite:///{exported / 'mlflow.db'}")
    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert any(k.startswith("latency_ms.tflite_fp16.litert_xnnpack.t2.64x128") for k in run.data.metrics)
    assert any(k.startswith("latency_ms.iPhone_12.bender") for k in run.data.metrics)
    assert {f"{m}.{name}" for m in measures for name in ("identity", *q)} <= set(run.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"latency.png", "stylized_grid.png", "metrics.json", "side_by_side"} <= artifacts
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "side_by_side")} == {
        f"side_by_side/{photo}.png", "side_by_side/quokka.png"}


def test_extra_photos_are_read_in_order_and_bad_folders_are_one_line(tmp_path):
    """evaluate.extra_photos_dir: every image of the folder and below, sorted, named by stem; an empty folder,
    a name that another scored photo already has, and a broken file each stop with one line naming the input."""
    from evaluation.stage import extra_photos
    from training.data.datasets import DataError

    folder = tmp_path / "unseen"
    (folder / "more").mkdir(parents=True)
    data = {"min_side": 64, "max_pixels": 50_000_000}
    with pytest.raises(DataError, match=rf"^evaluate.extra_photos_dir={folder}: no image files"):
        extra_photos(folder, ["chelsea"], data)
    shutil.copy(REPO / "data" / "evaluation" / "quokka.jpg", folder / "b_quokka.jpg")
    Image.new("RGB", (96, 80), (200, 10, 10)).save(folder / "more" / "a_red.png")
    names, images = extra_photos(folder, ["chelsea"], data)
    assert names == ["b_quokka", "a_red"]  # sorted by path: b_quokka.jpg before more/a_red.png
    assert images[1].shape == (80, 96, 3) and np.allclose(images[1][0, 0], [200 / 255, 10 / 255, 10 / 255], atol=1e-6)
    assert images[0].shape == (643, 960, 3) and 0.0 <= images[0].min() < images[0].max() <= 1.0
    with pytest.raises(DataError, match=r"^evaluate.extra_photos_dir=.*: photo name\(s\) b_quokka also name another"):
        extra_photos(folder, ["b_quokka"], data)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=rf"^evaluate.extra_photos_dir: {folder / 'broken.jpg'}"):
        extra_photos(folder, [], data)


@pytest.mark.parametrize("change, message", [
    ({"device": ""}, "device"),
    ({"measurements": []}, "measurements"),
    ({"measurements": [{"format": "bender", "median_ms": 70.0}]}, "variant"),
])
def test_device_results_are_validated(tmp_path, change, message):
    from evaluation.device_results import DeviceResultsError, load

    with pytest.raises(DeviceResultsError, match=message):
        load(write_device_results(tmp_path / "bad.json", **change))


@pytest.mark.slow
def test_compared_exports_get_a_row_per_model_with_ratios_and_measures(published_model_path, tmp_path):
    """A tiny realtime model's export evaluated with the published model's export as `evaluate.compare` (as a
    fast model beside its teacher): LiteRT fp16 rows per model, alternating with the published baseline at
    384x384, each with its ratio to it; GFLOP and activation MB per model; quality measures per model; the
    side-by-side shows both models; report.md holds the tables."""
    from evaluation.stage import evaluate
    from export.stage import export
    from helpers import TINY_TRAINING, compose_train
    from training.loop.train import train

    train(compose_train(["style=starry", "model=realtime", "experiment=smoke", *TINY_TRAINING, "trainer.steps=2",
                         "loss_network.weights=null", "data.heldout_count=1"], tmp_path))
    size = ["export.sizes=[[384,384]]", "export.parity_photos=1", "export.formats=[tflite_fp16]",
            "export.arbitrary_formats=[]", "export.style=starry"]
    export(compose("export", tmp_path, size))
    teacher_dir = tmp_path / "outputs" / "export-teacher"
    export(compose("export", tmp_path, [f"export.model_path={published_model_path}", f"export.output_dir={teacher_dir}", *size]))

    metrics = evaluate(compose("evaluate", tmp_path, ["evaluate.sizes=[[384,384]]", "evaluate.runs=2", "evaluate.warmup=1",
                                                      "evaluate.quality_photos=1", f"evaluate.compare=[{teacher_dir}]"]))
    fp16 = {(r["model"], r["threads"]): r for r in metrics["latency"] if r["runtime"] == "litert_xnnpack"
            and r["format"] != "tflite_fp32"}
    teacher = metrics["models"][-1]["model"]  # the published weights' training-free export: named by its folder
    assert set(fp16) == {(m, t) for m in ("realtime", teacher, "magenta_published_fp16") for t in (1, 2)}
    for (model, threads), row in fp16.items():
        published = fp16[("magenta_published_fp16", threads)]["median_ms"]
        assert row["ratio_to_published"] == pytest.approx(row["median_ms"] / published) and not row["published_estimated"]
    costs = {c["model"]: c for c in metrics["models"]}
    assert set(costs) == {"realtime", teacher} and costs["realtime"]["gflop"] < costs[teacher]["gflop"] / 3
    assert set(metrics["quality"]["models"]) == {"realtime", teacher, "magenta_published_fp16"}
    report = (tmp_path / "outputs" / "evaluate" / "report.md").read_text()
    assert "| realtime | tflite_fp16 | 384x384 | 2 |" in report and f"| {teacher} | tflite_fp16 |" in report
    photo = next(iter(metrics["quality"]["identity"]["per_photo"]))
    assert Image.open(tmp_path / "outputs" / "evaluate" / "side_by_side" / f"{photo}.png").size[0] == 4 * 384


def test_a_compared_folder_without_an_export_is_one_line(exported, tmp_path):
    from evaluation.stage import evaluate
    from training.errors import StylepipeError

    with pytest.raises(StylepipeError, match=rf"^evaluate.compare: {tmp_path} holds no export \(manifest.json missing\)"):
        evaluate(compose("evaluate", exported, [f"evaluate.compare=[{tmp_path}]"]))


def test_every_evaluation_photo_is_attributed_and_no_training_config_reads_them():
    """data/evaluation: one ATTRIBUTION.md row per image, and no data config points into the folder."""
    from training.data.datasets import find_images

    folder = REPO / "data" / "evaluation"
    files = {path.name for path in find_images(folder, "data/evaluation")}
    rows = {line.split("|")[1].strip() for line in (folder / "ATTRIBUTION.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| file") and not line.startswith("| ---")}
    assert len(files) == 15 and files == rows
    for config in (REPO / "configs" / "data").glob("*.yaml"):
        assert "/evaluation" not in config.read_text(), config  # no content_dir under data/evaluation
