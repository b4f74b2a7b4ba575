"""Bender export: one baked style as a frozen TensorFlow GraphDef that Bender's `TFConverter` maps.

Bender (xmartlabs/Bender, Swift + Metal Performance Shaders) reads a binary GraphDef, rewrites it
with a fixed list of `TFOptimizer`s and maps the surviving ops to MPS layers; any other op is
skipped silently and disconnects the network. This module

- `build_bender_graph`: writes the transfer network with only ops Bender maps (rules and their
  Swift sources in docs/bender.md);
- `check_bender_graph`: replays Bender's rewrites and op -> layer mapping in Python and says which
  nodes Bender would drop, what it maps them to and whether the network stays connected;
- `run_bender_numpy`: executes the mapped layer list with Bender's numerics (float16 images between
  layers, the instance-norm kernel's eps 1e-4 and +-10 clamp, MPS padding and edge modes);
- `write_benderthon_weights`: the same weights as benderthon 0.3.0 `--only-weights` files.

`python -m benchmarks.bender_parity --measure` (from the repository root) prints the parity of the
Bender form with `reference_forward` on real photos (the tables in docs/bender.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.baked import CIN_EPSILON, BakedConv, BakedNetwork

INPUT_NAME = "content_image"
OUTPUT_NAME = "stylized_image"

# Sources/Metal/instanceNorm.metal, instanceNorm3.metal: sqrt(var + 1e-4), clamp(..., -10, 10).
BENDER_INSTANCE_NORM_EPSILON = 1e-4
BENDER_INSTANCE_NORM_CLAMP = 10.0

# Recommended parity thresholds for the export stage (docs/bender.md: measured minima minus a margin).
# BENDER_MIN_PSNR_DB: run_bender_numpy(graph) vs reference_forward, full frame, default graph
# (padding="concat"), any size; also the padding="clamp" graph run with edge_mode="reflect".
# CLAMP_PADDING_*: what a padding="clamp" graph can promise on the device (short side >= 384).
BENDER_MIN_PSNR_DB = 42.0
CLAMP_PADDING_MIN_PSNR_DB = 18.0
CLAMP_PADDING_MIN_INTERIOR_PSNR_DB = 28.0

UPSAMPLE_FORMS = ("nearest_conv", "fused")
PADDING_FORMS = ("clamp", "concat")
STRIDE2_FORMS = ("same4", "explicit")


class BenderExportError(ValueError):
    """A network or graph that cannot be expressed for, or run by, Bender."""


# --------------------------------------------------------------------------------------------
# 1. Graph builder
# --------------------------------------------------------------------------------------------

def nearest_upsample_transpose_filter(channels: int, factor: int = 2) -> np.ndarray:
    """Conv2DBackpropInput filter [k, k, out, in] that is nearest-neighbour upsampling by `factor`.

    Under MPSCNNConvolutionTranspose (zero-inserted intermediate image, kernel centred at k // 2,
    weights used as-is) and under TensorFlow's Conv2DBackpropInput (SAME) alike, a k = stride
    kernel of ones on the channel diagonal copies every input pixel into its factor x factor block.
    The kernel is symmetric, so the 180-degree rotation question between the two does not arise.
    """
    filt = np.zeros((factor, factor, channels, channels), np.float32)
    filt[:, :, np.arange(channels), np.arange(channels)] = 1.0
    return filt


def fused_upsample_filter(kernel: np.ndarray) -> np.ndarray:
    """4x4 ConvTranspose kernel (MPS orientation, [4, 4, out, in]) equal to nearest x2 + 3x3 conv.

    In one dimension, y[2m] = K[0] x[m-1] + (K[1] + K[2]) x[m] and
    y[2m+1] = (K[0] + K[1]) x[m] + K[2] x[m+1]; MPS reads y[q] = sum_t W[t] I[q - 2 + t] from the
    zero-inserted image I (I[2j] = x[j]), so W = A K A^T with A below. Exact in the interior; the
    first and last output row/column miss one tap (reflect padding would have supplied it).
    """
    if kernel.shape[:2] != (3, 3):
        raise BenderExportError(f"fused upsampling needs a 3x3 kernel, got {kernel.shape[:2]}")
    a = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32)
    w = np.einsum("ya,xb,abio->yxio", a, a, kernel.astype(np.float32))
    return np.ascontiguousarray(w.transpose(0, 1, 3, 2))  # HWIO -> [kh, kw, out, in]


def _same4_kernel(kernel: np.ndarray) -> np.ndarray:
    """A kxk stride-2 kernel zero-extended to (k+1)x(k+1) at the bottom/right.

    Bender's SAME (Convolution.swift) puts padTop = ((H/2 - 1) * 2 + k - H) / 2: 0 for k = 3,
    1 for k = 4. Magenta's reflect pad of k // 2 = 1 starts the window at 2i - 1, i.e. padTop 1:
    a 4x4 kernel whose last row/column is zero has exactly that window.
    """
    k = kernel.shape[0]
    out = np.zeros((k + 1, k + 1, *kernel.shape[2:]), np.float32)
    out[:k, :k] = kernel
    return out


def instance_norm_bound(c: BakedConv, pixels: int) -> float:
    """Largest |gamma * n + beta| an instance norm over `pixels` values can output.

    A normalised value satisfies |n| = |x - mean| / std <= sqrt(N - 1) (population std), so the bound
    holds for every input image of that size; Bender's eps only makes |n| smaller.
    """
    n_max = float(np.sqrt(max(pixels - 1, 1)))
    return float(np.max(np.abs(c.gamma) * n_max + np.abs(c.beta)))


def _pow2_scale(bound: float, limit: float) -> float:
    """Largest power-of-two scale s <= 1 with s * bound <= limit (power of two: exact in fp16/fp32)."""
    return 1.0 if bound <= limit else float(2.0 ** -np.ceil(np.log2(bound / limit)))


def clamp_guard_scales(net: BakedNetwork, height: int, width: int,
                       limit: float = BENDER_INSTANCE_NORM_CLAMP) -> dict[str, float]:
    """Per-instance-norm output scales that keep every value inside Bender's +-10 clamp.

    {conv scope: s}; the residual stream shares one scale ("stream"), since x + h must stay a sum.
    The expand conv3 norm feeds a sigmoid (not homogeneous): it keeps s = 1 (sigmoid(10) is already
    1 - 4.5e-5).
    """
    h4, w4 = height // 4, width // 4
    stream = min(_pow2_scale(instance_norm_bound(c2, h4 * w4), limit) for _, c2 in net.residual)
    scales = {"stream": stream}
    for c1, c2 in net.residual:
        scales[c1.scope] = _pow2_scale(instance_norm_bound(c1, h4 * w4), limit)
        scales[c2.scope] = stream
    h, w = h4, w4
    for c in net.expand:
        h, w = h * c.upsample, w * c.upsample
        scales[c.scope] = _pow2_scale(instance_norm_bound(c, h * w), limit) if c.activation == "relu" else 1.0
    return scales


def rescale_for_bender_clamp(net: BakedNetwork, height: int, width: int,
                             limit: float = BENDER_INSTANCE_NORM_CLAMP) -> tuple[BakedNetwork, dict[str, float]]:
    """An equivalent network whose instance-norm outputs never reach Bender's +-10 clamp.

    Each norm's gamma/beta are multiplied by a power of two s <= 1 (`clamp_guard_scales`); ReLU is
    positively homogeneous, so relu(s y) = s relu(y), and the next conv's weights are divided by s,
    which gives that conv exactly its original output (instance norms see unscaled inputs, eps
    included). The residual stream is carried scaled by one shared s (contract conv3 weights and bias
    times s). Powers of two scale float16/float32 values exactly, so this changes nothing but the
    clamp (and values below fp16's normal range, 6.1e-5 * s).
    """
    from dataclasses import replace

    if net.contract[-1].activation != "relu" or any(c1.activation != "relu" or c2.activation is not None
                                                    for c1, c2 in net.residual):
        raise BenderExportError("clamp guard expects Magenta's structure (ReLU after contract conv3 and residual conv1)")
    scales = clamp_guard_scales(net, height, width, limit)
    stream = scales["stream"]
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    contract = list(net.contract)
    last = contract[-1]
    contract[-1] = replace(last, kernel=f32(last.kernel * stream), bias=f32(last.bias * stream))
    residual = []
    for c1, c2 in net.residual:
        s1 = scales[c1.scope]
        residual.append((replace(c1, kernel=f32(c1.kernel / stream), gamma=f32(c1.gamma * s1), beta=f32(c1.beta * s1)),
                         replace(c2, kernel=f32(c2.kernel / s1), gamma=f32(c2.gamma * stream), beta=f32(c2.beta * stream))))
    expand, incoming = [], stream
    for c in net.expand:
        s = scales[c.scope]
        expand.append(replace(c, kernel=f32(c.kernel / incoming), gamma=f32(c.gamma * s), beta=f32(c.beta * s)))
        incoming = s
    return BakedNetwork(contract=contract, residual=residual, expand=expand), scales


def build_bender_graph(net: BakedNetwork, height: int, width: int, *,
                       padding: str = "concat", upsample: str = "nearest_conv", stride2: str = "same4",
                       clamp_guard: bool = True):
    """The baked transfer network as a tf.compat.v1.GraphDef that Bender maps op for op.

    input `content_image` [1, H, W, 3] float32 in [0, 1]; output `stylized_image` (Sigmoid).
    padding: "concat" (default) = Magenta's reflect padding built exactly from mapped layers (border
    rows/columns copied by one-hot convolutions, ConcatV2) followed by VALID convs; it relies on
    Bender's Concat axis mapping (TF axis 1 -> width, 2 -> height; written accordingly) and on MPS
    convolutions with a stride as large as the image. "clamp" = SAME convs with pad_mode REFLECT,
    which Bender turns into MPSImageEdgeMode.clamp: replicate padding, borders differ from Magenta.
    upsample: "nearest_conv" (default) = ConvTranspose(2x2 identity, stride 2) then the 3x3 conv
    with SAME + pad_mode REFLECT: exact, borders included. "fused" = one 4x4 ConvTranspose
    derived from the 3x3 kernel: exact in the interior only.
    stride2 (padding="clamp" only; "concat" pads explicitly and runs 3x3 VALID stride 2):
    "same4" (default) = the 3x3 stride-2 kernel zero-extended to 4x4 with SAME padding;
    "explicit" = 3x3 VALID with Bender's tensor-valued `explicit_paddings` attribute.
    clamp_guard: rescale the norms by powers of two so Bender's +-10 clamp never cuts a value
    (`rescale_for_bender_clamp`); False writes gamma/beta as they are.
    """
    import tensorflow as tf

    if padding not in PADDING_FORMS:
        raise BenderExportError(f"padding must be one of {PADDING_FORMS}, got {padding!r}")
    if upsample not in UPSAMPLE_FORMS:
        raise BenderExportError(f"upsample must be one of {UPSAMPLE_FORMS}, got {upsample!r}")
    if stride2 not in STRIDE2_FORMS:
        raise BenderExportError(f"stride2 must be one of {STRIDE2_FORMS}, got {stride2!r}")
    if height % 4 or width % 4 or height < 8 or width < 8:
        raise BenderExportError(
            f"{height}x{width}: Bender's SAME convolution floors H / stride, so both sides must be "
            "multiples of 4 (two stride-2 convs, two x2 upsamplings) and at least 8")
    if clamp_guard:
        net, _ = rescale_for_bender_clamp(net, height, width)
    rt = tf.raw_ops
    graph = tf.compat.v1.Graph()
    explicit_convs: list[str] = []
    with graph.as_default():
        const = lambda value, name: tf.constant(np.array(value, order="C"), name=name)  # noqa: E731

        def reflect_pad(x, p: int, name: str):
            """Magenta's REFLECT pad by p from mapped layers: each border row/column is copied by a
            one-hot convolution (identity over channels), then ConcatV2 along height and width."""
            _, hh, ww, cc = (int(d) for d in x.shape)
            eye = np.eye(cc, dtype=np.float32)

            def pick(src, j: int, size: int, axis: int, nm: str):
                def kernel(length, at):
                    k = np.zeros((length, 1, cc, cc) if axis == 1 else (1, length, cc, cc), np.float32)
                    k[(at, 0) if axis == 1 else (0, at)] = eye
                    return k

                def strides(step):
                    return [1, step, 1, 1] if axis == 1 else [1, 1, step, 1]

                if 2 * j < size:  # near the start: a (j+1)-long kernel whose only window starts at 0
                    return rt.Conv2D(input=src, filter=const(kernel(j + 1, j), f"{nm}/weights"), strides=strides(size),
                                     padding="VALID", name=f"{nm}/Conv2D")
                # near the end: stride j keeps lines 0 and j, then a 2-long kernel keeps line j
                two = rt.Conv2D(input=src, filter=const(kernel(1, 0), f"{nm}/stride/weights"), strides=strides(j),
                                padding="VALID", name=f"{nm}/stride/Conv2D")
                return rt.Conv2D(input=two, filter=const(kernel(2, 1), f"{nm}/weights"), strides=[1, 1, 1, 1],
                                 padding="VALID", name=f"{nm}/Conv2D")

            rows = ([pick(x, j, hh, 1, f"{name}/row{j}") for j in range(p, 0, -1)] + [x]
                    + [pick(x, hh - 1 - m, hh, 1, f"{name}/row{hh - 1 - m}") for m in range(1, p + 1)])
            xh = rt.ConcatV2(values=rows, axis=const(np.int32(1), f"{name}/rows/axis"), name=f"{name}/rows")
            cols = ([pick(xh, j, ww, 2, f"{name}/col{j}") for j in range(p, 0, -1)] + [xh]
                    + [pick(xh, ww - 1 - m, ww, 2, f"{name}/col{ww - 1 - m}") for m in range(1, p + 1)])
            return rt.ConcatV2(values=cols, axis=const(np.int32(2), f"{name}/cols/axis"), name=f"{name}/cols")

        def conv2d(x, c: BakedConv, name_scope: str, kernel=None, after_upsample: bool = False):
            kernel = c.kernel if kernel is None else kernel
            if padding == "concat" and not after_upsample:
                # (after a nearest upsampling, the clamp edge already equals reflect: SAME below)
                xp = reflect_pad(x, kernel.shape[0] // 2, f"{name_scope}/reflect")
                w = const(kernel, f"{name_scope}/weights")
                return rt.Conv2D(input=xp, filter=w, strides=[1, c.stride, c.stride, 1], padding="VALID",
                                 name=f"{name_scope}/Conv2D")
            if c.stride == 1:
                w = const(kernel, f"{name_scope}/weights")
                return rt.Conv2D(input=x, filter=w, strides=[1, 1, 1, 1], padding="SAME", name=f"{name_scope}/Conv2D")
            if c.stride != 2 or kernel.shape[0] != 3:
                raise BenderExportError(f"{c.scope}: only 3x3 stride-2 convs are supported, got {kernel.shape} /{c.stride}")
            if stride2 == "same4":
                w = const(_same4_kernel(kernel), f"{name_scope}/weights")
                return rt.Conv2D(input=x, filter=w, strides=[1, 2, 2, 1], padding="SAME", name=f"{name_scope}/Conv2D")
            w = const(kernel, f"{name_scope}/weights")
            explicit_convs.append(f"{name_scope}/Conv2D")
            return rt.Conv2D(input=x, filter=w, strides=[1, 2, 2, 1], padding="EXPLICIT",
                             explicit_paddings=[0, 0, 1, 1, 1, 1, 0, 0], name=f"{name_scope}/Conv2D")

        def instance_norm(x, c: BakedConv):
            """Bender's TFInstanceNormOptimizer pattern: scale * ((x - mu) / (var + eps) ** 0.5) + shift."""
            s = f"{c.scope}/StyleNorm"
            mean = rt.Mean(input=x, axis=const(np.array([1, 2], np.int32), f"{s}/moments/mean/reduction_indices"),
                           keep_dims=True, name=f"{s}/moments/mean")
            stop = rt.StopGradient(input=mean, name=f"{s}/moments/StopGradient")
            sqd = rt.SquaredDifference(x=x, y=stop, name=f"{s}/moments/SquaredDifference")
            var = rt.Mean(input=sqd, axis=const(np.array([1, 2], np.int32), f"{s}/moments/variance/reduction_indices"),
                          keep_dims=True, name=f"{s}/moments/variance")
            # Bender ignores this eps (its Metal kernel uses 1e-4); TensorFlow runs of the graph use it.
            add = rt.Add(x=var, y=const(np.float32(CIN_EPSILON), f"{s}/add/y"), name=f"{s}/add")
            std = rt.Pow(x=add, y=const(np.float32(0.5), f"{s}/pow/y"), name=f"{s}/pow")
            sub = rt.Sub(x=x, y=mean, name=f"{s}/sub")
            div = rt.RealDiv(x=sub, y=std, name=f"{s}/truediv")
            mul = rt.Mul(x=const(c.gamma.astype(np.float32), f"{s}/gamma"), y=div, name=f"{s}/mul")
            return rt.Add(x=mul, y=const(c.beta.astype(np.float32), f"{s}/beta"), name=f"{s}/add_1")

        def activation(x, c: BakedConv, name: str | None = None):
            if c.activation == "relu":
                return rt.Relu(features=x, name=name or f"{c.scope}/Relu")
            if c.activation == "sigmoid":
                return rt.Sigmoid(x=x, name=name or f"{c.scope}/Sigmoid")
            if c.activation is None:
                return x
            raise BenderExportError(f"{c.scope}: activation {c.activation!r} has no Bender neuron here")

        x = tf.compat.v1.placeholder(tf.float32, [1, height, width, 3], name=INPUT_NAME)
        h, w = height, width
        for c in net.contract:
            y = conv2d(x, c, c.scope)
            y = rt.BiasAdd(value=y, bias=const(c.bias.astype(np.float32), f"{c.scope}/biases"), name=f"{c.scope}/BiasAdd")
            x = activation(y, c)
            h, w = h // c.stride, w // c.stride
        for conv1, conv2 in net.residual:
            block = conv1.scope.rsplit("/", 1)[0]
            y = activation(instance_norm(conv2d(x, conv1, conv1.scope), conv1), conv1)
            y = instance_norm(conv2d(y, conv2, conv2.scope), conv2)
            x = rt.Add(x=x, y=y, name=f"{block}/add")
        for n, c in enumerate(net.expand):
            last = n == len(net.expand) - 1
            parent = c.scope.rsplit("/", 1)[0]  # transformer/expand/convN
            if c.upsample == 1:
                y = conv2d(x, c, c.scope)
            elif c.upsample == 2 and upsample == "nearest_conv":
                cin = c.kernel.shape[2]
                h, w = 2 * h, 2 * w
                up = rt.Conv2DBackpropInput(
                    input_sizes=const(np.array([1, h, w, cin], np.int32), f"{parent}/upsample/input_sizes"),
                    filter=const(nearest_upsample_transpose_filter(cin), f"{parent}/upsample/filter"),
                    out_backprop=x, strides=[1, 2, 2, 1], padding="SAME", name=f"{parent}/upsample/conv2d_transpose")
                y = conv2d(up, c, c.scope, after_upsample=True)
            elif c.upsample == 2:
                h, w = 2 * h, 2 * w
                y = rt.Conv2DBackpropInput(
                    input_sizes=const(np.array([1, h, w, c.kernel.shape[3]], np.int32), f"{c.scope}/input_sizes"),
                    filter=const(fused_upsample_filter(c.kernel), f"{c.scope}/weights"),
                    out_backprop=x, strides=[1, 2, 2, 1], padding="SAME", name=f"{c.scope}/conv2d_transpose")
            else:
                raise BenderExportError(f"{c.scope}: upsampling x{c.upsample} is not supported")
            x = activation(instance_norm(y, c), c, name=OUTPUT_NAME if last else None)
        if x.op.name != OUTPUT_NAME:
            raise BenderExportError(f"the network does not end in a sigmoid (last op {x.op.name})")
    graph_def = graph.as_graph_def()
    _swap_concat_axes(graph_def)  # TF NHWC axis 1 (height) is Bender's 2, and 2 (width) its 1
    for node in graph_def.node:
        if node.op == "Conv2D" and node.attr["padding"].s != b"VALID":
            node.attr["pad_mode"].s = b"REFLECT"  # Bender: REFLECT/SYMMETRIC -> MPSImageEdgeMode.clamp
            if node.name in explicit_convs:
                # Bender reads attr["explicit_paddings"].tensor.tensorContent (Int32) and treats any padding
                # string but "VALID" as SAME, so the Bender form is VALID + a tensor-valued attribute.
                del node.attr["explicit_paddings"]
                node.attr["padding"].s = b"VALID"
                node.attr["explicit_paddings"].tensor.CopyFrom(_int32_tensor([0, 0, 1, 1, 1, 1, 0, 0]))
        if node.op == "Const":
            _force_tensor_content(node)
    report = check_bender_graph(graph_def)
    if not report.ok:  # the builder's own output must survive Bender's converter
        raise BenderExportError("built graph is not Bender-compatible:\n" + report.summary())
    return graph_def


