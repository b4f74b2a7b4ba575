"""Where a training step's GPU time goes: a JAX profiler trace of the real step, summarised.

Builds the step exactly as `benchmarks/train_throughput.py` does (one model, precision, batch
size), compiles it, traces `--steps` steps with `jax.profiler.trace` and reads the trace back
with `jax.profiler.ProfileData`: GPU busy time vs wall time (idle GPU = host or input bound),
time per category of XLA operation (convolutions, matrix products, fusions, copies/transposes,
reductions, collectives), the most expensive kernels with their trace statistics, and the
most expensive HLO instructions. With --hlo-dump DIR, XLA also writes the step's optimized HLO
there, and each instruction is named by the layer it comes from (the op_name JAX records), with
the GPU time summed by part: the transfer network, the style predictor, each VGG-16 conv forward
and backward, the Gram matrices, the optimizer. (A CUDA-graph command buffer's time is shared
equally among its kernels: an estimate.) --annotate names an existing report from a dump.

    KERAS_BACKEND=jax python -m benchmarks.profile_step --model magenta_lite --batch-size 64 \\
        --hlo-dump outputs/benchmarks/hlo --out outputs/benchmarks/profile_magenta_lite_b64.json
    python -m benchmarks.profile_step --annotate REPORT.json --hlo-dump DIR   # any machine

Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parents[1]

from benchmarks import train_throughput as throughput  # noqa: E402  (one definition of the benchmarked step)

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
    by_op, by_category, event_stats, by_hlo, hlo_kernels = (
        collections.Counter(), collections.Counter(), {}, collections.Counter(), collections.defaultdict(set))
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
                         "kernels": sorted(hlo_kernels[name])}
                        for name, ns in by_hlo.most_common(top)],
    }


def hlo_op_names(dump_dir) -> dict[str, str]:
    """{instruction: the op_name JAX recorded for it} from the train step's optimized HLO in an XLA dump."""
    files = sorted(glob.glob(f"{dump_dir}/*train_step*after_optimizations.txt"), key=os.path.getsize)
    if not files:
        raise SystemExit(f"--hlo-dump {dump_dir}: no *train_step*after_optimizations.txt there")
    names = {}
    with open(files[-1]) as hlo:
        for line in hlo:
            match = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]+)"', line)
            if match:
                names.setdefault(match.group(1), match.group(2))
    return names


def part_of(op_name: str) -> str:
    """The part of the training step an op_name belongs to."""
    backward = "transpose(jvp(" in op_name
    if vgg := re.search(r"block\d_(?:conv\d|pool)", op_name):
        return f"VGG-16 {vgg.group(0)} {'backward' if backward else 'forward'}"
    for key, part in (("bnc,bnd", "Gram matrices"), ("style_predictor", "style predictor"),
                      ("transformer", "transfer network"), ("adam", "optimizer")):
        if key in op_name:
            return part + (" backward" if backward and part == "transfer network" else "")
    return "other"


def annotate(report: dict, dump_dir) -> dict:
    """Name each top HLO instruction by layer and sum the GPU time by part (see the module doc)."""
    names = hlo_op_names(dump_dir)
    # Kernels in command buffers carry their fusion's name with "_N" where the HLO has ".N".
    op_name = lambda name: names.get(name) or names.get(re.sub(r"_(\d+)$", r".\1", name), "")  # noqa: E731
    parts = collections.Counter()
    for op in report["top_hlo_ops"]:
        if op["hlo_op"].startswith("command_buffer") and op["kernels"]:
            op["layers"] = [op_name(k) for k in op["kernels"]]
            for layer in op["layers"]:
                parts[part_of(layer)] += op["ms_per_step"] / len(op["layers"])
        else:
            op["layer"] = op_name(op["hlo_op"])
            parts[part_of(op["layer"])] += op["ms_per_step"]
    covered = sum(parts.values())
    report["parts_ms_per_step"] = {name: ms for name, ms in parts.most_common()}
    report["parts_cover_ms_per_step"] = covered  # the top instructions' share of gpu_busy_ms_per_step
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    throughput.add_configuration_arguments(parser)
    parser.add_argument("--input-dtype", default="float32", choices=["float32", "uint8"])
    parser.add_argument("--variant", default="base",
                        help="Hydra overrides and loop=bare|training, as train_throughput.py --variants")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--hlo-dump", type=Path, help="write the step's optimized HLO here and name the instructions by layer")
    parser.add_argument("--annotate", type=Path, help="name an existing report's instructions from --hlo-dump (no run)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "profile_step.json")
    args = parser.parse_args(argv)
    if args.annotate:
        if not args.hlo_dump:
            parser.error("--annotate needs --hlo-dump DIR")
        report = annotate(json.loads(args.annotate.read_text()), args.hlo_dump)
        args.annotate.write_text(json.dumps(report, indent=2))
        print(format_parts(report))
        return 0
    if args.hlo_dump:  # read by XLA when the backend starts, which is after this
        os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={args.hlo_dump} "
                                   "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*").strip()
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
            _, callbacks = throughput.timed_callbacks(loop, args.steps, objective)
            objective.fit(feed(args.steps), epochs=1, verbose=0, callbacks=callbacks)
            wall = time.perf_counter() - start
        report = {"model": args.model, "precision": args.precision, "batch_size": args.batch_size,
                  "input_dtype": args.input_dtype, "variant": label, "image_size": args.image_size, "device": str(jax.devices()[0].device_kind),
                  **summarise(trace_dir, wall, args.steps, args.top)}
    if args.hlo_dump and "error" not in report:
        annotate(report, args.hlo_dump)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(format_parts(report))
    return 0


def format_parts(report: dict) -> str:
    if "parts_ms_per_step" not in report:
        return ""
    lines = [f"\n  GPU ms per step by part ({report['parts_cover_ms_per_step']:.1f} of {report['gpu_busy_ms_per_step']:.1f} ms "
             "in the top instructions):"]
    return "\n".join(lines + [f"  {ms:8.2f}  {name}" for name, ms in report["parts_ms_per_step"].items()])


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
