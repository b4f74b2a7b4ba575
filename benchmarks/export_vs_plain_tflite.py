"""Our exported lite transfer model vs a plain TFLite conversion of the same network and weights.

Both are timed in this one process, interleaved, on the same real photo, so their ratio is
meaningful on any host. Writes JSON and prints a table.

    python -m benchmarks.export_vs_plain_tflite [--model outputs/magenta_published/model.keras] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402


def plain_conversion(keras_model, fp16: bool = True) -> bytes:
    """What a user gets from `TFLiteConverter.from_keras_model` with the usual fp16 settings."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if fp16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def static_copy(transformer, height: int, width: int):
    """The same network and weights with a static input size (the plain route's only way to convert)."""
    from training.network.magenta_network import build_transfer_network

    depth = transformer.get_layer("transformer.contract.conv1").filters
    static = build_transfer_network(alpha=depth / 32.0, input_shape=(height, width, 3))
    static.set_weights(transformer.get_weights())
    return static


def plain_runner(flatbuffer: bytes, photo, bottleneck, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
    details = interpreter.get_input_details()
    for d in details:  # dynamic shapes: size the inputs at run time
        value = photo if d["shape"][-1] == 3 else bottleneck
        interpreter.resize_tensor_input(d["index"], value.shape)
    interpreter.allocate_tensors()

    def call():
        for d in details:
            interpreter.set_tensor(d["index"], photo if d["shape"][-1] == 3 else bottleneck)
        interpreter.invoke()

    return call


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_vs_plain_tflite", description=__doc__)
    parser.add_argument("--model", default=str(REPO / "outputs" / "magenta_published" / "model.keras"))
    parser.add_argument("--size", type=int, nargs=2, default=[384, 384])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "export_vs_plain_tflite.json"))
    args = parser.parse_args()

    from evaluation.latency import summarize, time_alternating
    from export.tf_graph import constant_module, make_module
    from export.tflite import check_gpu_delegate_rules, convert
    from training.data.datasets import fit_crop, load_image
    from training.network.stylizer import load_stylizer
    from training.weights.tflite_runner import tflite_runner

    height, width = args.size
    stylizer = load_stylizer(args.model)
    transformer = stylizer.get_layer("transformer")
    photo = fit_crop(load_image(REPO / "data" / "samples" / "content" / "chelsea.jpg"), height, width)[None]
    bottleneck = np.random.default_rng(0).normal(size=(1, 1, 1, 100)).astype(np.float32)
    ours = convert(constant_module(make_module("transfer", stylizer, height, width)), "serve", fp16=True)
    try:  # the network as trained has dynamic H and W
        plain_conversion(transformer)
        dynamic_error = None
    except Exception as err:  # noqa: BLE001 - the failure is the finding, recorded in the JSON
        dynamic_error = str(err).strip().splitlines()[0][:300]
        print(f"plain conversion of the dynamic-shape Keras network fails: {dynamic_error}")
    plain = plain_conversion(static_copy(transformer, height, width))
    results = []
    for threads in (1, 2):
        calls = {"stylepipe_export": tflite_runner(ours, "serve", {"content_image": photo, "style_bottleneck": bottleneck}, threads),
                 "plain_from_keras_model": plain_runner(plain, photo, bottleneck, threads)}
        times = time_alternating(calls, args.warmup, args.runs)  # background load hits both alike
        for name, flatbuffer in (("stylepipe_export", ours), ("plain_from_keras_model", plain)):
            row = summarize(times[name], model="magenta_published", format=name, variant="arbitrary", runtime="litert_xnnpack",
                            threads=threads, height=height, width=width).as_dict()
            report = check_gpu_delegate_rules(flatbuffer)
            row.update(bytes=len(flatbuffer), gpu_delegate_ok=report.ok, ops=dict(report.ops), gpu_problems=report.problems[:5])
            results.append(row)
    ratios = {t: next(r["median_ms"] for r in results if r["format"] == "plain_from_keras_model" and r["threads"] == t)
              / next(r["median_ms"] for r in results if r["format"] == "stylepipe_export" and r["threads"] == t) for t in (1, 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"host": platform.machine(), "results": results, "plain_dynamic_error": dynamic_error,
                                          "plain_over_ours_median_ratio": ratios}, indent=2))
    print(f"{'model':<24}{'threads':>8}{'median ms':>11}{'p90 ms':>9}{'bytes':>10}  GPU rules  ops")
    for r in results:
        print(f"{r['format']:<24}{r['threads']:>8}{r['median_ms']:>11.1f}{r['p90_ms']:>9.1f}{r['bytes']:>10}  "
              f"{'ok' if r['gpu_delegate_ok'] else 'FAIL':<9}  {sum(r['ops'].values())} ops: "
              + ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items(), key=lambda kv: -kv[1])[:6]))
    for t, ratio in ratios.items():
        print(f"threads={t}: plain / stylepipe median latency = {ratio:.2f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