def _swap_concat_axes(graph_def) -> None:
    """Rewrite ConcatV2 axis constants between TF's NHWC numbering and Bender's.

    Bender's concatMapper reads the axis from the Const "<concat>/axis" (int_val) and maps it with
    LayerSizeAxis.fromTF: 1 -> .w, 2 -> .h, 3 -> .f; in TF's NHWC, 1 is height and 2 width.
    The same swap turns a Bender graph back into a TF one.
    """
    by_name = {n.name: n for n in graph_def.node}
    for node in graph_def.node:
        if node.op == "ConcatV2":
            axis = by_name.get(f"{node.name}/axis")
            if axis is not None and axis.attr["value"].tensor.int_val:
                value = axis.attr["value"].tensor.int_val[0]
                axis.attr["value"].tensor.int_val[0] = {1: 2, 2: 1}.get(value, value)


def _int32_tensor(values):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    arr = np.asarray(values, "<i4")
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT32,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=arr.size)]),
        tensor_content=arr.tobytes())


def _force_tensor_content(node) -> None:
    """Bender reads weights only from tensor_content: rewrite any multi-element float_val Const."""
    t = node.attr["value"].tensor
    count = int(np.prod([d.size for d in t.tensor_shape.dim])) if t.tensor_shape.dim else 1
    if count > 1 and not t.tensor_content and t.dtype == 1:  # DT_FLOAT
        values = np.broadcast_to(np.asarray(t.float_val, "<f4"), (count,)) if len(t.float_val) == 1 \
            else np.asarray(t.float_val, "<f4")
        del t.float_val[:]
        t.tensor_content = np.ascontiguousarray(values, "<f4").tobytes()


