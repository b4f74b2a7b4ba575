"""Each convolution of the training step timed alone on the device, at its own and at padded channel counts.

The profile (`profile_step.py`) shows the step's convolutions at about 310 TFLOP/s with old or
non-tensor-core cuDNN kernels for some layers. This script finds which ones. It collects every
convolution the step runs forward (transfer network, style predictor backbone, VGG-16 loss) from
the JAX trace of one training configuration at its batch and image size. Then it times each
distinct one alone under jit: forward, and backward the way training differentiates it (input
and weight gradients for trainable layers, input gradients only for VGG-16, none for a frozen
backbone). With `--pad-to N` it times the same convolution again with input and output channels
zero-padded to a multiple of N (grouped/depthwise ones excepted). That shows whether padding,
inside training only, could move a layer onto faster kernels before the network is changed.

    KERAS_BACKEND=jax python -m benchmarks.conv_channels --model magenta_lite --batch-size 64 --pad-to 16 32
    KERAS_BACKEND=jax python -m benchmarks.conv_channels --parts "vgg16 stylized" --pad-to    # one part, no padding
    KERAS_BACKEND=jax python -m benchmarks.conv_channels --parts transfer --variant trainer.space_to_depth_channels=8

Prints a table (slowest first, with TFLOP/s of the true FLOPs) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]

from benchmarks import train_throughput as throughput  # noqa: E402  (one definition of the benchmarked configuration)


PARTS = ("transfer", "backbone", "vgg16 stylized", "vgg16 style target", "vgg16 content target")


def step_convolutions(objective, batch_size: int, image_size: int) -> list[dict]:
    """Distinct forward convolutions of the step, by part, with how often each runs per step."""
    import jax
    import jax.numpy as jnp

    from training.objective.flops import eqn_flops, iter_eqns
    from training.network.vgg16 import vgg_features

    stylizer = objective.stylizer
    predictor = stylizer.get_layer("style_predictor")
    transformer = stylizer.get_layer("transformer")
    backbone = next(l for l in predictor.layers if l.name.startswith("backbone_"))
    image = jnp.full((batch_size, image_size, image_size, 3), 0.5, jnp.float32)
    bottleneck = predictor(image[:1])
    bottleneck = jnp.broadcast_to(bottleneck, (batch_size, *bottleneck.shape[1:]))
    all_layers = {**objective.content_weights, **objective.style_weights}
    trainable_backbone = bool(backbone.trainable and backbone.trainable_weights)
    parts = [  # (part, function run once per step, gradients: "both" | "input" | "none")
        ("transfer", lambda x: transformer([x, bottleneck]), "both"),
        ("backbone", backbone, "both" if trainable_backbone else "none"),
        ("vgg16 stylized", lambda x: vgg_features(objective.loss_network, x, all_layers), "input"),
        ("vgg16 style target", lambda x: vgg_features(objective.loss_network, x, objective.style_weights), "none"),
        ("vgg16 content target", lambda x: vgg_features(objective.loss_network, x, objective.content_weights), "none"),
    ]
    found: dict[tuple, dict] = {}
    for part, fn, gradients in parts:
        for eqn in iter_eqns(jax.make_jaxpr(fn)(image)):
            if eqn.primitive.name != "conv_general_dilated":
                continue
            lhs, rhs = (v.aval for v in eqn.invars[:2])
            if rhs.shape[0] == 1 and rhs.shape[1] == 1 and lhs.shape[1] == 1:  # 1x1 on the bottleneck: negligible
                continue
            key = (part, lhs.shape, rhs.shape, str(lhs.dtype), _params_key(eqn.params))
            entry = found.setdefault(key, {"part": part, "lhs": list(lhs.shape), "rhs": list(rhs.shape),
                                           "dtype": str(lhs.dtype), "params": eqn.params, "gradients": gradients,
                                           "count": 0, "gflops": eqn_flops(eqn) / 1e9})
            entry["count"] += 1
    return list(found.values())


def _params_key(params) -> str:
    return repr(sorted((k, repr(v)) for k, v in params.items() if k != "precision"))


def _padded_shapes(conv: dict, multiple: int) -> tuple[list[int], list[int]] | None:
    """lhs and rhs shapes with input and output features rounded up to `multiple` (None: nothing to pad)."""
    numbers = conv["params"]["dimension_numbers"]
    if conv["params"]["feature_group_count"] != 1 or conv["params"]["batch_group_count"] != 1:
        return None
    lhs, rhs = list(conv["lhs"]), list(conv["rhs"])
    up = lambda n: -(-n // multiple) * multiple  # noqa: E731
    lhs[numbers.lhs_spec[1]] = up(lhs[numbers.lhs_spec[1]])
    rhs[numbers.rhs_spec[1]] = up(rhs[numbers.rhs_spec[1]])
    rhs[numbers.rhs_spec[0]] = up(rhs[numbers.rhs_spec[0]])
    return (lhs, rhs) if (lhs, rhs) != (conv["lhs"], conv["rhs"]) else None


def time_convolution(conv: dict, lhs_shape, rhs_shape, repeats: int) -> dict:
    """ms of the forward and of the backward (as training differentiates it) of one convolution."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    params = dict(conv["params"])
    dtype = jnp.dtype(conv["dtype"])
    lhs = jax.random.normal(jax.random.key(0), lhs_shape, dtype)
    rhs = jax.random.normal(jax.random.key(1), rhs_shape, dtype) * 0.05
    apply = lambda x, w: lax.conv_general_dilated_p.bind(x, w, **params)  # noqa: E731
    out = jax.eval_shape(apply, lhs, rhs)
    cotangent = jnp.ones(out.shape, out.dtype)
    forward = jax.jit(apply)
    argnums = {"both": (0, 1), "input": (0,), "none": ()}[conv["gradients"]]
    backward = None
    if argnums:
        backward = jax.jit(lambda x, w, g: [d for i, d in enumerate(jax.vjp(apply, x, w)[1](g)) if i in argnums])

    def ms(fn, *args):
        jax.block_until_ready(fn(*args))  # compile and warm
        start = time.perf_counter()
        for _ in range(repeats):
            result = fn(*args)
        jax.block_until_ready(result)
        return 1000 * (time.perf_counter() - start) / repeats

    return {"forward_ms": ms(forward, lhs, rhs), "backward_ms": ms(backward, lhs, rhs, cotangent) if backward else 0.0}


