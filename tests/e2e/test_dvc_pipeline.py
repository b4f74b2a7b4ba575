"""`dvc repro` from a fresh clone: every stage in order, outputs at fixed paths, the committed dvc.lock
reproduced (git status clean), metrics and plots, a second repro does nothing, one MLflow pipeline
run with the stage runs as children."""

from __future__ import annotations

import json
import subprocess

import mlflow
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STAGES = ["prepare", "import_magenta", "train", "export", "evaluate"]
STAGE_RUNS = {"prepare-vgg16-samples", "import-arbitrary-magenta_lite", "train-starry-magenta_lite",
              "export-starry-magenta_lite", "evaluate-starry-magenta_lite"}


def test_dvc_repro_runs_every_stage_once_and_then_nothing(dvc_pipeline):
    root, log = dvc_pipeline.path, dvc_pipeline.first_repro
    starts = [log.find(f"Running stage '{stage}'") for stage in STAGES]
    assert -1 not in starts and starts == sorted(starts), log[-3000:]
    print(f"dvc repro took {dvc_pipeline.repro_seconds:.0f} s")

    assert json.loads((root / "outputs/prepare/report.json").read_text())["content_photos"]["heldout"] > 0
    assert (root / "outputs/magenta_published/model.keras").is_file()
    train = json.loads((root / "outputs/train/metrics.json").read_text())
    assert (train["model"], train["style"]) == ("magenta_lite", "starry") and (root / "outputs/train/model.keras").is_file()
    manifest = json.loads((root / "outputs/export/manifest.json").read_text())
    assert {a["format"] for a in manifest["artifacts"]} >= {"tflite_fp16", "frozen_graph", "coreml", "bender"}
    assert all((root / "outputs/export" / a["path"]).exists() for a in manifest["artifacts"])
    summary = json.loads((root / "outputs/evaluate/latency_summary.json").read_text())
    tflite_keys = [k for k in summary if k.startswith("tflite_fp16.")]
    assert tflite_keys and all(summary[k] > 0 for k in tflite_keys)
    for name in ("metrics.json", "latency.png", "stylized_grid.png", "latency_plot.json", "quality_summary.json"):
        assert (root / "outputs/evaluate" / name).stat().st_size > 0
    assert list((root / "outputs/evaluate/side_by_side").glob("*.png"))
    # Outputs, the MLflow store and DVC's cache stay out of git, and every stage's outputs are the ones
    # the committed dvc.lock records: the repro leaves the clone as it was.
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout
    diff = subprocess.run(["git", "diff", "--", "dvc.lock"], cwd=root, capture_output=True, text=True).stdout
    assert changed == "", changed + diff[:6000]
    status = dvc_pipeline.dvc("status").stdout
    assert "Data and pipelines are up to date" in status, status

    # The latency and quality metrics and the latency plot are what DVC shows.
    metrics = dvc_pipeline.dvc("metrics", "show").stdout
    assert "latency_summary.json" in metrics and tflite_keys[0] in metrics, metrics
    assert "quality_summary.json" in metrics and "magenta_published.style_distance" in metrics, metrics
    plots = dvc_pipeline.dvc("plots", "show", "--json").stdout
    assert "latency_plot.json" in plots and "median_ms" in plots

    # One pipeline run, its stage runs as children, named by stage, style and model.
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["stylepipe"], output_format="list")
    pipelines = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert [p.info.run_name for p in pipelines] == ["pipeline-starry-magenta_lite"]
    assert pipelines[0].data.params["experiment"] == "smoke" and pipelines[0].info.status == "FINISHED"
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == pipelines[0].info.run_id}
    assert children == STAGE_RUNS
    assert len(runs) == len(STAGE_RUNS) + 1

    # A second repro runs nothing and logs nothing.
    second = dvc_pipeline.dvc("repro")
    assert "Running stage" not in second.stdout and "Data and pipelines are up to date" in second.stdout, second.stdout
    assert len(mlflow.search_runs(experiment_names=["stylepipe"], output_format="list")) == len(runs)

    # Changing one config file puts exactly the stages that read it out of date.
    evaluate_cfg = root / "configs/evaluate.yaml"
    original = evaluate_cfg.read_text()
    evaluate_cfg.write_text(original + "# edited\n")
    try:
        status = dvc_pipeline.dvc("status", "--json").stdout
    finally:
        evaluate_cfg.write_text(original)
    assert list(json.loads(status)) == ["evaluate"], status
    assert "configs/evaluate.yaml" in status
