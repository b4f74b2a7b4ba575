"""The Bender graph builder: one baked style as a frozen TensorFlow GraphDef that Bender's
`TFConverter` maps op for op (rules and their Swift sources in docs/bender.md).

`build_bender_graph` writes the transfer network with only ops Bender maps, rescales the instance
norms so Bender's +-10 clamp never cuts a value, and checks its own output with the converter
replay; `to_tensorflow_graph_def` turns a Bender graph back into one TensorFlow can import.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from export.baked import BakedConv, BakedNetwork
from export.bender.converter import check_bender_graph
from export.bender.norms import for_bender_norms, rescale_for_bender_clamp
from export.bender.spec import (INPUT_NAME, MAX_CONCAT_INPUTS, OUTPUT_NAME, PADDING_FORMS, STRIDE2_FORMS, UPSAMPLE_FORMS,
                                BenderExportError)


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


def fold_transpose_bias(net: BakedNetwork) -> BakedNetwork:
    """An equivalent network whose transposed convs have no bias (Bender's ConvTranspose has none, and
    it skips a lone BiasAdd).

    A "same" transposed conv with kernel = stride gives every output pixel exactly one input pixel
    through one tap, so its bias b is an extra input channel that is 1 everywhere, weighted b at every
    tap. The conv before makes that channel: one more output channel with zero weights, whose instance
    norm (gamma 0, beta 1) outputs exactly 1 whatever its input, kept by the ReLU. Exact, borders
    included; it costs one channel at the previous conv's resolution.
    """
    expand = list(net.expand)
    for i, c in enumerate(expand):
        if not (c.transpose and c.bias is not None):
            continue
        prev = expand[i - 1] if i else None
        if prev is None or prev.gamma is None or prev.activation not in ("relu", None):
            raise BenderExportError(f"{c.scope}: Bender's ConvTranspose has no bias, and the conv before it has no "
                                    "instance norm to supply the constant channel that would carry it")
        if c.kernel_size != c.stride:
            raise BenderExportError(f"{c.scope}: a {c.kernel_size}x{c.kernel_size} stride-{c.stride} transposed conv "
                                    "overlaps its taps, so its bias cannot ride on a constant channel")
        axis = 2 if prev.transpose else 3  # output channels: [k, k, out, in] or HWIO
        zero = np.zeros_like(np.take(prev.kernel, [0], axis=axis))
        expand[i - 1] = replace(prev, kernel=np.concatenate([prev.kernel, zero], axis=axis),
                                bias=None if prev.bias is None else np.append(prev.bias, np.float32(0)),
                                gamma=np.append(prev.gamma, np.float32(0)), beta=np.append(prev.beta, np.float32(1)))
        taps = np.broadcast_to(c.bias[:, None], (*c.kernel.shape[:3], 1))
        expand[i] = replace(c, kernel=np.concatenate([c.kernel, taps], axis=3).astype(np.float32), bias=None)
    return replace(net, expand=expand)


def crop_kernel(crop: int, channels: int) -> np.ndarray:
    """The depthwise filter [2c+1, 2c+1, C, 1] that crops c pixels from every side (VALID), 1 at its centre:
    the realtime network's BorderCrop as Bender can run it (multiplying by 1 and adding zeros is exact
    in float16 too)."""
    kernel = np.zeros((2 * crop + 1, 2 * crop + 1, channels, 1), np.float32)
    kernel[crop, crop] = 1.0
    return kernel


def bender_depthwise_filter(kernel: np.ndarray) -> np.ndarray:
    """The DepthwiseConv2dNative filter [k, k, C, 1] Bender must be given to apply `kernel` on the device:
    its mapper hands MPS the filter transposed (converter.py, `depthwise_weights_as_applied`), so it is
    written transposed. `to_tensorflow_graph_def` transposes it back."""
    return np.ascontiguousarray(kernel.transpose(1, 0, 2, 3))


def mps_transpose_filter(kernel: np.ndarray, stride: int) -> np.ndarray:
    """A 2x2 stride-2 "same" transposed conv's filter [2, 2, out, in] (TF's) in MPS's orientation.

    TF's y[2i + a] = K[a] x[i]; MPS (no weight rotation, even kernel centred at k // 2 = 1) computes
    y[2i] = W[1] x[i], y[2i + 1] = W[0] x[i]: W is K rotated by 180 degrees. For other sizes MPS's
    window (centred at k // 2) is not TF's (which puts kernel tap a at i s + a), whatever the weights.
    """
    if kernel.shape[:2] != (2, 2) or stride != 2:
        raise BenderExportError(f"a {kernel.shape[0]}x{kernel.shape[1]} stride-{stride} transposed conv: only 2x2 "
                                "stride 2 lines up TF's \"same\" output with MPS's kernel centring")
    return np.ascontiguousarray(kernel[::-1, ::-1])


def build_bender_graph(net: BakedNetwork, height: int, width: int, *,
                       padding: str = "concat", upsample: str = "nearest_conv", stride2: str = "same4",
                       clamp_guard: bool = True, match_epsilon: bool | None = None):
    """The baked transfer network as a tf.compat.v1.GraphDef that Bender maps op for op.

    input `content_image` [1, H, W, 3] float32 in [0, 1]; output `stylized_image` (Sigmoid).
    The options choose how Magenta's reflect-padded convs and nearest upsampling are written (a
    realtime network's zero "same" convs map as they are: Conv2D / DepthwiseConv2dNative SAME):
    padding: "concat" (default) = Magenta's reflect padding built exactly from mapped layers (border
    rows/columns copied by one-hot convolutions, ConcatV2) followed by VALID convs; it relies on
    Bender's Concat axis mapping (TF axis 1 -> width, 2 -> height; written accordingly) and on MPS
    convolutions with a stride as large as the image. "clamp" = SAME convs with pad_mode REFLECT,
    which Bender turns into MPSImageEdgeMode.clamp: replicate padding, borders differ from Magenta.
    upsample: "nearest_conv" (default) = ConvTranspose(2x2 identity, stride 2) then the 3x3 conv
    (SAME; pad_mode REFLECT for a reflect-padded conv): exact, borders included. "fused" = one 4x4
    ConvTranspose derived from the 3x3 kernel: exact in the interior only.
    stride2 (padding="clamp" only; "concat" pads explicitly and runs 3x3 VALID stride 2):
    "same4" (default) = the 3x3 stride-2 kernel zero-extended to 4x4 with SAME padding;
    "explicit" = 3x3 VALID with Bender's tensor-valued `explicit_paddings` attribute.
    clamp_guard: rescale the norms by powers of two so Bender's +-10 clamp never cuts a value
    (`rescale_for_bender_clamp`); False writes gamma/beta as they are.
    match_epsilon: scale each norm's input so that Bender's fixed eps is the model's
    (`for_bender_norms`; None: for the realtime network only).
    A transposed conv's bias rides on a constant channel (`fold_transpose_bias`).
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
    net = for_bender_norms(fold_transpose_bias(net), match_epsilon)
    if clamp_guard:
        net, _ = rescale_for_bender_clamp(net, height, width)
    rt = tf.raw_ops
    graph = tf.compat.v1.Graph()
    explicit_convs: list[str] = []
    edge_clamped_convs: list[str] = []  # SAME convs standing in for reflect padding: pad_mode REFLECT
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

            def concat(parts, axis: int, nm: str):
                """ConcatV2 of the parts in order; past Bender's input limit, concatenations of concatenations."""
                if len(parts) > MAX_CONCAT_INPUTS:
                    size = -(-len(parts) // MAX_CONCAT_INPUTS)  # parts per group, so that groups <= the limit
                    parts = [concat(parts[i:i + size], axis, f"{nm}/part{i // size}") if len(parts[i:i + size]) > 1
                             else parts[i] for i in range(0, len(parts), size)]
                return rt.ConcatV2(values=parts, axis=const(np.int32(axis), f"{nm}/axis"), name=nm)

            rows = ([pick(x, j, hh, 1, f"{name}/row{j}") for j in range(p, 0, -1)] + [x]
                    + [pick(x, hh - 1 - m, hh, 1, f"{name}/row{hh - 1 - m}") for m in range(1, p + 1)])
            xh = concat(rows, 1, f"{name}/rows")
            cols = ([pick(xh, j, ww, 2, f"{name}/col{j}") for j in range(p, 0, -1)] + [xh]
                    + [pick(xh, ww - 1 - m, ww, 2, f"{name}/col{ww - 1 - m}") for m in range(1, p + 1)])
            return concat(cols, 2, f"{name}/cols")

        def conv2d(x, c: BakedConv, name_scope: str, kernel=None, after_upsample: bool = False):
            kernel = c.kernel if kernel is None else kernel
            strides = [1, c.stride, c.stride, 1]
            if c.padding == "same":
                # Zero "same" padding is Bender's SAME with zero edges: the same window as TF's for stride 1
                # and, on the even sizes here, for stride 2 (both put the one padding row after).
                if c.depthwise is not None:
                    x = rt.DepthwiseConv2dNative(input=x, filter=const(bender_depthwise_filter(c.depthwise),
                                                                       f"{name_scope}/depthwise/weights"),
                                                 strides=strides, padding="SAME", name=f"{name_scope}/depthwise/conv")
                    return rt.Conv2D(input=x, filter=const(kernel, f"{name_scope}/pointwise/weights"),
                                     strides=[1, 1, 1, 1], padding="VALID", name=f"{name_scope}/pointwise/Conv2D")
                return rt.Conv2D(input=x, filter=const(kernel, f"{name_scope}/weights"), strides=strides,
                                 padding="SAME", name=f"{name_scope}/Conv2D")
            if c.depthwise is not None:
                raise BenderExportError(f"{c.scope}: a separable conv with {c.padding} padding is not supported")
            if padding == "concat" and not after_upsample:
                # (after a nearest upsampling, the clamp edge already equals reflect: SAME below)
                xp = reflect_pad(x, kernel.shape[0] // 2, f"{name_scope}/reflect")
                w = const(kernel, f"{name_scope}/weights")
                return rt.Conv2D(input=xp, filter=w, strides=strides, padding="VALID", name=f"{name_scope}/Conv2D")
            edge_clamped_convs.append(f"{name_scope}/Conv2D")
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
            add = rt.Add(x=var, y=const(np.float32(c.epsilon), f"{s}/add/y"), name=f"{s}/add")
            std = rt.Pow(x=add, y=const(np.float32(0.5), f"{s}/pow/y"), name=f"{s}/pow")
            sub = rt.Sub(x=x, y=mean, name=f"{s}/sub")
            div = rt.RealDiv(x=sub, y=std, name=f"{s}/truediv")
            mul = rt.Mul(x=const(c.gamma.astype(np.float32), f"{s}/gamma"), y=div, name=f"{s}/mul")
            return rt.Add(x=mul, y=const(c.beta.astype(np.float32), f"{s}/beta"), name=f"{s}/add_1")

        def finish(y, c: BakedConv, name: str | None = None):
            """A conv's output through its bias (fused into the conv by Bender), norm and activation."""
            if c.bias is not None:
                y = rt.BiasAdd(value=y, bias=const(c.bias.astype(np.float32), f"{c.scope}/biases"),
                               name=f"{c.scope}/BiasAdd")
            if c.gamma is not None:
                y = instance_norm(y, c)
            if c.activation == "relu":
                return rt.Relu(features=y, name=name or f"{c.scope}/Relu")
            if c.activation == "sigmoid":
                return rt.Sigmoid(x=y, name=name or f"{c.scope}/Sigmoid")
            if c.activation is None:
                return y
            raise BenderExportError(f"{c.scope}: activation {c.activation!r} has no Bender neuron here")

        x = tf.compat.v1.placeholder(tf.float32, [1, height, width, 3], name=INPUT_NAME)
        h, w = height, width
        if net.border_pad:  # model.border_pad: Bender has no MirrorPad, so the pad is built like Magenta's
            x = reflect_pad(x, net.border_pad, "transformer/border_pad")
            h, w = h + 2 * net.border_pad, w + 2 * net.border_pad
        for c in net.contract:
            x = finish(conv2d(x, c, c.scope), c)
            h, w = c.output_hw(h, w)
        for conv1, conv2 in net.residual:
            block = conv1.scope.rsplit("/", 1)[0]
            y = finish(conv2d(x, conv1, conv1.scope), conv1)
            y = finish(conv2d(y, conv2, conv2.scope), conv2)
            x = rt.Add(x=x, y=y, name=f"{block}/add")
        if crop := net.border_pad // 4:  # the one-hot VALID depthwise conv of the Keras model's BorderCrop
            kernel = crop_kernel(crop, int(x.shape[-1]))
            x = rt.DepthwiseConv2dNative(input=x, filter=const(bender_depthwise_filter(kernel), "transformer/border_crop/weights"),
                                         strides=[1, 1, 1, 1], padding="VALID", name="transformer/border_crop/depthwise")
            h, w = h - 2 * crop, w - 2 * crop
        for n, c in enumerate(net.expand):
            last = n == len(net.expand) - 1
            parent = c.scope.rsplit("/", 1)[0]  # transformer/expand/convN
            if c.transpose:
                h, w = c.output_hw(h, w)
                y = rt.Conv2DBackpropInput(
                    input_sizes=const(np.array([1, h, w, c.out_channels], np.int32), f"{c.scope}/input_sizes"),
                    filter=const(mps_transpose_filter(c.kernel, c.stride), f"{c.scope}/weights"),
                    out_backprop=x, strides=[1, c.stride, c.stride, 1], padding="SAME", name=f"{c.scope}/conv2d_transpose")
            elif c.upsample == 1:
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
            x = finish(y, c, name=OUTPUT_NAME if last else None)
        if x.op.name != OUTPUT_NAME:
            raise BenderExportError(f"the network does not end in a sigmoid (last op {x.op.name})")
    graph_def = graph.as_graph_def()
    _swap_concat_axes(graph_def)  # TF NHWC axis 1 (height) is Bender's 2, and 2 (width) its 1
    for node in graph_def.node:
        if node.name in edge_clamped_convs:
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


def _float_tensor_value(node) -> np.ndarray:
    t = node.attr["value"].tensor
    return np.frombuffer(t.tensor_content, "<f4").reshape([d.size for d in t.tensor_shape.dim])


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
    """A copy TensorFlow can import and that computes what Bender does: Bender-only attributes removed
    (pad_mode; explicit_paddings as a tensor becomes TF's EXPLICIT padding), ConcatV2 axes back in NHWC
    numbering, filters written for Bender's orientation (DepthwiseConv2dNative transposed,
    Conv2DBackpropInput rotated for MPS) back in TF's. SAME convs then pad with zeros instead of clamping."""
    from tensorflow.core.framework import graph_pb2

    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    _swap_concat_axes(out)
    consts = {n.name: n for n in out.node if n.op == "Const"}
    for node in out.node:
        if node.op in ("DepthwiseConv2dNative", "Conv2DBackpropInput"):
            filt = consts[node.input[1]]
            value = _float_tensor_value(filt)
            tf_value = value.transpose(1, 0, 2, 3) if node.op == "DepthwiseConv2dNative" else value[::-1, ::-1]
            filt.attr["value"].tensor.tensor_content = np.ascontiguousarray(tf_value, "<f4").tobytes()
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