def call_gflops(conv: dict) -> float:
    """True FLOPs of one call, forward and backward as training differentiates it."""
    return conv["gflops"] * (1 + {"both": 2, "input": 1, "none": 0}[conv["gradients"]])


def measure(convolutions: list[dict], pad_to: list[int], repeats: int) -> list[dict]:
    rows = []
    for conv in convolutions:
        gflops = call_gflops(conv)
        timing = time_convolution(conv, conv["lhs"], conv["rhs"], repeats)
        row = {k: conv[k] for k in ("part", "lhs", "rhs", "dtype", "gradients", "count")}
        row.update(gflops_per_call=gflops, **timing)
        row["ms_per_step"] = conv["count"] * (timing["forward_ms"] + timing["backward_ms"])
        row["tflops_per_s"] = gflops / max(timing["forward_ms"] + timing["backward_ms"], 1e-9)
        for multiple in pad_to:
            shapes = _padded_shapes(conv, multiple)
            if shapes:
                padded = time_convolution(conv, *shapes, repeats)
                row[f"padded_{multiple}"] = {"lhs": shapes[0], "rhs": shapes[1], **padded,
                                             "ms_per_step": conv["count"] * (padded["forward_ms"] + padded["backward_ms"])}
        rows.append(row)
        print(format_row(row, pad_to), flush=True)
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def format_row(row: dict, pad_to: list[int]) -> str:
    padded = " ".join(f"{row[f'padded_{m}']['ms_per_step']:>9.3f}" if f"padded_{m}" in row else f"{'-':>9}"
                      for m in pad_to)
    shape = f"{row['lhs']} * {row['rhs']}"
    return (f"{row['part']:<21} {shape:<44} {row['count']:>3} {row['forward_ms']:>8.3f} {row['backward_ms']:>8.3f} "
            f"{row['ms_per_step']:>9.3f} {row['tflops_per_s']:>8.1f} {padded}")


