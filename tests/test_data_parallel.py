"""trainer.devices: a step on 2 (virtual CPU) devices computes the loss of the same global batch as 1 device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
@pytest.mark.slow
def test_two_device_steps_match_one_device(tmp_path, backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "data_parallel_run.py"), str(tmp_path), "1", "2"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    one, two = runs["1"], runs["2"]
    # Step 1's loss checks the forward pass (batch norm over the global batch); step 2's and the
    # held-out losses check that the gradients were combined into the same update.
    assert [h["step"] for h in two["history"]] == [1, 2]
    for a, b in zip(one["history"], two["history"]):
        for name in ("loss", "content_loss", "style_loss", "tv_loss"):
            # float32 sums in another order: equal to a few parts in 1e5 of the total loss.
            assert b[name] == pytest.approx(a[name], rel=2e-4, abs=5e-5 * a["loss"]), (name, a, b)
    # After two Adam updates: Adam divides by the root of the second moment, so parameters with tiny
    # gradients turn summation-order noise into a visible step (measured 3e-4 on TensorFlow).
    assert two["heldout"]["loss"] == pytest.approx(one["heldout"]["loss"], rel=1e-3)
    assert one["history"][0]["loss"] != pytest.approx(one["history"][1]["loss"], rel=1e-6)  # it really trained


def test_more_devices_than_visible_is_a_config_error(tmp_path):
    from helpers import compose_train
    from training.errors import ConfigError
    from training.loop.train import train

    cfg = compose_train(["experiment=smoke", "trainer.devices=64", "trainer.batch_size=64"], tmp_path)
    with pytest.raises(ConfigError, match=r"trainer.devices=64 is not allowed: \d+ device\(s\) visible"):
        train(cfg)
    assert not (tmp_path / "outputs" / "train" / "model.keras").exists()