def to_tensorflow_graph_def(graph_def):
    """A copy TensorFlow can import: Bender-only attributes removed (pad_mode; explicit_paddings as a
    tensor becomes TF's EXPLICIT padding), ConcatV2 axes back in NHWC numbering. SAME convs then pad
    with zeros instead of clamping."""
    from tensorflow.core.framework import graph_pb2

    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    _swap_concat_axes(out)
    for node in out.node:
        if node.op != "Conv2D":
            continue
        if "pad_mode" in node.attr:
            del node.attr["pad_mode"]
        if "explicit_paddings" in node.attr and node.attr["explicit_paddings"].WhichOneof("value") == "tensor":
            pads = np.frombuffer(node.attr["explicit_paddings"].tensor.tensor_content, "<i4").tolist()
            del node.attr["explicit_paddings"]
            node.attr["explicit_paddings"].list.i.extend(pads)
            node.attr["padding"].s = b"EXPLICIT"
    return out


# --------------------------------------------------------------------------------------------
# 2. Checker: a Python replay of Bender's TFConverter
# --------------------------------------------------------------------------------------------

# TFConverter+Mappers.swift setupMappers(): TF op -> Bender layer class.
BENDER_MAPPERS = {
    "Add": "Add", "AddV2": "Add",
    "Relu": "Neuron", "Relu6": "Neuron", "QuantizedRelu": "Neuron", "Tanh": "Neuron", "Sigmoid": "Neuron",
    "MaxPool": "Pooling", "AvgPool": "Pooling",
    "Softmax": "Softmax",
    "Conv2D": "Convolution", "QuantizedConv2D": "Convolution", "DepthwiseConv2dNative": "DepthwiseConvolution",
    "Conv2DBackpropInput": "ConvTranspose",
    "Dense": "FullyConnected",
    "InstanceNormAdd": "InstanceNorm",
    "ConcatV2": "Concat", "Concat": "Concat",
    "BatchNormWithGlobalNormalization": "BatchNorm", "FusedBatchNorm": "BatchNorm", "FusedBatchNormV3": "BatchNorm",
}
IGNORED_OPS = ("Const", "Placeholder")  # TFConverter.ignoredOps
# TFDeleteOptimizers.swift TFIgnoredOpsDeleter.ops
DELETED_OPS = ("NoOp", "ExpandDims", "Cast", "Squeeze", "StopGradient", "CheckNumerics", "Assert", "Equal", "All",
               "Dequantize", "RequantizationRange", "Requantize", "PlaceholderWithDefault", "Identity")
