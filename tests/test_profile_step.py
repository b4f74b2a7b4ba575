"""benchmarks/profile_step.py --annotate: a real XLA dump names a profile's instructions by layer.

The profile itself needs a GPU trace (docs/performance.md sums up the H200's); the naming reads
the optimized HLO that XLA writes on any backend, here the CPU's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from helpers import REPO

STEP = """
import jax, jax.numpy as jnp

def train_step(x, w):
    with jax.named_scope("block1_conv1"):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    with jax.named_scope("transformer"):
        return jnp.sum(jnp.tanh(y) ** 2)

jax.jit(jax.grad(train_step, argnums=(0, 1)))(jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)))
"""


def test_annotate_names_instructions_by_layer_and_sums_parts(tmp_path):
    dump = tmp_path / "hlo"
    env = {**os.environ, "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", STEP], env=env, check=True, timeout=300)
    hlo = max(dump.glob("*train_step*after_optimizations.txt"), key=lambda p: p.stat().st_size).read_text()
    instructions = dict(re.findall(r'\n\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]+)"', hlo))
    forward = next(n for n, op in instructions.items() if "jvp(block1_conv1)" in op and "transpose(" not in op)
    backward = next(n for n, op in instructions.items() if "transpose(jvp(block1_conv1))" in op)
    tanh = next(n for n, op in instructions.items() if "transformer" in op)
    # A command buffer's kernels carry "_N" where the HLO has ".N".
    in_buffer = [re.sub(r"\.(\d+)$", r"_\1", name) for name in (backward, tanh)]
    report = {"gpu_busy_ms_per_step": 4.0, "top_hlo_ops": [
        {"hlo_op": forward, "ms_per_step": 1.0, "kernels": ["k"]},
        {"hlo_op": "command_buffer_7", "ms_per_step": 2.0, "kernels": in_buffer}]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(report))

    result = subprocess.run([sys.executable, "-m", "benchmarks.profile_step", "--annotate", str(path), "--hlo-dump", str(dump)],
                            cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    annotated = json.loads(path.read_text())
    assert "jvp(block1_conv1)" in annotated["top_hlo_ops"][0]["layer"]
    assert annotated["parts_ms_per_step"]["VGG-16 block1_conv1 forward"] == 1.0
    assert annotated["parts_ms_per_step"]["VGG-16 block1_conv1 backward"] == 1.0  # half the buffer's 2 ms
    assert annotated["parts_cover_ms_per_step"] == 3.0
    assert "VGG-16 block1_conv1 forward" in result.stdout


def test_annotate_without_a_dump_is_a_usage_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.profile_step", "--annotate", str(tmp_path / "r.json")],
                            cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--annotate needs --hlo-dump DIR" in result.stderr


def test_annotate_from_a_folder_without_the_step_hlo_names_it(tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"gpu_busy_ms_per_step": 1.0, "top_hlo_ops": []}))
    empty = tmp_path / "not-a-dump"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "benchmarks.profile_step", "--annotate", str(report), "--hlo-dump", str(empty)],
                            cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"--hlo-dump {empty}: no *train_step*after_optimizations.txt there" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(report.read_text()) == {"gpu_busy_ms_per_step": 1.0, "top_hlo_ops": []}  # left as it was
