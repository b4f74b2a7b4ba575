"""An executor with Bender's numerics: what Bender computes on the device, in numpy.

`run_bender_numpy` runs the layer list of a converter report (`check_bender_graph`) with float16
images between layers, float32 accumulation and weights, the instance-norm kernel's eps 1e-4 and
+-10 clamp, and MPS padding and edge modes; `mps_conv` (dense and depthwise), `mps_conv_transpose`
and `bender_instance_norm` are those layers.
"""

from __future__ import annotations

import numpy as np

from export.bender.converter import BenderReport, check_bender_graph
from export.bender.spec import BENDER_INSTANCE_NORM_CLAMP, BENDER_INSTANCE_NORM_EPSILON, BenderExportError


def _pad(x: np.ndarray, top: int, bottom: int, left: int, right: int, edge: str) -> np.ndarray:
    if not (top or bottom or left or right):
        return x
    widths = [(top, bottom), (left, right), (0, 0)]
    if edge == "zero":
        return np.pad(x, widths)
    if edge == "clamp":
        return np.pad(x, widths, mode="edge")  # MPSImageEdgeModeClamp: nearest edge pixel
    if edge == "reflect":
        return np.pad(x, widths, mode="reflect")
    raise BenderExportError(f"unknown edge mode {edge!r}")


def mps_conv(x: np.ndarray, kernel: np.ndarray, stride: tuple[int, int], pad_top: int, pad_left: int,
             out_hw: tuple[int, int], edge: str, depthwise: bool = False) -> np.ndarray:
    """MPSCNNConvolution: output (i, j) reads the window starting at (i*sy - pad_top, j*sx - pad_left).

    (Bender sets offset = k/2 - padTop and MPS centres the kernel, window [c - k/2, c - k/2 + k - 1].)
    float32 accumulation, HWIO kernel; depthwise: a [kh, kw, C, 1] kernel, one filter per channel.
    """
    kh, kw, cin, cout = kernel.shape
    h, w = x.shape[:2]
    oh, ow = out_hw
    sy, sx = stride
    top, left = max(0, pad_top), max(0, pad_left)
    bottom = max(0, (oh - 1) * sy - pad_top + kh - h)
    right = max(0, (ow - 1) * sx - pad_left + kw - w)
    xp = _pad(x, top, bottom, left, right, edge)[top - pad_top:, left - pad_left:]
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(0, 1))
    windows = windows[: sy * (oh - 1) + 1: sy, : sx * (ow - 1) + 1: sx]  # (oh, ow, cin, kh, kw)
    if depthwise:
        return np.einsum("hwcij,ijc->hwc", windows, kernel[..., 0], optimize=True).astype(np.float32, copy=False)
    return np.tensordot(windows, kernel, axes=([2, 3, 4], [2, 0, 1])).astype(np.float32, copy=False)


