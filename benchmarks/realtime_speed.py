"""The fast transfer network (model=realtime) against Magenta's published fp16 model and our baked Magenta-shaped export.

All timed in this one process on the same real photo, alternating one run of each model per round,
so background load hits them alike and their ratios mean something on a shared host. LiteRT with
XNNPACK at 1 and 2 threads, 384x384 and 384x768. Our two models are exported as the export stage's
baked variant (a style's bottleneck folded in as a constant, TFLite fp16); the realtime network has
untrained weights (its speed does not depend on them), the Magenta-shaped one Magenta's published
weights. Magenta's published file has a fixed 384x384 input: at 384x768 its time is estimated as
twice its measured 384x384 median (marked "~"), and the ratio to our Magenta-shaped export, measured
at that size, is printed beside it. Also per frame: convolution GFLOP and activation megabytes.

    python -m benchmarks.realtime_speed [--runs 15] [--candidate channels=24,residual_blocks=4 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = "magenta_published_fp16"
MAGENTA_EXPORT = "magenta_lite_baked"
GOAL = 0.35  # the goal: at most this fraction of the published model's latency


def parse_candidate(text: str) -> dict:
    """"channels=24,upsample=transpose" -> {"channels": 24, "upsample": "transpose"}."""
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return out


def realtime_stylizer(overrides: dict):
    """A stylizer with the realtime transfer network (untrained) as configs/model/realtime.yaml sets it, plus overrides."""
    from omegaconf import OmegaConf

    from training.network.stylizer import build_stylizer

    cfg = OmegaConf.merge(OmegaConf.load(REPO / "configs" / "model" / "realtime.yaml"), overrides)
    backbone = OmegaConf.create({"name": "mobilenet_v2", "weights": None, "trainable": False})
    return build_stylizer(cfg, backbone, "/tmp")


def baked_tflite(stylizer, bottleneck, height: int, width: int) -> bytes:
    """The export stage's baked variant: fp16 TFLite of content -> stylized with the style folded in."""
    from export.tf_graph import constant_module, make_module
    from export.tflite import convert

    return convert(constant_module(make_module("baked", stylizer, height, width, bottleneck)), "serve", fp16=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.realtime_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="timed rounds (each runs every model once)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", nargs="+", default=["384x384", "384x768"])
    parser.add_argument("--candidate", action="append", default=[],
                        help="realtime design to time beside the configured one: overrides of realtime.yaml, "
                             "e.g. channels=24,residual_blocks=4 (repeatable)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "realtime_speed.json"))
    args = parser.parse_args()

    from evaluation.latency import summarize, time_alternating
    from export.tflite import check_gpu_delegate_rules, tflite_cost
    from training.data.datasets import fit_crop, load_image
    from training.weights.magenta_import import published_stylizer
    from training.weights.tflite_runner import tflite_runner

    published_dir = REPO / "models" / "magenta-published"
    magenta = published_stylizer(published_dir)
    style = fit_crop(load_image(REPO / "data" / "samples" / "style" / "starry_night.jpg"), 256, 256)[None]
    bottleneck = np.asarray(magenta.get_layer("style_predictor")(style, training=False), np.float32)
    designs = {"realtime": {}} | {f"realtime[{c}]": parse_candidate(c) for c in args.candidate}
    stylizers = {MAGENTA_EXPORT: magenta} | {name: realtime_stylizer(o) for name, o in designs.items()}
    published_bytes = (published_dir / "style_transfer_f16_384.tflite").read_bytes()

    rows = []
    for size in args.sizes:
        height, width = (int(d) for d in size.split("x"))
        photo = fit_crop(load_image(REPO / "data" / "samples" / "content" / "chelsea.jpg"), height, width)[None]
        models = {name: baked_tflite(s, bottleneck, height, width) for name, s in stylizers.items()}
        if (height, width) == (384, 384):
            models = {PUBLISHED: published_bytes} | models
        for threads in args.threads:
            calls = {name: tflite_runner(fb, None if name == PUBLISHED else "serve",
                                         {"content_image": photo} | ({"bottleneck": bottleneck} if name == PUBLISHED else {}),
                                         threads) for name, fb in models.items()}
            times = time_alternating(calls, args.warmup, args.runs)  # one run of each model per round
            for name, flatbuffer in models.items():
                cost, gpu = tflite_cost(flatbuffer), check_gpu_delegate_rules(flatbuffer)
                row = summarize(times[name], model=name, format=name, variant="baked" if name != PUBLISHED else "transfer",
                                runtime="litert_xnnpack", threads=threads, height=height, width=width).as_dict()
                row.update(gflop=cost.flops / 1e9, activation_mb=cost.activation_bytes / 1e6,
                           largest_activation_mb=cost.largest_activation_bytes / 1e6, bytes=len(flatbuffer),
                           gpu_delegate_ok=gpu.ok, ops=dict(gpu.ops), design=designs.get(name))
                rows.append(row)
            print(f"{size} threads={threads}: " + ", ".join(f"{n} {np.median(t):.1f} ms" for n, t in times.items()), flush=True)

    published_ms = {r["threads"]: r["median_ms"] for r in rows if r["format"] == PUBLISHED}
    for r in rows:
        base = next(x["median_ms"] for x in rows if x["format"] == MAGENTA_EXPORT
                    and (x["threads"], x["height"], x["width"]) == (r["threads"], r["height"], r["width"]))
        pixels = r["height"] * r["width"] / (384 * 384)
        r["published_ms"] = published_ms.get(r["threads"], float("nan")) * pixels
        r["published_ms_estimated"] = pixels != 1
        r["ratio_to_published"] = r["median_ms"] / r["published_ms"]
        r["ratio_to_magenta_export"] = r["median_ms"] / base
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"host": platform.machine(), "cpus": os.cpu_count(), "runs": args.runs,
                                          "goal_ratio": GOAL, "results": rows}, indent=2))
    print()
    print("| model | size | threads | median ms | p90 ms | / published | / magenta_lite export | GFLOP | act MB | GPU rules |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        est = "~" if r["published_ms_estimated"] else ""
        print(f"| {r['format']} | {r['height']}x{r['width']} | {r['threads']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
              f"{est}{r['ratio_to_published']:.2f} | {r['ratio_to_magenta_export']:.2f} | {r['gflop']:.2f} | "
              f"{r['activation_mb']:.1f} | {'ok' if r['gpu_delegate_ok'] else 'FAIL'} |")
    print(f"\nGoal: realtime / published <= {GOAL} at every size and thread count. Published has a fixed 384x384 input: "
          "~ marks ratios at 384x768 against twice its 384x384 median. act MB: every op's output per frame, float32.")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
