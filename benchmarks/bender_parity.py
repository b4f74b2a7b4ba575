"""Parity of the Bender form with `reference_forward` on real photos (the tables in docs/bender.md).

Run from the repository root:

    python -m benchmarks.bender_parity --measure
    python -m benchmarks.bender_parity --measure --style all --variants bender,clamp_padding \
        --sizes 128x128,384x384,384x768
    python -m benchmarks.bender_parity --graph outputs/bender/starry_night_384x768.pb --size 384x768 \
        --weights outputs/bender/weights

Magenta's published network (alpha 0.25; the import stage's model file when present, else the
published TFLite weights) with one style baked in, as `build_bender_graph` writes it, run by
`run_bender_numpy` (Bender's numerics unless a variant says otherwise) against `reference_forward`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from export.baked import CIN_EPSILON, BakedNetwork, bake, reference_forward
from export.bender import (INTERIOR_BORDER, BenderExportError, build_bender_graph, check_bender_graph,
                           run_bender_numpy, write_benderthon_weights)
from training.data.datasets import fit_crop, load_image, style_crop
from training.weights.magenta_import import published_stylizer
from training.weights.parity import psnr_db

REPO = Path(__file__).resolve().parents[1]
MEASURE_VARIANTS = ("bender", "fp32", "clamp_padding", "clamp_padding_fp32", "no_clamp_guard", "fused_upsample")


def published_baked_network(style_path, published_dir, model_path=None) -> BakedNetwork:
    """Magenta's published weights (alpha 0.25) with the style of `style_path` baked in."""
    import keras

    stylizer = published_stylizer(published_dir, model_path)
    predictor = stylizer.get_layer("style_predictor")
    bottleneck = keras.ops.convert_to_numpy(predictor(style_crop(load_image(style_path), 256)[None]))
    return bake(stylizer.get_layer("transformer"), bottleneck)


def measure(net: BakedNetwork, photos: dict[str, np.ndarray], sizes=((384, 384), (384, 768)),
            variants=MEASURE_VARIANTS, style: str = "") -> list[dict]:
    """Rows of (size, variant, photo, psnr_db, interior_psnr_db, max_abs) against reference_forward.

    variants (Bender's numerics unless said): "bender" = the default graph (padding="concat");
    "fp32" = the default graph in float32 with Magenta's eps and no clamp (the graph's own exactness);
    "clamp_padding" = the pad_mode/edge-clamp graph; "clamp_padding_fp32" = that graph in float32
    (its padding cost alone); "no_clamp_guard" = default graph with gamma/beta as they are (the
    instance-norm clamp's cost); "fused_upsample" = default graph with the 4x4 ConvTranspose form.
    """
    fp32 = dict(fp16=False, eps=CIN_EPSILON, clamp=None)
    plan = {  # variant: (graph options, executor options)
        "bender": ({}, {}),
        "fp32": ({}, fp32),
        "clamp_padding": ({"padding": "clamp"}, {}),
        "clamp_padding_fp32": ({"padding": "clamp"}, fp32),
        "no_clamp_guard": ({"clamp_guard": False}, {}),
        "fused_upsample": ({"upsample": "fused"}, {}),
    }
    unknown = set(variants) - set(plan)
    if unknown:
        raise BenderExportError(f"unknown variants {sorted(unknown)}; choose from {MEASURE_VARIANTS}")
    rows = []
    for height, width in sizes:
        graphs, reports = {}, {}
        for variant in variants:
            key = tuple(sorted(plan[variant][0].items()))
            if key not in graphs:
                graphs[key] = build_bender_graph(net, height, width, **plan[variant][0])
                reports[key] = check_bender_graph(graphs[key])
        for name, photo in photos.items():
            image = fit_crop(photo, height, width)
            ref = reference_forward(net, image)
            outputs = {}
            for variant in variants:
                key = tuple(sorted(plan[variant][0].items()))
                outputs[variant] = run_bender_numpy(graphs[key], image, report=reports[key], **plan[variant][1])
            for variant, out in outputs.items():
                rows.append({"size": f"{height}x{width}", "variant": variant, "photo": name, "style": style,
                             "psnr_db": psnr_db(out, ref), "interior_psnr_db": psnr_db(out, ref, border=INTERIOR_BORDER),
                             "max_abs": float(np.abs(out - ref).max())})
    return rows


