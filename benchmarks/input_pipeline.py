"""The training input pipeline alone: images/s by worker count, threads or processes, and input dtype.

The real pipeline `python -m pipelines.train` reads (`TrainingBatches` on the shipped photos:
decode, random scale and crop, flips, the style's augmentation, batching in `trainer.data_workers`
threads, or processes with `--kinds processes`), read through Keras' PyDataset adapter as `fit` reads it. A GPU step consumes images at
the rate in docs/performance.md; the pipeline must make them faster on the training machine's CPUs.

    python -m benchmarks.input_pipeline --workers 1 2 --dtypes float32 uint8
    python -m benchmarks.input_pipeline --workers 8 16 --dtypes uint8 --style all --kinds threads processes

Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]

from benchmarks import train_throughput as throughput  # noqa: E402  (one definition of the pipeline's timing)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "uint8"], choices=["float32", "uint8"])
    parser.add_argument("--kinds", nargs="+", default=["threads"], choices=["threads", "processes"],
                        help="workers as threads, or as forked processes (trainer.data_worker_processes=true)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--style", default="starry", help="style config (`all` augments its images)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed per row, after one batch of warm-up")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "input_pipeline.json")
    args = parser.parse_args(argv)
    report = {"command": "python -m benchmarks.input_pipeline " + " ".join(sys.argv[1:] if argv is None else argv),
              "cpus": os.cpu_count(), "batch_size": args.batch_size, "image_size": args.image_size,
              "style": args.style, "rows": []}
    print(f"{'workers':>7} {'kind':>9} {'dtype':>8} {'images/s':>9}   ({os.cpu_count()} CPUs, batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}, style={args.style})", flush=True)
    for kind, workers, dtype in itertools.product(args.kinds, args.workers, args.dtypes):
        cfg = throughput.compose("magenta_lite", "float32", args.batch_size, args.image_size, workers, input_dtype=dtype,
                                 overrides=(f"style={args.style}", f"trainer.data_worker_processes={kind == 'processes'}"))
        rate = throughput.pipeline_rate(cfg, args.seconds)
        report["rows"].append({"workers": workers, "kind": kind, "dtype": dtype, "images_per_s": rate})
        print(f"{workers:>7} {kind:>9} {dtype:>8} {rate:>9.1f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
