"""Does XLA fuse VGG-16's ReLUs into cuDNN's convolutions on the differentiated image? Compile only.

For each way of taking the ReLU's gradient, compiles the input gradient of VGG-16's features (conv1
to conv4, seeded random weights, bf16) and counts, in the optimized program, cuDNN's convolutions by
the activation they carry (`kRelu`: fused; `kNone`: the input-gradient convolutions, and forward
ones whose ReLU runs as a pass of its own) and those separate ReLU passes (`maximum` fusions). In the
lowered program it counts the optimization barriers the gradient's masks read through.

    KERAS_BACKEND=jax python -m benchmarks.relu_fusion --out outputs/benchmarks/relu_fusion.json

The ways: `autodiff` (Keras' ReLU), `output_mask_no_barrier` (`relu_gradient_from_output` with
`training.network.vgg16._opaque` as the identity, whose mask XLA turns back into one on the input) and
`output_mask` (the training code, `trainer.relu_gradient_from_output=true`). On a CPU there are no
cuDNN convolutions to count.
Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402

from training.network import vgg16  # noqa: E402

WAYS = ("autodiff", "output_mask_no_barrier", "output_mask")


@contextlib.contextmanager
def relus_taking(way: str, model: keras.Model):
    """VGG-16's ReLUs take their gradient the given way while inside."""
    saved_opaque = vgg16._opaque
    if way == "autodiff":
        for layer in vgg16.conv_layers(model):
            layer.activation = keras.activations.relu
    else:
        vgg16.use_relu_gradient_from_output(model)
        if way == "output_mask_no_barrier":
            vgg16._opaque = lambda x: x
    try:
        yield
    finally:
        vgg16._opaque = saved_opaque


def fusion_report(way: str, model: keras.Model, images: np.ndarray) -> dict:
    import jax

    def loss(x):
        return sum(keras.ops.mean(keras.ops.square(keras.ops.cast(f, "float32"))) for f in model(x).values())

    with relus_taking(way, model):
        lowered = jax.jit(jax.grad(loss)).lower(images)
        optimized = lowered.compile().as_text()
        gradient = np.asarray(jax.jit(jax.grad(loss))(images), np.float32)
    return {
        "way": way,
        "cudnn_convolutions": dict(sorted(collections.Counter(
            re.findall(r'"activation_mode":"(k\w+)"', optimized)).items())),
        "relu_passes": len(re.findall(r"^\s*%\S*maximum\S* = \S+ fusion\(", optimized, re.M)),
        "mask_barriers": lowered.as_text().count("stablehlo.optimization_barrier"),
        "gradient_abs_sum": float(np.abs(gradient).sum()),
    }


def run(batch_size: int = 4, image_size: int = 64) -> dict:
    import jax

    if keras.backend.backend() != "jax":
        raise SystemExit("relu_fusion.py compiles with JAX: run it with KERAS_BACKEND=jax")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = vgg16.build_vgg16_features(last_block=4)
    vgg16.set_seeded_random_weights(model)
    images = np.random.default_rng(0).uniform(0, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
    return {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "jax": jax.__version__, "keras": keras.__version__, "batch_size": batch_size, "image_size": image_size,
            "convolutions": len(vgg16.conv_layers(model)),
            "results": [fusion_report(way, model, images) for way in WAYS]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relu_fusion", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "relu_fusion.json")
    args = parser.parse_args()
    report = {"command": "KERAS_BACKEND=jax python -m benchmarks.relu_fusion " + " ".join(sys.argv[1:]),
              **run(args.batch_size, args.image_size)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{report['device']} ({report['platform']}), VGG-16 conv1-conv4: {report['convolutions']} convolutions")
    print(f"{'way':24s} {'cuDNN kRelu':>11s} {'cuDNN kNone':>11s} {'ReLU passes':>11s} {'barriers':>9s}  |gradient|")
    for row in report["results"]:
        modes = row["cudnn_convolutions"]
        print(f"{row['way']:24s} {modes.get('kRelu', 0):11d} {modes.get('kNone', 0):11d} {row['relu_passes']:11d} "
              f"{row['mask_barriers']:9d}  {row['gradient_abs_sum']:.6g}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