def _summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["variant"]), []).append(r)
    return [{"size": size, "variant": variant, "runs": len(rs),
             "min_psnr_db": min(r["psnr_db"] for r in rs),
             "mean_psnr_db": float(np.mean([min(r["psnr_db"], 200.0) for r in rs])),
             "min_interior_psnr_db": min(r["interior_psnr_db"] for r in rs),
             "max_abs": max(r["max_abs"] for r in rs)} for (size, variant), rs in groups.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bender_parity", description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="parity of the Bender form vs reference_forward")
    parser.add_argument("--photos", default="chelsea,astronaut,coffee,rocket,magenta_golden_gate_sq,wood",
                        help="comma-separated stems under --content-dir")
    parser.add_argument("--style", default="starry_night", help="stem(s) under --style-dir, comma-separated, or 'all'")
    parser.add_argument("--sizes", default="384x384,384x768", help="HxW list for --measure")
    parser.add_argument("--variants", default=",".join(MEASURE_VARIANTS), help="subset of " + ",".join(MEASURE_VARIANTS))
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--graph", type=Path, help="write the Bender .pb here (with --size)")
    parser.add_argument("--weights", type=Path, help="write benderthon --only-weights files into this folder")
    parser.add_argument("--size", default="384x768", help="HxW of the graph written by --graph")
    parser.add_argument("--content-dir", type=Path, default=REPO / "data" / "samples" / "content",
                        help="folder of the photos (default: data/samples/content)")
    parser.add_argument("--style-dir", type=Path, default=REPO / "data" / "samples" / "style",
                        help="folder of the paintings (default: data/samples/style)")
    parser.add_argument("--published-dir", type=Path, default=REPO / "models" / "magenta-published",
                        help="Magenta's published TFLite files (default: models/magenta-published)")
    parser.add_argument("--model", type=Path, default=REPO / "outputs" / "magenta_published" / "model.keras",
                        help="the import stage's model, used when it exists (default: "
                             "outputs/magenta_published/model.keras)")
    args = parser.parse_args(argv)
    style_dir = args.style_dir
    styles = sorted(p.stem for p in style_dir.glob("*.jpg")) if args.style == "all" else args.style.split(",")

    def baked(style: str) -> BakedNetwork:
        return published_baked_network(style_dir / f"{style}.jpg", args.published_dir, args.model)

    net = baked(styles[0])
    if args.graph:
        h, w = (int(v) for v in args.size.lower().split("x"))
        graph = build_bender_graph(net, h, w)
        report = check_bender_graph(graph)
        print(report.summary())
        if not report.ok:
            return 1
        args.graph.parent.mkdir(parents=True, exist_ok=True)
        args.graph.write_bytes(graph.SerializeToString())
        print(f"wrote {args.graph} ({len(report.layers)} Bender layers, style {styles[0]})")
    if args.weights:
        files = write_benderthon_weights(net, args.weights, styles[0])
        print(f"wrote {len(files)} benderthon weight files to {args.weights}")
    if args.measure:
        photos = {stem: load_image(args.content_dir / f"{stem}.jpg") for stem in args.photos.split(",") if stem}
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes.split(",")]
        variants = [v for v in args.variants.split(",") if v]
        rows = []
        for style in styles:
            style_net = net if style == styles[0] else baked(style)
            rows += measure(style_net, photos, sizes, variants, style=style)
        summary = _summarise(rows)
        print(f"styles: {', '.join(styles)}; {len(photos)} photos: {', '.join(photos)}")
        print(f"| size | variant | runs | min PSNR dB | mean PSNR dB | min interior PSNR dB ({INTERIOR_BORDER} px border "
              "left out) | max-abs |")
        print("|---|---|---|---|---|---|---|")
        for s in summary:
            print(f"| {s['size']} | {s['variant']} | {s['runs']} | {s['min_psnr_db']:.2f} | {s['mean_psnr_db']:.2f} | "
                  f"{s['min_interior_psnr_db']:.2f} | {s['max_abs']:.4f} |")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    if not (args.measure or args.graph or args.weights):
        parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
