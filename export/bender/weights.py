"""The weights of a baked network as benderthon 0.3.0 `--only-weights` files (one raw float32 file
per variable, under Magenta's variable names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.baked import BakedNetwork


def benderthon_filename(prefix: str, variable_name: str) -> str:
    """benderthon 0.3.0 tf_freeze.save_weights: '{output_path}-{var.name}' with ':' and '/' -> '-'."""
    return f"{prefix}-{variable_name.replace(':', '-').replace('/', '-')}"


def benderthon_variables(net: BakedNetwork, transpose_convs: bool = True) -> dict[str, np.ndarray]:
    """The variables of the baked network under Magenta's names (with TF's ':0'), in file layout.

    - `{scope}/weights:0` for every conv (contract ones with the batch norm folded in);
    - `{scope}/BatchNorm/beta:0` for the contract convs: the folded bias (batch norm as identity,
      as training.weights.magenta_import holds it);
    - `{scope}/StyleNorm/beta:0` and `/gamma:0`: this style's conditional instance-norm parameters,
      Magenta's style_params keys (tensors in Magenta, baked constants here).
    transpose_convs=True writes conv weights as benderthon's `--conv-vars` does (perm [3, 0, 1, 2],
    HWIO -> OHWI, the layout MPSCNNConvolution reads); False writes them as stored (HWIO).
    """
    out: dict[str, np.ndarray] = {}
    for c in net.convs():
        kernel = np.asarray(c.kernel, np.float32)
        out[f"{c.scope}/weights:0"] = np.ascontiguousarray(kernel.transpose(3, 0, 1, 2) if transpose_convs else kernel)
        if c.bias is not None:
            out[f"{c.scope}/BatchNorm/beta:0"] = np.asarray(c.bias, np.float32)
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
