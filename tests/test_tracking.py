"""The MLflow pipeline run: every stage run of one `dvc repro` is a child of one pipeline run (real dvc, real sqlite)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import mlflow
import pytest

from helpers import REPO

# A stage as the real ones open their run: mlflow_run with the composed config's mlflow and paths.
STAGE = textwrap.dedent("""
    import sys
    from omegaconf import OmegaConf
    from training.tracking import mlflow_run
    cfg = OmegaConf.create({"mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "stylepipe"},
                            "paths": {"root_dir": "."}})
    with mlflow_run(cfg, sys.argv[1], tags={"stage": sys.argv[1].split("-")[0]}):
        if sys.argv[2] == "fail":
            raise SystemExit("stage failed")
    open(sys.argv[1] + ".done", "w").close()
""")


def _project(tmp_path, second_cmd="ok"):
    """A dvc project of two stages running STAGE, with the repo's params.yaml choices."""
    (tmp_path / "stage.py").write_text(STAGE)
    (tmp_path / "params.yaml").write_text("style: starry\nmodel: magenta_lite\nexperiment: smoke\n")
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(f"""
        stages:
          train:
            cmd: python stage.py train-starry-magenta_lite ok
            params: [style, model, experiment]
            outs: [train-starry-magenta_lite.done]
          export:
            cmd: python stage.py export-starry-magenta_lite {second_cmd}
            deps: [train-starry-magenta_lite.done]
            outs: [export-starry-magenta_lite.done]
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    env.pop("STYLEPIPE_PIPELINE_RUN_ID", None)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    return env


def _runs(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["stylepipe"], output_format="list")
    return {r.info.run_name: r for r in runs}, runs


@pytest.mark.slow
def test_one_pipeline_run_per_dvc_repro_with_stage_runs_as_children(tmp_path):
    env = _project(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=tmp_path, env=env, check=True)
    by_name, runs = _runs(tmp_path)
    assert sorted(by_name) == ["export-starry-magenta_lite", "pipeline-starry-magenta_lite", "train-starry-magenta_lite"]
    pipeline = by_name["pipeline-starry-magenta_lite"]
    assert pipeline.data.params == {"style": "starry", "model": "magenta_lite", "experiment": "smoke"}
    assert pipeline.info.status == "FINISHED" and pipeline.data.tags["stage"] == "pipeline"
    for stage in ("train-starry-magenta_lite", "export-starry-magenta_lite"):
        assert by_name[stage].data.tags["mlflow.parentRunId"] == pipeline.info.run_id

    # A second invocation is a second pipeline run; a stage run outside dvc has no parent.
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q", "--force", "train"], cwd=tmp_path, env=env, check=True)
    subprocess.run([sys.executable, "stage.py", "evaluate-starry-magenta_lite", "ok"], cwd=tmp_path, env=env, check=True)
    _, runs = _runs(tmp_path)
    pipelines = [r for r in runs if r.info.run_name == "pipeline-starry-magenta_lite"]
    assert len(pipelines) == 2
    second = next(r for r in pipelines if r.info.run_id != pipeline.info.run_id)
    children = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == second.info.run_id]
    assert children == ["train-starry-magenta_lite"]
    alone = next(r for r in runs if r.info.run_name == "evaluate-starry-magenta_lite")
    assert "mlflow.parentRunId" not in alone.data.tags


@pytest.mark.slow
def test_failed_stage_marks_the_pipeline_run_failed_and_env_var_overrides(tmp_path):
    env = _project(tmp_path, second_cmd="fail")
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    by_name, _ = _runs(tmp_path)
    assert by_name["pipeline-starry-magenta_lite"].info.status == "FAILED"
    assert by_name["export-starry-magenta_lite"].info.status == "FAILED"
    assert by_name["train-starry-magenta_lite"].info.status == "FINISHED"

    # STYLEPIPE_PIPELINE_RUN_ID names the parent, even outside dvc.
    parent = mlflow.MlflowClient().create_run(by_name["train-starry-magenta_lite"].info.experiment_id, run_name="mine")
    subprocess.run([sys.executable, "stage.py", "evaluate-starry-magenta_lite", "ok"], cwd=tmp_path, check=True,
                   env={**env, "STYLEPIPE_PIPELINE_RUN_ID": parent.info.run_id})
    by_name, _ = _runs(tmp_path)
    assert by_name["evaluate-starry-magenta_lite"].data.tags["mlflow.parentRunId"] == parent.info.run_id


@pytest.mark.parametrize("artifact_dir", [None, "chosen"])
def test_run_artifacts_go_beside_the_store_not_into_the_working_folder(tmp_path, monkeypatch, artifact_dir):
    from omegaconf import OmegaConf

    from training.tracking import mlflow_run

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's own default would be ./mlruns here
    store = tmp_path / "store"
    store.mkdir()
    chosen = None if artifact_dir is None else str(tmp_path / artifact_dir)
    cfg = OmegaConf.create({"mlflow": {"tracking_uri": f"sqlite:///{store / 'mlflow.db'}", "experiment": "stylepipe",
                                       "artifact_dir": chosen}, "paths": {"root_dir": str(tmp_path)}})
    with mlflow_run(cfg, "train-x") as run:
        mlflow.log_text("hello", "notes/hello.txt")
    expected = store / "mlruns" if chosen is None else tmp_path / artifact_dir
    assert [p.read_text() for p in expected.rglob("hello.txt")] == ["hello"]
    assert list(elsewhere.iterdir()) == []
    assert run.info.artifact_uri.startswith(expected.resolve().as_uri())


def test_a_parent_run_missing_from_the_store_is_left_out(tmp_path):
    """A stage whose input was made with another tracking store (its recorded run id is not in this one)
    starts its run without a parent instead of failing in MLflow."""
    import mlflow
    from omegaconf import OmegaConf

    from training.tracking import mlflow_run

    cfg = OmegaConf.create({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "stylepipe"},
                            "run_name": "orphan"})
    with mlflow_run(cfg, "orphan", parent_run_id="0123456789abcdef0123456789abcdef") as run:
        run_id = run.info.run_id
    stored = mlflow.MlflowClient().get_run(run_id)
    assert stored.info.status == "FINISHED" and "mlflow.parentRunId" not in stored.data.tags


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="Linux: where the kernel's boot time follows the wall clock")
def test_a_process_keeps_its_name_when_the_wall_clock_is_stepped(monkeypatch):
    """Stages find their `dvc repro`'s pipeline run, and killed runs are told from running ones, by
    `<pid>-<start>`. The kernel's boot time follows the wall clock (NTP, a VM's clock steps), so a start
    in wall-clock time moved between stages and split one repro into several pipeline runs."""
    import psutil
    from psutil import _pslinux

    from training.tracking import _process_id

    first = _process_id(os.getpid())
    steps = iter(range(5, 500, 5))
    real_boot_time = _pslinux.boot_time
    monkeypatch.setattr(_pslinux, "boot_time", lambda: real_boot_time() + next(steps))  # the clock stepped
    assert psutil.Process().create_time() != psutil.Process().create_time()  # what psutil then reports
    assert _process_id(os.getpid()) == first
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _process_id(child.pid) not in (None, first)  # another process, another name
    finally:
        child.kill()
        child.wait()
    assert _process_id(child.pid) is None  # ended
