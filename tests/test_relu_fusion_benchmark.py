"""benchmarks/relu_fusion.py on the CPU: the training code's ReLU masks read through a barrier, all three
ways give one gradient.

Whether cuDNN then takes the ReLUs needs a GPU (docs/performance.md: 10 of 10 with the
barrier, 0 without); here the JAX program the GPU compiles is checked, on real VGG-16 shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.slow
def test_output_masks_read_through_one_barrier_per_relu_with_the_same_gradient(tmp_path):
    out = tmp_path / "relu_fusion.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.relu_fusion", "--batch-size", "2", "--image-size", "32",
                             "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["way"]: row for row in report["results"]}
    assert report["convolutions"] == 10  # VGG-16 conv1_1 to conv4_3
    assert rows["output_mask"]["mask_barriers"] == 10
    assert rows["output_mask_no_barrier"]["mask_barriers"] == 0
    assert rows["autodiff"]["mask_barriers"] == 0
    gradients = [row["gradient_abs_sum"] for row in rows.values()]
    assert gradients[0] > 0 and max(gradients) - min(gradients) <= 1e-6 * gradients[0]
    assert "output_mask " in result.stdout  # the printed table
