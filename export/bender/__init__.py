"""Bender export: one baked style as a frozen TensorFlow GraphDef that Bender's `TFConverter` maps.

Bender (xmartlabs/Bender, Swift + Metal Performance Shaders) maps a fixed set of TensorFlow ops to
MPS layers and silently skips any other op (rules and their Swift sources in docs/bender.md).

- `spec`: what Bender expects and promises: input/output names, the instance-norm kernel's eps and
  clamp, the parity thresholds, the graph forms, `BenderExportError`;
- `norms`: what Bender's instance-norm kernel needs of a baked network (its eps, its +-10 clamp);
- `graph`: `build_bender_graph`, the transfer network (Magenta's or the realtime one) in ops Bender maps;
- `converter`: `check_bender_graph`, a Python replay of Bender's TFConverter (which nodes it would
  drop, what it maps them to, whether the network stays connected);
- `numerics`: `run_bender_numpy`, the mapped layer list run with Bender's numerics;
- `weights`: `write_benderthon_weights`, the same weights as benderthon `--only-weights` files.

Imports go one way: spec <- converter <- numerics, graph; spec <- norms <- graph, weights. The parity of the
Bender form on real photos is measured by `python -m benchmarks.bender_parity --measure`.
"""

from export.bender.converter import BENDER_MAPPERS, BenderLayer, BenderReport, check_bender_graph
from export.bender.graph import build_bender_graph, to_tensorflow_graph_def
from export.bender.numerics import run_bender_numpy
from export.bender.spec import (BENDER_INSTANCE_NORM_CLAMP, BENDER_INSTANCE_NORM_EPSILON, BENDER_MIN_PSNR_DB,
                                CLAMP_PADDING_MIN_INTERIOR_PSNR_DB, CLAMP_PADDING_MIN_PSNR_DB, INPUT_NAME,
                                INTERIOR_BORDER, OUTPUT_NAME, PADDING_FORMS, STRIDE2_FORMS, UPSAMPLE_FORMS,
                                BenderExportError)
from export.bender.weights import write_benderthon_weights

__all__ = [
    "BENDER_INSTANCE_NORM_CLAMP", "BENDER_INSTANCE_NORM_EPSILON", "BENDER_MAPPERS", "BENDER_MIN_PSNR_DB",
    "CLAMP_PADDING_MIN_INTERIOR_PSNR_DB", "CLAMP_PADDING_MIN_PSNR_DB", "INPUT_NAME", "INTERIOR_BORDER", "OUTPUT_NAME",
    "PADDING_FORMS", "STRIDE2_FORMS", "UPSAMPLE_FORMS", "BenderExportError", "BenderLayer", "BenderReport",
    "build_bender_graph", "check_bender_graph", "run_bender_numpy", "to_tensorflow_graph_def",
    "write_benderthon_weights",
]