# Nodes that only hold parameters read by the mapper of their consumer (not "dropped").
PARAMETER_OPS = ("Const", "VariableV2", "InstanceNormMul")
NEURON_OPS = ("Relu", "Tanh", "Sigmoid")  # TFOptimizer.addNeuronIfThere fuses only these
_I = re.IGNORECASE  # Regex.swift: NSRegularExpression(options: .caseInsensitive), matched anywhere
STRIP_REGEXES = (re.compile(r"save(_\d+)?/", _I), re.compile(r"Regularizer(_\d+)?/", _I),
                 re.compile(r"Initializer(_\d+)?/", _I))
DROPOUT_REGEX = re.compile(r"dropout(_\d+)?/", _I)
DROPOUT_MUL_REGEX = re.compile(r"dropout(_\d+)?/mul", _I)
MOMENTS_REGEX = re.compile(r"moments(_\d+)?/", _I)
READ_REGEX = re.compile(r".*/read$", _I)


class _Node:
    """Graph/Node.swift: ordered in/out adjacency with Bender's edge operations."""

    def __init__(self, nd):
        self.nd = nd
        self.name = nd.name
        self.op = nd.op
        self.neuron: str | None = None  # Constants.CustomAttr.neuron
        self.edge_in: list[_Node] = []
        self.edge_out: list[_Node] = []

    def __repr__(self):
        return f"<{self.op} {self.name}>"

    def add_incoming(self, other: "_Node") -> None:
        if other not in self.edge_in:
            self.edge_in.append(other)
            if self not in other.edge_out:
                other.edge_out.append(self)

    def replace_incoming(self, old: "_Node", new: "_Node") -> None:
        if old in self.edge_in:
            self.edge_in[self.edge_in.index(old)] = new
            if old in new.edge_out:
                new.edge_out[new.edge_out.index(old)] = self
            else:
                new.edge_out.append(self)

    def delete_incoming(self, node: "_Node") -> None:
        if node in self.edge_in:
            self.edge_in.remove(node)

    def delete_outgoing(self, node: "_Node") -> None:
        if node in self.edge_out:
            self.edge_out.remove(node)

    def remove_from_graph(self) -> None:
        outgoing, incoming = list(self.edge_out), list(self.edge_in)
        for out in outgoing:
            out.delete_incoming(self)
        for inc in incoming:
            inc.delete_outgoing(self)
            for out in outgoing:
                out.add_incoming(inc)
        self.edge_in, self.edge_out = [], []

    def strip(self, recursive: bool = False) -> None:
        outgoing, incoming = list(self.edge_out), list(self.edge_in)
        for out in outgoing:
            out.delete_incoming(self)
        for inc in incoming:
            inc.delete_outgoing(self)
        self.edge_in, self.edge_out = [], []
        if recursive:
            for node in incoming + outgoing:
                node.strip(recursive=True)

    @property
    def lonely(self) -> bool:
        return not self.edge_in and not self.edge_out

    @property
    def is_const_or_var(self) -> bool:
        return self.op in ("Const", "VariableV2")


def _dependency_list(roots: list[_Node], limit: int) -> list[_Node]:
    """DependencyListBuilder.swift, iteratively: pre-order DFS that appends a node once all its inputs
    are placed. Like the Swift code it does not check for repeats (a node reached again after it was
    placed is appended again)."""
    placed: set[int] = set()
    order: list[_Node] = []
    for root in roots:
        stack = [iter([root])]
        while stack:
            try:
                node = next(stack[-1])
            except StopIteration:
                stack.pop()
                continue
            if any(id(i) not in placed for i in node.edge_in):
                continue
            order.append(node)
            placed.add(id(node))
            if len(order) > limit:
                return order
            stack.append(iter(list(node.edge_out)))
    return order