def format_table(report: dict) -> str:
    pad_to = report["pad_to"]
    padded = " ".join(f"{f'pad {m} ms':>9}" for m in pad_to)
    head = (f"{'part':<21} {'input * kernel':<44} {'n':>3} {'fwd ms':>8} {'bwd ms':>8} {'ms/step':>9} "
            f"{'TFLOP/s':>8} {padded}")
    lines = [head, "-" * len(head)] + [format_row(r, pad_to) for r in report["convolutions"]]
    total = sum(r["ms_per_step"] for r in report["convolutions"])
    lines.append(f"all convolutions, timed alone: {total:.2f} ms per step")
    for m in pad_to:
        best = sum(min(r["ms_per_step"], r.get(f"padded_{m}", {}).get("ms_per_step", r["ms_per_step"]))
                   for r in report["convolutions"])
        lines.append(f"padding to {m} where it is faster: {best:.2f} ms per step")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv_channels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    throughput.add_configuration_arguments(parser)
    parser.add_argument("--pad-to", type=int, nargs="*", default=[16, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--list", action="store_true", help="list the convolutions and their FLOPs, time nothing")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="time only these parts' convolutions (the frozen backbone's 30 are tiny)")
    parser.add_argument("--variant", default="base",
                        help="Hydra overrides, e.g. trainer.space_to_depth_channels=8 (the blocked convolutions)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "conv_channels.json")
    args = parser.parse_args(argv)
    import jax
    import keras

    if keras.backend.backend() != "jax":
        parser.error("run with KERAS_BACKEND=jax (convolutions are read from the JAX trace)")
    from training.objective.flops import step_flops

    label, overrides, _ = throughput.parse_variant(args.variant)
    cfg = throughput.compose(args.model, args.precision, args.batch_size, args.image_size, workers=1, overrides=overrides)
    objective, _ = throughput.build_step(cfg)

    report = {"command": "KERAS_BACKEND=jax python -m benchmarks.conv_channels " + " ".join(sys.argv[1:] if argv is None else argv),
              "device": str(jax.devices()[0].device_kind), "model": args.model, "precision": args.precision,
              "batch_size": args.batch_size, "image_size": args.image_size, "pad_to": args.pad_to, "variant": label,
              "parts": args.parts}
    convolutions = step_convolutions(objective, args.batch_size, args.image_size)
    conv_gflops = sum(call_gflops(c) * c["count"] for c in convolutions)
    per_image = step_flops(objective, args.image_size)
    step_gflops = per_image.total * args.batch_size / 1e9
    report.update(conv_gflops_per_step=conv_gflops, step_gflops=step_gflops, step_flops_per_image=per_image.as_dict())
    print(f"{len(convolutions)} distinct convolutions, {conv_gflops:.1f} GFLOP per step: "
          f"{100 * conv_gflops / step_gflops:.1f}% of the step's {step_gflops:.1f} (the rest: Gram matrices, 1x1 style convs)")
    convolutions = [c for c in convolutions if c["part"] in args.parts]
    if args.list:
        report["convolutions"] = [{**{k: v for k, v in c.items() if k != "params"}, "gflops_per_call": call_gflops(c)}
                                  for c in convolutions]
    else:
        report["convolutions"] = measure(convolutions, args.pad_to, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    if not args.list:
        print()
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
