"""A folder that cannot take writes: read-only, on a full disk, or filling up during the stage.

Each case runs the real CLI in its own mount namespace (`unshare`), where a real folder is bind-mounted
read-only or a small tmpfs stands in for a full disk: the kernel's own errors, no mocks. The stage ends
in one `error:` line naming the folder or file and the cause, and what was written before is unchanged.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from reliability_helpers import TINY, error_lines, run_stage


def _namespaces_work() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare (user and mount namespaces)")


def in_namespace(setup: str) -> list[str]:
    """A wrap for run_stage: `setup` (mounts) runs first, then the stage, in a private mount namespace."""
    return ["unshare", "-rm", "sh", "-c", f'{setup} && exec "$@"', "sh"]


@needs_namespaces
def test_a_read_only_output_folder_stops_before_any_work(tmp_path):
    outputs = tmp_path / "outputs"
    (outputs / "train").mkdir(parents=True)
    earlier = outputs / "train" / "notes.txt"
    earlier.write_text("an earlier run's file")
    ro = f"mount --bind {outputs} {outputs} && mount -o remount,bind,ro {outputs}"
    result = run_stage("train", [*TINY, f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path,
                       wrap=in_namespace(ro), timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        f"error: paths.train_dir={outputs / 'train'}: cannot write there (read-only file system); "
        "choose a writable folder with free space"]
    assert "Traceback" not in result.stderr
    assert [p.name for p in outputs.rglob("*")] == ["train", "notes.txt"] and earlier.read_text() == "an earlier run's file"


@needs_namespaces
def test_a_read_only_tracking_database_stops_before_any_work(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    ro = f"mount --bind {store} {store} && mount -o remount,bind,ro {store}"
    result = run_stage("train", [*TINY, f"mlflow.tracking_uri=sqlite:///{store / 'mlflow.db'}"], tmp_path,
                       wrap=in_namespace(ro), timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    from training.tracking import scrub_path  # the URI as errors show it (a temporary folder as $TMPDIR)

    uri = scrub_path(f"sqlite:///{store / 'mlflow.db'}")
    assert error_lines(result.stderr) == [
        f"error: mlflow.tracking_uri={uri}: the tracking database cannot be written "
        "(read-only file system); make it writable or use another, e.g. mlflow.tracking_uri=sqlite:///mlflow.db"]
    assert not (tmp_path / "outputs").exists()


@needs_namespaces
def test_a_full_disk_stops_before_any_work(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    full = f"mount -t tmpfs -o size=8m tmpfs {outputs}"
    result = run_stage("export", [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path,
                       wrap=in_namespace(full), timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        f"error: export.output_dir={outputs / 'export'}: cannot write there (only 8.0 MB free on its disk "
        "(a stage needs at least 100 MB)); choose a writable folder with free space"]


@needs_namespaces
@pytest.mark.slow
def test_a_disk_filling_up_during_training_is_one_line_and_leaves_no_partial_files(tmp_path):
    """The files the run writes outgrow what the process may write (the kernel's file-size limit, EFBIG, as a
    disk that fills up mid-run): one line naming the file; no half-written file left behind."""
    outputs = tmp_path / "outputs"
    (outputs / "export").mkdir(parents=True)
    earlier = outputs / "export" / "manifest.json"
    earlier.write_text('{"earlier": true}')
    limit = "trap '' XFSZ && ulimit -f 2048"  # 2 MB a file: the database fits, the model and its checkpoints do not
    result = run_stage("train", [*TINY, "trainer.steps=2", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                       tmp_path, wrap=in_namespace(limit), timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"error: {outputs / 'train'}") and (
        "the file outgrew what its disk or the process may write; the files written before are kept as they were. "
        "Free space or choose a writable folder, and run the same command again") in lines[0]
    assert not list(outputs.rglob("*.tmp")) and earlier.read_text() == '{"earlier": true}'
