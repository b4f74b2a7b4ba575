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
         "--variants", "base", "loss_network.input_channel_multiple=8", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    base, padded = report["results"]
    assert (base["variant"], padded["variant"]) == ("base", "loss_network.input_channel_multiple=8")
    for row in (base, padded):
        assert row["finite_loss"] and row["input_dtype"] == "uint8" and row["images_per_s"] > 0
        assert 0 < row["device_step_ms"] and row["host_wait_fraction"] < 1
    # Zero-padded VGG input channels change no number: the same seed gives the same loss.
    assert padded["loss"] == pytest.approx(base["loss"], rel=1e-5)
    flops = report["flops"]["magenta_lite"]
    # Analytic FLOPs agree with the traced gradient step (the padding's zero channels are not counted).
    assert flops["total"] == pytest.approx(flops["traced_total"], rel=0.03)
    assert base["gflops_per_image"] == padded["gflops_per_image"]
    assert "device ms" in result.stdout and "loss_network.input_channel_multiple=8" in result.stdout
