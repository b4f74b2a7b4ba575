"""Where a training step's GPU time goes: a JAX profiler trace of the real step, summarised.

Builds the step exactly as `benchmarks/train_throughput.py` does (one model, precision, batch
size), compiles it, traces `--steps` steps with `jax.profiler.trace` and reads the trace back
with `jax.profiler.ProfileData`: GPU busy time vs wall time (idle GPU = host or input bound),
time per category of XLA operation (convolutions, matrix products, fusions, copies/transposes,
reductions, collectives), the most expensive kernels with their trace statistics, and the
most expensive HLO instructions (XLA_FLAGS=--xla_dump_to=DIR dumps the HLO that names them).

    KERAS_BACKEND=jax python benchmarks/profile_step.py --model magenta_lite --batch-size 64 \\
        --out outputs/benchmarks/profile_magenta_lite_b64.json

Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import train_throughput as throughput  # noqa: E402  (one definition of the benchmarked step)

CATEGORIES = (  # first match wins; matched against the op name and its HLO text
    ("convolution", ("conv", "cudnn")),
    ("matrix product", ("gemm", "dot", "cublas", "matmul")),
    ("collective", ("all-reduce", "all-gather", "reduce-scatter", "collective", "nccl")),
    ("copy/transpose", ("copy", "transpose", "memcpy", "memset")),
    ("reduction", ("reduce",)),
    ("other fusion", ("fusion",)),
)


def category(text: str) -> str:
    text = text.lower()
    return next((name for name, keys in CATEGORIES if any(k in text for k in keys)), "other")


def summarise(trace_dir: str, wall_s: float, steps: int, top: int) -> dict:
    from jax.profiler import ProfileData

    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    data = ProfileData.from_file(path)
    gpu_planes = [p for p in data.planes if p.name.startswith("/device:GPU")]
    if not gpu_planes:
        return {"error": "no GPU in the trace (run this on a GPU)"}
    plane = gpu_planes[0]
    lines = {line.name: list(line.events) for line in plane.lines}
    ops_line = next((name for name in lines if name == "XLA Ops"), None)
    if ops_line is None:  # fall back to the busiest stream
        ops_line = max(lines, key=lambda n: len(lines[n]))
    by_op, by_category, event_stats, by_hlo, hlo_kernels, hlo_text = (
        collections.Counter(), collections.Counter(), {}, collections.Counter(), collections.defaultdict(set), {})
    for event in lines[ops_line]:
        stats = dict(event.stats)
        text = f"{event.name} {stats.get('long_name', '')} {stats.get('hlo_category', '')}"
        by_op[event.name] += event.duration_ns
        by_category[category(text)] += event.duration_ns
        event_stats.setdefault(event.name, {k: str(v)[:300] for k, v in stats.items()})
        hlo = str(stats.get("hlo_op", "")) or str(stats.get("long_name", ""))[:120]
        if hlo:  # one HLO instruction (a layer's convolution, a fusion) may launch several kernels
            by_hlo[hlo] += event.duration_ns
            hlo_kernels[hlo].add(event.name[:80])
            hlo_text.setdefault(hlo, str(stats.get("long_name", ""))[:400])  # shapes and window: which layer
    busy_ns = sum(by_category.values())
    per_step = lambda ns: ns / 1e6 / steps  # noqa: E731
    return {
        "trace_line": ops_line, "trace_lines": {name: len(events) for name, events in lines.items()},
        "steps": steps, "wall_ms_per_step": 1000 * wall_s / steps,
        "gpu_busy_ms_per_step": per_step(busy_ns), "gpu_busy_fraction": busy_ns / 1e9 / wall_s,
        "categories_ms_per_step": {k: per_step(v) for k, v in by_category.most_common()},
        "top_ops": [{"op": name, "ms_per_step": per_step(ns), "share": ns / busy_ns, "stats": event_stats[name]}
                    for name, ns in by_op.most_common(top)],
        "top_hlo_ops": [{"hlo_op": name, "ms_per_step": per_step(ns), "share": ns / busy_ns,
                         "kernels": sorted(hlo_kernels[name]), "hlo": hlo_text[name]}
                        for name, ns in by_hlo.most_common(top)],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    throughput.add_configuration_arguments(parser)
    parser.add_argument("--input-dtype", default="float32", choices=["float32", "uint8"])
    parser.add_argument("--variant", default="base",
                        help="Hydra overrides and loop=bare|training, as train_throughput.py --variants")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "profile_step.json")
    args = parser.parse_args(argv)
    import jax

    label, overrides, loop = throughput.parse_variant(args.variant)
    cfg = throughput.compose(args.model, args.precision, args.batch_size, args.image_size, workers=1,
                             input_dtype=args.input_dtype, overrides=overrides)
    objective, _ = throughput.build_step(cfg)
    feed = lambda n: throughput.CycledBatches(args.batch_size, args.image_size, n, args.input_dtype)  # noqa: E731
    objective.fit(feed(3), epochs=1, verbose=0)  # compile outside the trace
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            start = time.perf_counter()
            objective.fit(feed(args.steps), epochs=1, verbose=0, callbacks=[throughput.StepClock(sync=loop == "training")])
            wall = time.perf_counter() - start
        report = {"model": args.model, "precision": args.precision, "batch_size": args.batch_size,
                  "input_dtype": args.input_dtype, "variant": label, "image_size": args.image_size, "device": str(jax.devices()[0].device_kind),
                  **summarise(trace_dir, wall, args.steps, args.top)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    if "error" in report:
        return report["error"]
    lines = [f"{report['model']} {report['precision']} batch {report['batch_size']} on {report['device']}: "
             f"{report['wall_ms_per_step']:.1f} ms/step wall, GPU busy {report['gpu_busy_ms_per_step']:.1f} ms "
             f"({100 * report['gpu_busy_fraction']:.0f}%)", ""]
    lines += [f"  {name:<16} {ms:8.2f} ms" for name, ms in report["categories_ms_per_step"].items()]
    lines += ["", f"  {'ms/step':>8} {'share':>6}  kernel"]
    lines += [f"  {o['ms_per_step']:8.2f} {100 * o['share']:5.1f}%  {o['op'][:100]}" for o in report["top_ops"]]
    lines += ["", f"  {'ms/step':>8} {'share':>6}  HLO instruction (kernels)"]
    lines += [f"  {o['ms_per_step']:8.2f} {100 * o['share']:5.1f}%  {o['hlo_op']}  ({len(o['kernels'])} kernels)"
              for o in report.get("top_hlo_ops", [])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
