"""What Bender expects of a graph and what the Bender export promises.

The graph's input and output names, the numerics of Bender's instance-norm Metal kernel, the parity
the Bender form can promise against `reference_forward` (docs/bender.md), the graph forms
`build_bender_graph` can write, and the error the package raises. Imports nothing from the package.
"""

from __future__ import annotations

INPUT_NAME = "content_image"
OUTPUT_NAME = "stylized_image"

# Sources/Metal/instanceNorm.metal, instanceNorm3.metal: sqrt(var + 1e-4), clamp(..., -10, 10).
BENDER_INSTANCE_NORM_EPSILON = 1e-4
BENDER_INSTANCE_NORM_CLAMP = 10.0
MAX_CONCAT_INPUTS = 10  # Bender's Concat layer: maxInputTextures

# Recommended parity thresholds for the export stage (docs/bender.md: measured minima minus a margin).
# BENDER_MIN_PSNR_DB: run_bender_numpy(graph) vs reference_forward, full frame, default graph
# (padding="concat"), any size; also the padding="clamp" graph run with edge_mode="reflect".
# CLAMP_PADDING_*: what a padding="clamp" graph can promise on the device (short side >= 384).
BENDER_MIN_PSNR_DB = 42.0
CLAMP_PADDING_MIN_PSNR_DB = 18.0
CLAMP_PADDING_MIN_INTERIOR_PSNR_DB = 28.0
INTERIOR_BORDER = 16  # pixels left out by the "interior" PSNR (where edge clamping does not reach)

UPSAMPLE_FORMS = ("nearest_conv", "fused")
PADDING_FORMS = ("clamp", "concat")
STRIDE2_FORMS = ("same4", "explicit")


class BenderExportError(ValueError):
    """A network or graph that cannot be expressed for, or run by, Bender."""
