"""benchmarks/train_throughput.py on the CPU: the real step at a tiny size, side by side variants, FLOPs.

The GPU figures in docs/benchmarks.md come from this script; here it runs for real on JAX/CPU
(no timings asserted: speed belongs to the benchmark, not to tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_throughput_benchmark_measures_variants_side_by_side(tmp_path):
    out = tmp_path / "throughput.json"
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "--models", "magenta_lite", "--batch-sizes", "2",
         "--precisions", "float32", "--image-size", "64", "--steps", "2", "--warmup", "1", "--input-dtypes", "uint8",
         "--variants", "base", "loop=training trainer.steps_per_execution=2", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    base, training = report["results"]
    assert (base["loop"], base["steps_per_execution"]) == ("bare", 1)
    assert (training["variant"], training["loop"], training["steps_per_execution"]) == (
        "loop=training trainer.steps_per_execution=2", "training", 2)
    for row in (base, training):
        assert row["finite_loss"] and row["input_dtype"] == "uint8" and row["images_per_s"] > 0
        assert 0 < row["device_step_ms"] and row["host_wait_fraction"] < 1
    # Two steps per execution and a loss read after each: the same steps, the same loss.
    assert training["loss"] == pytest.approx(base["loss"], rel=1e-5)
    flops = report["flops"]["magenta_lite"]
    # Analytic FLOPs agree with the traced gradient step.
    assert flops["total"] == pytest.approx(flops["traced_total"], rel=0.03)
    assert "device ms" in result.stdout and "loop=training trainer.steps_per_execution=2" in result.stdout