def mps_conv_transpose(x: np.ndarray, filt: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """MPSCNNConvolutionTranspose as Bender configures it (offset 0, kernelOffset 0, edge zero, no bias).

    The source is expanded with (stride - 1) zeros between pixels, then convolved with the weights
    as given (no rotation), kernel centred at k // 2; output size = input x stride (ConvTranspose.swift).
    filt: TF Conv2DBackpropInput layout [kh, kw, out, in].
    """
    h, w, cin = x.shape
    sy, sx = stride
    inter = np.zeros(((h - 1) * sy + 1, (w - 1) * sx + 1, cin), np.float32)
    inter[::sy, ::sx] = x
    kh, kw = filt.shape[:2]
    return mps_conv(inter, np.ascontiguousarray(filt.transpose(0, 1, 3, 2)), (1, 1), kh // 2, kw // 2,
                    (h * sy, w * sx), "zero")


def _neuron(x: np.ndarray, kind: str | None) -> np.ndarray:
    if kind is None:
        return x
    if kind in ("Relu", "QuantizedRelu"):
        return np.maximum(x, 0.0)
    if kind == "Relu6":
        return np.clip(x, 0.0, 6.0)
    if kind == "Sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    if kind == "Tanh":
        return np.tanh(x)
    raise BenderExportError(f"neuron {kind!r} not modelled")


def bender_instance_norm(x: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                         eps: float = BENDER_INSTANCE_NORM_EPSILON, clamp: float | None = BENDER_INSTANCE_NORM_CLAMP):
    """instanceNorm.metal: float mean and (two-pass) variance of the float16 texture, then
    clamp((v - mean) * scale / sqrt(var + 1e-4) + shift, -10, 10) written back."""
    x = x.astype(np.float32)
    mean = x.mean(axis=(0, 1), dtype=np.float32)
    var = np.square(x - mean).mean(axis=(0, 1), dtype=np.float32)
    multiplier = scale.astype(np.float32) / np.sqrt(var + np.float32(eps))
    out = (x - mean) * multiplier + shift.astype(np.float32)
    return np.clip(out, -clamp, clamp) if clamp is not None else out


def run_bender_numpy(graph_def, image: np.ndarray, *, fp16: bool = True,
                     eps: float = BENDER_INSTANCE_NORM_EPSILON, clamp: float | None = BENDER_INSTANCE_NORM_CLAMP,
                     edge_mode: str | None = None, report: BenderReport | None = None) -> np.ndarray:
    """Run the layers Bender maps from `graph_def` on an (H, W, 3) image in [0, 1].

    Defaults are Bender's numerics: every layer output rounded to float16 (MPSImage .float16
    textures), convolutions accumulated in float32 with float32 weights, instance norm with eps 1e-4
    and the +-10 clamp of the Metal kernel. fp16=False, eps=1e-5, clamp=None gives a float32
    executor of the same layer list; edge_mode overrides every conv's edge mode ("reflect" turns the
    graph back into Magenta's padding, to prove the graph itself is exact).
    """
    report = report or check_bender_graph(graph_def)
    if not report.ok:
        raise BenderExportError("graph is not Bender-compatible:\n" + report.summary())
    rnd = (lambda a: a.astype(np.float16).astype(np.float32)) if fp16 else (lambda a: a.astype(np.float32))  # noqa: E731
    outputs: dict[str, np.ndarray] = {}
    x = np.asarray(image, np.float32)
    for layer in report.details:
        p = layer.params
        if layer.type == "Start":
            if layer.out_size is not None and tuple(x.shape) != tuple(layer.out_size):
                raise BenderExportError(f"image {x.shape} does not match the graph input {layer.out_size} "
                                        "(Bender would Lanczos-resize it)")
            y = x
        elif layer.type in ("Convolution", "DepthwiseConvolution"):
            if p["dilation"] != (1, 1):
                raise BenderExportError(f"{layer.id}: dilated convolution not modelled")
            src = outputs[layer.inputs[0]]
            kh, kw = p["weights"].shape[:2]
            sy, sx = p["stride"]
            oh, ow = layer.out_size[:2]
            if p["padding"] == "same":
                pads = p["paddings"]
                ph, pw = src.shape[0] + pads[2] + pads[3], src.shape[1] + pads[0] + pads[1]
                pad_top = int(((oh - 1) * sy + kh - ph) / 2)  # Swift Int(padHeight / 2): truncation
                pad_left = int(((ow - 1) * sx + kw - pw) / 2)
            else:
                pad_top, pad_left = p["paddings"][2], p["paddings"][0]
            y = mps_conv(src, p["weights"].astype(np.float32), (sy, sx), pad_top, pad_left, (oh, ow),
                         edge_mode or p["edge_mode"], depthwise=layer.type == "DepthwiseConvolution")
            if p["bias"] is not None:
                y = y + p["bias"].astype(np.float32)
            y = _neuron(y, p["neuron"])
        elif layer.type == "ConvTranspose":
            y = mps_conv_transpose(outputs[layer.inputs[0]], p["weights"].astype(np.float32), p["stride"])
        elif layer.type == "InstanceNorm":
            y = bender_instance_norm(outputs[layer.inputs[0]], p["scale"], p["shift"], eps=eps, clamp=clamp)
        elif layer.type == "Neuron":
            y = _neuron(outputs[layer.inputs[0]], p["neuron"])
        elif layer.type == "Add":
            y = outputs[layer.inputs[0]] + outputs[layer.inputs[1]]
        elif layer.type == "Concat":
            y = np.concatenate([outputs[i] for i in layer.inputs], axis="hwf".index(p["axis"]))
        else:
            raise BenderExportError(f"{layer.id}: {layer.type} layers are not modelled")
        outputs[layer.id] = rnd(y)
    return outputs[report.details[-1].id]
