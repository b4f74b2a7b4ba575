"""The weights of a baked network as benderthon 0.3.0 `--only-weights` files (one raw float32 file
per variable, under Magenta's variable names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.baked import BakedNetwork
from export.bender.norms import for_bender_norms


def benderthon_filename(prefix: str, variable_name: str) -> str:
    """benderthon 0.3.0 tf_freeze.save_weights: '{output_path}-{var.name}' with ':' and '/' -> '-'."""
    return f"{prefix}-{variable_name.replace(':', '-').replace('/', '-')}"


def benderthon_variables(net: BakedNetwork, transpose_convs: bool = True) -> dict[str, np.ndarray]:
    """The variables of the baked network under Magenta's names (with TF's ':0'), in file layout.

    - `{scope}/weights:0` for every conv (Magenta's contract ones with the batch norm folded in); a
      realtime network's separable conv as `{scope}/depthwise/weights:0` and `{scope}/pointwise/weights:0`;
    - Magenta's contract convs: `{scope}/BatchNorm/beta:0`, the folded bias (batch norm as identity,
      as training.weights.magenta_import holds it); a realtime network's conv biases: `{scope}/biases:0`;
    - `{scope}/StyleNorm/beta:0` and `/gamma:0`: this style's conditional instance-norm parameters,
      Magenta's style_params keys (tensors in Magenta, baked constants here).
    The realtime network's convs before a norm are scaled so Bender's InstanceNorm eps is the model's
    (`for_bender_norms`).
    transpose_convs=True writes weights in the layout MPS reads them: convs as benderthon's
    `--conv-vars` does (perm [3, 0, 1, 2], HWIO -> OHWI, MPSCNNConvolution); depthwise filters as
    [C][kh][kw] (MPSCNNDepthWiseConvolution; benderthon has no option for it); transposed convs as
    [out][kh][kw][in] rotated by 180 degrees (MPSCNNConvolutionTranspose applies weights as given, TF
    rotates them; benderthon's `--conv-transpose-vars` is for Bender's kernel before iOS 11.3).
    False writes them as stored (TF's HWIO, [k, k, C, 1], [k, k, out, in]).
    """
    def layout(kernel, kind):
        kernel = np.asarray(kernel, np.float32)
        if not transpose_convs:
            return kernel
        perm = {"conv": (3, 0, 1, 2), "depthwise": (2, 3, 0, 1), "transpose": (2, 0, 1, 3)}[kind]
        return np.ascontiguousarray((kernel[::-1, ::-1] if kind == "transpose" else kernel).transpose(perm))

    out: dict[str, np.ndarray] = {}
    for c in for_bender_norms(net).convs():  # Bender's InstanceNorm layer has its own eps
        if c.depthwise is not None:
            out[f"{c.scope}/depthwise/weights:0"] = layout(c.depthwise, "depthwise")
            out[f"{c.scope}/pointwise/weights:0"] = layout(c.kernel, "conv")
        else:
            out[f"{c.scope}/weights:0"] = layout(c.kernel, "transpose" if c.transpose else "conv")
        if c.bias is not None:
            bias_name = "BatchNorm/beta" if net.architecture == "magenta" else "biases"
            out[f"{c.scope}/{bias_name}:0"] = np.asarray(c.bias, np.float32)
        if c.gamma is not None:
            out[f"{c.scope}/StyleNorm/beta:0"] = np.asarray(c.beta, np.float32)
            out[f"{c.scope}/StyleNorm/gamma:0"] = np.asarray(c.gamma, np.float32)
    return out


def write_benderthon_weights(net: BakedNetwork, out_dir, prefix: str, transpose_convs: bool = True) -> list[Path]:
    """One raw little-endian float32 file per variable, named as benderthon 0.3.0 `--only-weights`
    names them (`out_dir/{prefix}-transformer-contract-conv1-weights-0`, ...). Returns the files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, value in benderthon_variables(net, transpose_convs).items():
        path = out_dir / benderthon_filename(prefix, name)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(np.ascontiguousarray(value, "<f4").tobytes())
        tmp.replace(path)
        files.append(path)
    return files