@dataclass
class BenderLayer:
    """One layer Bender would create: its class, the TF node it came from and its parameters."""

    id: str
    type: str
    op: str
    inputs: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    out_size: tuple[int, int, int] | None = None  # (h, w, f) per the layer's initialize()


@dataclass
class BenderReport:
    layers: list[str]
    dropped: list[str]
    ok: bool
    problems: list[str]
    details: list[BenderLayer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = f"Bender: {'OK' if self.ok else 'NOT OK'}, {len(self.layers)} layers, {len(self.dropped)} dropped"
        return "\n".join([head, *(f"  problem: {p}" for p in self.problems), *(f"  note: {n}" for n in self.notes)])


class _Replay:
    """TFGraph.swift + the optimizers of TFConverter.default(additionalOptimizers: [TFInstanceNormOptimizer()])."""

    def __init__(self, graph_def):
        self.problems: list[str] = []
        self.notes: list[str] = []
        by_name: dict[str, _Node] = {}
        nodes = []
        for nd in graph_def.node:
            node = _Node(nd)
            if nd.name in by_name:
                self.problems.append(f"duplicate node name {nd.name!r}")
            by_name[nd.name] = node
            nodes.append(node)
        self.by_name = by_name
        for node in nodes:
            for inp in node.nd.input:
                if inp.startswith("^"):
                    continue  # TFGraph.initNodes filters control inputs
                src = by_name.get(inp)
                if src is None:
                    reason = "an output index (Bender looks inputs up by exact node name)" if ":" in inp else "no such node"
                    self.problems.append(f"edge {inp!r} -> {node.name!r} is dropped: {reason}")
                    continue
                node.add_incoming(src)
        roots = [n for n in nodes if not n.edge_in]
        self.nodes = _dependency_list(roots, limit=4 * len(nodes) + 16)
        if len(self.nodes) != len(nodes) or len({id(n) for n in self.nodes}) != len(self.nodes):
            names = [n.name for n in self.nodes]
            repeated = sorted({x for x in names if names.count(x) > 1})
            missing = sorted(set(by_name) - set(names))
            self.problems.append(
                "Bender's dependency sort (sortNodes) does not list every node exactly once "
                f"(repeated: {repeated[:5]}, unreachable/cyclic: {missing[:5]}); reorder the GraphDef so each "
                "Const comes right before its first consumer")

    # -- TFOptimizer.swift
    @staticmethod
    def _add_neuron_if_there(node: _Node) -> None:
        if len(node.edge_out) == 1 and node.edge_out[0].op in NEURON_OPS:
            nxt = node.edge_out[0]
            node.neuron = nxt.op
            for output in list(nxt.edge_out):
                output.replace_incoming(nxt, node)
            nxt.strip()

    def strip_training_ops(self):
        for node in list(self.nodes):
            if any(r.search(node.name) for r in STRIP_REGEXES):
                node.strip()

    def delete_ignored_ops(self):
        for node in list(self.nodes):
            if node.op in DELETED_OPS:
                node.remove_from_graph()

    def delete_dropout(self):
        """TFDeleteSubgraphOptimizer.optimize with TFDeleteDropout's input (Shape) / output (dropout/mul) rules."""
        mappings: dict[str, dict] = {}
        for node in list(self.nodes):
            m = DROPOUT_REGEX.search(node.name)
            if not m:
                continue
            key = node.name[: m.end()]
            entry = mappings.setdefault(key, {"inputs": None, "outputs": None})
            if node.op == "Shape":
                ins = [i for i in node.edge_in if not DROPOUT_REGEX.search(i.name)]
                entry["inputs"] = (entry["inputs"] or []) + ins
            elif DROPOUT_MUL_REGEX.search(node.name):
                outs = [o for o in node.edge_out if not DROPOUT_REGEX.search(o.name)]
                entry["outputs"] = (entry["outputs"] or []) + outs
            node.strip()
        for entry in mappings.values():
            if entry["inputs"] is not None and entry["outputs"] is not None:
                for out in entry["outputs"]:
                    for inp in entry["inputs"]:
                        out.add_incoming(inp)

    def process_variables(self):
        """TFVariableProcessor.swift."""
        for node in list(self.nodes):
            if node.op == "VariableV2":
                assign = next((o for o in node.edge_out if o.op == "Assign"), None)
                read = next((o for o in node.edge_out if READ_REGEX.search(o.name)), None)
                if assign is not None and read is not None and read.edge_out:
                    output = read.edge_out[0]
                    read.strip()
                    value = next((i for i in assign.edge_in if i.op == "Const"), None)
                    if value is not None:
                        assign.strip()
                        output.add_incoming(node)
                        node.add_incoming(value)
                    else:
                        assign.delete_incoming(node)
                        assign.strip(recursive=True)
                        output.add_incoming(node)
            elif READ_REGEX.search(node.name) and len(node.edge_in) == 1 and node.edge_in[0].op == "Const" \
                    and not node.edge_in[0].edge_in and len(node.edge_out) == 1:
                variable, output = node.edge_in[0], node.edge_out[0]
                node.strip()
                output.add_incoming(variable)

    def dense_substitution(self):
        """TFDenseSubstitution.swift: MatMul + (BiasAdd | Add) -> Dense."""
        for node in list(self.nodes):
            if node.op != "MatMul":
                continue
            add = next((o for o in node.edge_out if o.op in ("BiasAdd", "Add")), None)
            weight = next((i for i in node.edge_in if i.is_const_or_var), None)
            inp = next((i for i in node.edge_in if not i.is_const_or_var), None)
            if add is None or weight is None or inp is None:
                continue
            add.op = "Dense"
            add.add_incoming(weight)
            pre = next((i for i in inp.edge_in if i.op != "Const"), None) if inp.op == "Reshape" else None
            if pre is not None:
                add.add_incoming(pre)
                inp.strip()
            else:
                add.add_incoming(inp)
            node.strip()
            self._add_neuron_if_there(add)

    def remove_reshapes(self):
        """TFReshapeOptimizer.swift: a Reshape with a Const shape is removed (input rewired to output)."""
        for node in list(self.nodes):
            if node.op in ("Reshape", "QuantizedReshape"):
                shape = next((i for i in node.edge_in if i.op == "Const"), None)
                if shape is not None:
                    shape.strip()
                    node.remove_from_graph()

    def fold_dilations(self):
        """TFConvDilationOptimizer: SpaceToBatchND -> Conv2D -> BatchToSpaceND becomes a dilated SAME conv."""
        for node in list(self.nodes):
            if node.op not in ("Conv2D", "DepthwiseConv2dNative"):
                continue
            stb = next((i for i in node.edge_in if i.op == "SpaceToBatchND"), None)
            if stb is None or len(node.edge_out) != 1 or node.edge_out[0].op != "BatchToSpaceND":
                continue
            bts = node.edge_out[0]
            for c in [i for i in bts.edge_in if i.op == "Const"]:
                c.strip()
            bts.remove_from_graph()
            consts = [i for i in stb.edge_in if i.op == "Const"]
            block = next((c for c in consts if c.name.endswith("/block_shape")), None)
            if block is not None:
                shape = _const_array(block.nd)
                if shape is not None and shape.size == 2 and len(node.nd.attr["dilations"].list.i) == 4:
                    node.nd.attr["dilations"].list.i[1] = int(shape[0])
                    node.nd.attr["dilations"].list.i[2] = int(shape[1])
                    node.nd.attr["padding"].s = b"SAME"
            for c in consts:
                c.strip()
            stb.remove_from_graph()

    def fuse_convs(self):
        """TFConvOptimizer.swift: Conv2D + (BiasAdd | Add with a Const/Variable) [+ Relu/Tanh/Sigmoid]."""
        for node in list(self.nodes):
            if node.op not in ("Conv2D", "DepthwiseConv2dNative") or len(node.edge_out) != 1:
                continue
            bias_add = node.edge_out[0]
            if bias_add.op in ("BiasAdd", "Add"):
                bias = next((i for i in bias_add.edge_in if i.is_const_or_var), None)
                if bias is not None:
                    node.add_incoming(bias)
                    for output in list(bias_add.edge_out):
                        output.replace_incoming(bias_add, node)
                    bias_add.strip()
            self._add_neuron_if_there(node)

    def fold_instance_norms(self):
        """TFInstanceNormOptimizer.swift (the converter's additional optimizer)."""
        mappings: dict[str, dict] = {}
        reported = set()
        for node in list(self.nodes):
            m = MOMENTS_REGEX.search(node.name)
            if not m:
                continue
            key = node.name[: m.end()]
            entry = mappings.setdefault(key, {"input": None, "output": None, "strip": []})
            inputs = [i for i in node.edge_in if not MOMENTS_REGEX.search(i.name)]
            outputs = [o for o in node.edge_out if not MOMENTS_REGEX.search(o.name)]
            if len(inputs) == 1:
                if entry["input"] is None:
                    entry["input"] = inputs[0]
                elif entry["input"] is not inputs[0]:
                    self.problems.append(f"{key}: moments read two different inputs ({entry['input'].name}, {inputs[0].name})")
            elif len(outputs) == 1:
                found = self._instance_norm_chain(outputs[0])
                if found is not None:
                    sub, add, pow_, div, mul, add_final = found
                    entry["strip"] += [sub, add, pow_, div]
                    add_final.op = "InstanceNormAdd"
                    mul.op = "InstanceNormMul"
                    entry["output"] = add_final
                else:
                    reported.add(key)
                    self.problems.append(
                        f"{key}: the nodes after the moments do not form Bender's instance-norm pattern "
                        f"(Add -> Pow -> RealDiv(Sub) -> Mul -> Add, op types literally 'Add', each with one consumer): "
                        f"{self._describe_chain(outputs[0])}")
            entry["strip"].append(node)
        for key, entry in mappings.items():
            if entry["input"] is not None and entry["output"] is not None:
                entry["output"].add_incoming(entry["input"])
                for node in entry["strip"]:
                    node.strip()
            elif key not in reported:
                self.problems.append(f"{key}: instance-norm pattern not recognised (input found: "
                                     f"{entry['input'] is not None}, output found: {entry['output'] is not None}); "
                                     "its nodes stay in the graph")

    @staticmethod
    def _instance_norm_chain(add):
        def single(n):
            return n.edge_out[0] if len(n.edge_out) == 1 else None
        if add.op != "Add":
            return None
        pow_ = single(add)
        if pow_ is None or pow_.op != "Pow":
            return None
        div = single(pow_)
        if div is None or div.op != "RealDiv" or len(div.edge_out) != 1:
            return None
        sub = next((i for i in div.edge_in if i.op == "Sub"), None)
        mul = div.edge_out[0]
        if sub is None or mul.op != "Mul" or len(mul.edge_out) != 1:
            return None
        add_final = mul.edge_out[0]
        if add_final.op != "Add":
            return None
        return sub, add, pow_, div, mul, add_final

    @staticmethod
    def _describe_chain(node, depth=6) -> str:
        parts = []
        while node is not None and depth:
            parts.append(f"{node.op}({node.name}, {len(node.edge_out)} consumer(s))")
            node = node.edge_out[0] if len(node.edge_out) == 1 else None
            depth -= 1
        return " -> ".join(parts)

    def run(self):
        for step in (self.strip_training_ops, self.delete_ignored_ops, self.delete_dropout, self.process_variables,
                     self.dense_substitution, self.remove_reshapes, self.fold_dilations, self.fuse_convs,
                     self.fold_instance_norms):
            step()
            self.nodes = [n for n in self.nodes if not n.lonely]  # GraphProtocol.removeLonely


def _const_array(nd) -> np.ndarray | None:
    """Bender's NodeDef.valueData(): tensor_content of a Const, or None when it has none."""
    if nd.op != "Const":
        return None
    t = nd.attr["value"].tensor
    if not t.tensor_content:
        return None
    dtype = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8", 19: "<f2"}.get(t.dtype)
    if dtype is None:
        return None
    arr = np.frombuffer(t.tensor_content, dtype)
    shape = [d.size for d in t.tensor_shape.dim]
    return arr.reshape(shape) if int(np.prod(shape)) == arr.size else arr


def _const_shape(nd) -> list[int] | None:
    if "shape" in nd.attr and nd.attr["shape"].WhichOneof("value") == "shape":
        return [d.size for d in nd.attr["shape"].shape.dim]
    if nd.op == "Const":
        return [d.size for d in nd.attr["value"].tensor.tensor_shape.dim]
    return None


def _param(node: _Node | None, what: str, layer: str, problems: list[str]) -> np.ndarray | None:
    """Weight bytes as Bender reads them (Const, or the Const feeding a VariableV2), float32 only."""
    if node is None:
        return None
    src = node if node.op == "Const" else (node.edge_in[0] if node.edge_in and node.edge_in[0].op == "Const" else None)
    if src is None:
        problems.append(f"{layer}: {what} {node.name!r} has no frozen value (needs a ParameterLoader)")
        return None
    t = src.nd.attr["value"].tensor
    if not t.tensor_content:
        where = "float_val" if len(t.float_val) else "no tensor_content"
        problems.append(f"{layer}: {what} {src.name!r} is stored in {where}; Bender reads only tensor_content "
                        "and would load an empty buffer")
        return None
    if t.dtype != 1:
        problems.append(f"{layer}: {what} {src.name!r} has dtype {t.dtype}, Bender reads float32")
        return None
    return _const_array(src.nd)


def _weight_data(node: _Node, layer: str, problems: list[str], read_bias: bool = True):
    """TFWeightData.getWeightData: (weights, bias, weight_shape, bias_node)."""
    var_inputs = [i for i in node.edge_in if i.is_const_or_var]
    bias_node = None
    if len(var_inputs) == 1:
        weights_node = var_inputs[0]
    elif len(var_inputs) == 2:
        s0, s1 = (_const_shape(v.nd) or [] for v in var_inputs)
        if len(s0) == 1:
            bias_node, weights_node = var_inputs
        elif len(s1) == 1:
            weights_node, bias_node = var_inputs
        elif len(s0) == 4 and not s1:
            weights_node = var_inputs[0]
        elif len(s1) == 4 and not s0:
            weights_node = var_inputs[1]
        else:
            problems.append(f"{layer}: Bender's getWeightData fails (two parameter inputs, neither is a bias)")
            return None, None, None, None
    else:
        problems.append(f"{layer}: Bender's getWeightData needs 1 or 2 parameter inputs, found {len(var_inputs)}")
        return None, None, None, None
    shape = _const_shape(weights_node.nd)
    weights = _param(weights_node, "weights", layer, problems)
    bias = _param(bias_node, "bias", layer, problems) if bias_node is not None and read_bias else None
    if weights is not None and shape and weights.size == int(np.prod(shape)):
        weights = weights.reshape(shape)
    return weights, bias, shape, bias_node


def _attr_ints(nd, name, default):
    return list(nd.attr[name].list.i) if name in nd.attr and nd.attr[name].list.i else default


def _map_layer(node: _Node, problems: list[str], notes: list[str]) -> BenderLayer:
    """The TFConverter mapper of node.op, keeping what the executor needs."""
    kind = BENDER_MAPPERS[node.op]
    layer = BenderLayer(id=node.name, type=kind, op=node.op)
    nd = node.nd
    p = layer.params
    if kind in ("Convolution", "DepthwiseConvolution"):
        strides = _attr_ints(nd, "strides", [1, 1, 1, 1])
        p["stride"] = (int(strides[1]), int(strides[2]))
        dil = _attr_ints(nd, "dilations", [1, 1, 1, 1])
        p["dilation"] = (int(dil[1]), int(dil[2]))
        p["padding"] = "valid" if nd.attr["padding"].s == b"VALID" else "same"  # PaddingType.fromTF
        pads = [0, 0, 0, 0]
        if "explicit_paddings" in nd.attr:
            arr = nd.attr["explicit_paddings"]
            content = arr.tensor.tensor_content if arr.WhichOneof("value") == "tensor" else b""
            values = np.frombuffer(content, "<i4").tolist() if content else []
            if sum(v != 0 for v in values) > 1:
                pads = values[2:6]
            elif arr.WhichOneof("value") == "list" and any(arr.list.i):
                problems.append(f"{node.name}: explicit_paddings is a list(int) attribute; Bender reads it only as "
                                "a tensor (attr.tensor.tensorContent) and ignores this padding")
        if nd.attr["padding"].s == b"EXPLICIT":
            notes.append(f"{node.name}: padding EXPLICIT is SAME for Bender (PaddingType.fromTF)")
        # Convolution.swift uses paddings[0], [1] as left/right and [2], [3] as top/bottom.
        p["paddings"] = [int(v) for v in pads]
        mode = nd.attr["pad_mode"].s.decode() if "pad_mode" in nd.attr else ""
        p["edge_mode"] = "clamp" if mode in ("REFLECT", "SYMMETRIC") else "zero"
        p["neuron"] = node.neuron
        w, b, shape, _ = _weight_data(node, node.name, problems)
        p["weights"], p["bias"] = w, b
        if w is not None and b is not None and b.size != w.shape[-1]:
            problems.append(f"{node.name}: bias has {b.size} values for {w.shape[-1]} output channels")
    elif kind == "ConvTranspose":
        strides = _attr_ints(nd, "strides", [1, 1, 1, 1])
        p["stride"] = (int(strides[1]), int(strides[2]))
        # ConvTranspose is built without useBias, so whatever getWeightData calls the bias is not read.
        w, _, shape, bias_node = _weight_data(node, node.name, problems, read_bias=False)
        p["weights"] = w  # [kh, kw, out, in]
        if bias_node is not None and bias_node.name == nd.input[0]:
            notes.append(f"{node.name}: input_sizes is taken as a 'bias' by getWeightData, but ConvTranspose is "
                         "built with useBias false, so it is ignored (output size = input x stride)")
    elif kind == "InstanceNorm":
        shift_node = next((i for i in node.edge_in if i.is_const_or_var), None)
        mul = next((i for i in node.edge_in if i.op == "InstanceNormMul"), None)
        scale_node = mul.edge_in[0] if mul is not None and mul.edge_in and mul.edge_in[0].is_const_or_var else None
        if shift_node is None or scale_node is None:
            problems.append(f"{node.name}: inormMapper cannot find scale/shift ('Could not parse Instance norm node')")
        p["scale"] = _param(scale_node, "scale", node.name, problems)
        p["shift"] = _param(shift_node, "shift", node.name, problems)
    elif kind == "Neuron":
        p["neuron"] = node.op
    elif kind == "Concat":
        axis_node = next((i for i in node.edge_in if i.name in (f"{node.name}/axis", f"{node.name}/concat_dim")), None)
        values = list(axis_node.nd.attr["value"].tensor.int_val) if axis_node is not None else []
        axis = {1: "w", 2: "h", 3: "f"}.get(values[0]) if values else None  # LayerSizeAxis.fromTF
        if axis is None:
            problems.append(f"{node.name}: concatMapper needs a Const '{node.name}/axis' with int_val 1, 2 or 3 "
                            f"(found {values or 'none'})")
        p["axis"] = axis
        repeated = {i for i in node.nd.input if list(node.nd.input).count(i) > 1}
        if repeated:
            problems.append(f"{node.name}: repeated inputs {sorted(repeated)} (Bender keeps one edge per node)")
    elif kind == "Add":
        pass
    else:
        notes.append(f"{node.name}: {kind} is mapped but not modelled by run_bender_numpy")
    return layer


def _layer_size(layer: BenderLayer, in_sizes: list, problems: list[str]):
    """outputSize as each Bender layer's initialize() computes it."""
    if not in_sizes or any(s is None for s in in_sizes):
        return None
    h, w, f = in_sizes[0]
    p = layer.params
    if layer.type == "Convolution":
        wt = p.get("weights")
        if wt is None or wt.ndim != 4:
            return None
        kh, kw, cin, cout = wt.shape
        if cin != f:
            problems.append(f"{layer.id}: weights expect {cin} input channels, the input has {f}")
        sy, sx = p["stride"]
        pads = p["paddings"]
        ph, pw = h + pads[2] + pads[3], w + pads[0] + pads[1]
        if p["padding"] == "same":
            return ph // sy, pw // sx, cout
        return (ph - kh) // sy + 1, (pw - kw) // sx + 1, cout
    if layer.type == "ConvTranspose":
        wt = p.get("weights")
        if wt is None or wt.ndim != 4:
            return None
        if wt.shape[3] != f:
            problems.append(f"{layer.id}: filter expects {wt.shape[3]} input channels, the input has {f}")
        sy, sx = p["stride"]
        return h * sy, w * sx, int(wt.shape[2])
    if layer.type == "InstanceNorm":
        for key in ("scale", "shift"):
            v = p.get(key)
            if v is not None and v.size != f:
                problems.append(f"{layer.id}: {key} has {v.size} values for {f} channels")
        return h, w, f
    if layer.type in ("Neuron", "Add"):
        return h, w, f
    if layer.type == "Concat" and p.get("axis"):
        axis = "hwf".index(p["axis"])
        if len(in_sizes) > 10:
            problems.append(f"{layer.id}: Concat takes at most 10 inputs (maxInputTextures), has {len(in_sizes)}")
        for s in in_sizes[1:]:
            if any(s[i] != in_sizes[0][i] for i in range(3) if i != axis):
                problems.append(f"{layer.id}: Concat inputs differ off the {p['axis']} axis: {in_sizes}")
                return None
        if p["axis"] == "f" and any(s[2] % 4 for s in in_sizes):
            problems.append(f"{layer.id}: Concat along f needs multiples of 4 channels")
        out = list(in_sizes[0])
        out[axis] = sum(s[axis] for s in in_sizes)
        return tuple(out)
    return None


def check_bender_graph(graph_def, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME) -> BenderReport:
    """Replay Bender's TFConverter on `graph_def` (a GraphDef or its serialized bytes).

    Runs TFConverter.default's optimizers plus TFInstanceNormOptimizer in order, then the op -> layer
    mapping and the layers' validate()/initialize() size rules. `dropped` lists nodes that are neither
    mapped, nor parameters of a mapped layer, nor removed by a rewrite (Bender skips them silently).
    `ok` means: nothing dropped, no problem found, one Start, every layer on a path from the input to
    the output, and the output is the last layer (Network.initialize takes nodes.last as output).
    """
    from tensorflow.core.framework import graph_pb2

    parsed = graph_pb2.GraphDef()  # a copy: the replay rewrites attributes (dilation folding) in place
    if isinstance(graph_def, (bytes, bytearray)):
        parsed.ParseFromString(bytes(graph_def))
    else:
        parsed.CopyFrom(graph_def)
    replay = _Replay(parsed)
    replay.run()
    problems, notes = replay.problems, replay.notes
    layers: list[BenderLayer] = []
    processed: dict[str, BenderLayer] = {}
    dropped: list[str] = []
    placeholders = []
    for node in replay.nodes:
        if node.op in BENDER_MAPPERS:
            layer = _map_layer(node, problems, notes)
            layer.inputs = [i.name for i in node.edge_in if i.name in processed]
            layers.append(layer)
            processed[node.name] = layer
        elif node.op == "Placeholder":
            placeholders.append(node.name)
            shape = [d.size for d in node.nd.attr["shape"].shape.dim]
            size = (shape[1], shape[2], shape[3]) if len(shape) == 4 and min(shape[1:]) > 0 else None
            start = BenderLayer(id=node.name, type="Start", op="Placeholder", out_size=size)
            layers.insert(0, start)
            processed[node.name] = start
        elif node.op not in PARAMETER_OPS:
            dropped.append(f"{node.name} ({node.op})")
    if len(placeholders) != 1:
        problems.append(f"expected one Placeholder (Start), found {placeholders}")
    elif placeholders[0] != input_name:
        problems.append(f"the Placeholder is {placeholders[0]!r}, expected {input_name!r}")
    if dropped:
        problems.append(f"{len(dropped)} node(s) have no Bender mapping and would be skipped, disconnecting the "
                        f"network: {', '.join(dropped[:8])}{' ...' if len(dropped) > 8 else ''}")
    # layer validate() rules and sizes
    sizes: dict[str, tuple | None] = {}
    for layer in layers:
        if layer.type == "Start":
            sizes[layer.id] = layer.out_size
            continue
        n_in = len(layer.inputs)
        if layer.type == "Add":
            if n_in != 2:
                problems.append(f"{layer.id}: Add needs exactly two input layers, has {n_in}")
            elif sizes.get(layer.inputs[0]) != sizes.get(layer.inputs[1]):
                problems.append(f"{layer.id}: Add inputs differ in size: {sizes.get(layer.inputs[0])} vs "
                                f"{sizes.get(layer.inputs[1])}")
        elif layer.type != "Concat" and n_in != 1:
            problems.append(f"{layer.id}: {layer.type} needs exactly one input layer, has {n_in}")
        layer.out_size = _layer_size(layer, [sizes.get(i) for i in layer.inputs], problems)
        sizes[layer.id] = layer.out_size
        if layer.type == "InstanceNorm" and layer.out_size and layer.params.get("scale") is not None \
                and layer.params.get("shift") is not None:
            n_max = float(np.sqrt(max(layer.out_size[0] * layer.out_size[1] - 1, 1)))
            bound = float(np.max(np.abs(layer.params["scale"]) * n_max + np.abs(layer.params["shift"])))
            layer.params["bound"] = bound
            if bound > BENDER_INSTANCE_NORM_CLAMP:
                notes.append(f"{layer.id}: |scale| * sqrt(N-1) + |shift| = {bound:.1f}; values beyond "
                             f"+-{BENDER_INSTANCE_NORM_CLAMP:g} are possible and Bender's kernel clamps them")
    # connectivity: Network.set(layers:) wants one input layer; the output is nodes.last
    sources = [layer.id for layer in layers if not layer.inputs]
    if len(sources) != 1:
        problems.append(f"the network has {len(sources)} input layers ({sources[:6]}); Bender expects one (Start)")
    by_id = {layer.id: layer for layer in layers}
    consumers: dict[str, list[str]] = {layer.id: [] for layer in layers}
    for layer in layers:
        for i in layer.inputs:
            consumers[i].append(layer.id)
    if output_name not in by_id:
        problems.append(f"output {output_name!r} is not a Bender layer")
    else:
        if layers and layers[-1].id != output_name:
            problems.append(f"the last layer is {layers[-1].id!r}, not the output {output_name!r} "
                            "(Bender returns nodes.last)")
        forward = _reach(input_name, lambda n: consumers.get(n, []))
        backward = _reach(output_name, lambda n: by_id[n].inputs if n in by_id else [])
        if output_name not in forward:
            problems.append(f"the output {output_name!r} is not reachable from {input_name!r}")
        off_path = [layer.id for layer in layers if layer.id not in forward or layer.id not in backward]
        if off_path:
            problems.append(f"{len(off_path)} layer(s) not on a path from input to output: {off_path[:6]}")
    return BenderReport(layers=[layer.type for layer in layers], dropped=dropped, ok=not problems,
                        problems=problems, details=layers, notes=notes)


def _reach(start: str, step) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in step(todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# --------------------------------------------------------------------------------------------
# 3. Executor with Bender's numerics
# --------------------------------------------------------------------------------------------

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
             out_hw: tuple[int, int], edge: str) -> np.ndarray:
    """MPSCNNConvolution: output (i, j) reads the window starting at (i*sy - pad_top, j*sx - pad_left).

    (Bender sets offset = k/2 - padTop and MPS centres the kernel, window [c - k/2, c - k/2 + k - 1].)
    float32 accumulation, HWIO kernel.
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
        elif layer.type == "Convolution":
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
                         edge_mode or p["edge_mode"])
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


INTERIOR_BORDER = 16  # pixels left out by the "interior" PSNR (where edge clamping does not reach)


# --------------------------------------------------------------------------------------------
# 4. benderthon --only-weights files
# --------------------------------------------------------------------------------------------

def benderthon_filename(prefix: str, variable_name: str) -> str:
    """benderthon 0.3.0 tf_freeze.save_weights: '{output_path}-{var.name}' with ':' and '/' -> '-'."""
    return f"{prefix}-{variable_name.replace(':', '-').replace('/', '-')}"


def benderthon_variables(net: BakedNetwork, transpose_convs: bool = True) -> dict[str, np.ndarray]:
    """The variables of the baked network under Magenta's names (with TF's ':0'), in file layout.

    - `{scope}/weights:0` for every conv (contract ones with the batch norm folded in);
    - `{scope}/BatchNorm/beta:0` for the contract convs: the folded bias (batch norm as identity,
      as training.magenta_import holds it);
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
