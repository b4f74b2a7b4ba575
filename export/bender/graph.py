"""The Bender graph builder: one baked style as a frozen TensorFlow GraphDef that Bender's
`TFConverter` maps op for op (rules and their Swift sources in docs/bender.md).

`build_bender_graph` writes the transfer network with only ops Bender maps, rescales the instance
norms so Bender's +-10 clamp never cuts a value, and checks its own output with the converter
replay; `to_tensorflow_graph_def` turns a Bender graph back into one TensorFlow can import.
"""

from __future__ import annotations

import numpy as np

from export.baked import CIN_EPSILON, BakedConv, BakedNetwork
from export.bender.converter import check_bender_graph
from export.bender.spec import (BENDER_INSTANCE_NORM_CLAMP, INPUT_NAME, OUTPUT_NAME, PADDING_FORMS, STRIDE2_FORMS,
                                UPSAMPLE_FORMS, BenderExportError)


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
