"""The package layers and the DVC stages' code deps hold as the code changes."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

from pipelines import stage_deps

ROOT = Path(__file__).resolve().parents[1]


def test_imports_go_only_down_the_layers():
    # pyproject.toml's import-linter contracts: pipelines > evaluation > export > training; inside training
    # loop > objective > weights > network | data > the shared modules; inside training.network the stylizer >
    # its parts > the layers. Function-level imports included.
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert len(contracts) == 3 and f"{len(contracts)} kept, 0 broken" in result.stdout


def test_each_stage_depends_on_exactly_the_modules_it_runs():
    stale = {stage: diff for stage, diff in stage_deps.differences((ROOT / "dvc.yaml").read_text()).items() if any(diff)}
    assert not stale, f"{stale}: run python -m pipelines.stage_deps --write"
    # The evaluate stage runs the exporters and the training code beneath them, and they are its deps.
    evaluate = stage_deps.read_stages((ROOT / "dvc.yaml").read_text())["evaluate"]["deps"]
    assert {"evaluation/stage.py", "export/tflite.py", "training/weights/parity.py", "pipelines/cli.py"} <= set(evaluate)


def test_write_restores_exact_deps_and_keeps_the_other_deps(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    stale = text.replace("      - training/weights/parity.py\n", "").replace("      - pipelines/evaluate.py\n",
                                                                       "      - pipelines/evaluate.py\n      - training/gone.py\n")
    diff = stage_deps.differences(stale)
    assert "training/weights/parity.py" in diff["export"][0] and diff["evaluate"][1] == ["training/gone.py"]
    dvc_file = tmp_path / "dvc.yaml"
    dvc_file.write_text(stale)
    assert stage_deps.main(["--dvc-file", str(dvc_file)]) == 1
    assert stage_deps.main(["--dvc-file", str(dvc_file), "--write"]) == 0
    assert dvc_file.read_text() == text  # the configs, data and models deps and every comment as they were
