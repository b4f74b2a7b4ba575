"""Execute a converted Core ML program (MIL) in numpy, so Core ML exports can be checked on Linux.

`MLModel.predict` needs macOS (the Linux wheel of coremltools has no `libcoremlpython`), but the
converted program itself is plain data: `mlmodel._mil_program` (or, for a model loaded from disk,
the `mlProgram` of its spec read back with coremltools' milproto loader). `run_mil_program` walks
the ops of one function in order and evaluates each one with numpy.

Numerics
--------
Every op is computed in float32 (fp16 operands are widened exactly) and its result is stored in
the dtype the program declares for it: an fp16 tensor is rounded to float16 (round to nearest
even) after every op, an fp32 tensor stays float32. This is "fp16 storage, fp32 arithmetic":
- every tensor the program passes between ops holds exactly the fp16 value a device would store,
  which is where most of the fp16 error comes from, and fp16 overflow (|x| > 65504 -> inf)
  happens where it would on the device (a `MILExecutionWarning` names the op);
- convolutions and reductions accumulate in float32, as Apple's GPU and Neural Engine kernels
  accumulate at higher precision than they store; numpy has no fp16 BLAS, and summing in fp16
  would model a worse device than the real one (and be far slower);
- elementwise ops give the same result either way (numpy's float16 arithmetic is also float32
  arithmetic rounded to float16).
The result is therefore a close model, not a bit-exact one: devices may fuse ops, approximate
rsqrt/sigmoid, or accumulate parts of a convolution in fp16. Treat a measured PSNR as what the
program's precision allows, with device-specific deviations on top (check on a Mac to be sure).

Image inputs and outputs
------------------------
An ImageType input is passed the way an app hands over pixels: an (H, W, 3) RGB array (uint8 or
float) in 0..255, also accepted with a leading batch of 1; grayscale as (H, W) or (H, W, 1). The
executor reorders the channels to the declared layout (RGB or BGR), moves them first (NCHW, the
layout the MIL program's image input has) and casts to the input's dtype (fp32; fp16 for
GRAYSCALE_FLOAT16). Float pixels are not rounded to integers, so a parity check measures the
model, not 8-bit input quantisation; pass uint8 to see what a device sees.
The image's `scale` and `bias` are *not* in an mlprogram's spec: coremltools' backend pass
`insert_image_preprocessing_ops` writes them into the program as ops named `<input>__scaled__`
(mul) and `<input>__biased__` (add). Executing the program therefore applies them exactly once.
Only when a Program carries an ImageType in `function.input_types` but lacks those ops (a program
taken before the backend passes) does the executor apply scale and bias itself.
(`neuralNetworkPreprocessing` exists only in old neuralnetwork models, which have no MIL program
and are not supported.)

An ImageType output is a (1, C, H, W) fp32 tensor in the program; Core ML turns it into a pixel
buffer. The executor returns what an app would read from that buffer: values clipped to 0..255,
rounded to the nearest integer, uint8, channels in RGB order (a BGR output is reordered), shape
(H, W, 3) ((H, W) for grayscale; (N, H, W, C) if the batch is not 1). Whether Core ML rounds or
truncates when it fills the buffer is not documented; rounding to nearest differs by at most one
level. `image_output="float"` returns the clipped values unrounded as float32 instead.

Working conversion recipe (coremltools 9.0, TensorFlow 2.21)
------------------------------------------------------------
    import coremltools as ct, numpy as np, tensorflow as tf
    from training.network.magenta_network import build_transfer_network

    tr = build_transfer_network(alpha=0.25)            # or the stylizer's "transformer" layer
    bottleneck = ...                                   # (1, 1, 1, 100) float32, baked in as a constant

    @tf.function(input_signature=[tf.TensorSpec([1, H, W, 3], tf.float32, name="content_image")])
    def baked(content_image):
        y = tr([content_image, tf.constant(bottleneck)], training=False)
        # an ImageType output must be NCHW (1, 3, H, W) in 0..255
        return tf.transpose(y * 255.0, [0, 3, 1, 2])

    mlmodel = ct.convert(
        [baked.get_concrete_function()], source="tensorflow", convert_to="mlprogram",
        inputs=[ct.ImageType(name="content_image", shape=(1, H, W, 3), scale=1 / 255.0,
                             color_layout=ct.colorlayout.RGB)],
        # a concrete function's output node is "Identity": name the output by that node
        outputs=[ct.ImageType(name="Identity", color_layout=ct.colorlayout.RGB)],
        minimum_deployment_target=ct.target.iOS16, compute_precision=ct.precision.FLOAT16)
    spec = mlmodel.get_spec()
    ct.utils.rename_feature(spec, "Identity", "stylized_image")   # renames the program var too
    mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)

    out = run_mil_program(mlmodel, {"content_image": rgb_uint8_hw3})["stylized_image"]  # (H, W, 3) uint8

Notes from checking it:
- An output name that is not a node of the graph fails ("stylized_image is not in graph"): with a
  concrete function use "Identity" (or `tf.identity(..., name=...)` in a frozen GraphDef, which
  keeps node names, as `export.coreml` does) and rename afterwards.
- With ImageType input/output, the program's input is fp32 (1, 3, H, W) 0..255 followed by
  `mul(1/255)` and a cast to fp16; the output is cast back to fp32 (1, 3, H, W).
- TensorType inputs/outputs with an iOS16 target and FLOAT16 precision become fp16 multiarrays
  (the executor casts float32 inputs to fp16, as Core ML would).
- The Keras functional model converts directly too (`ct.convert(keras_model, source="tensorflow",
  ...)`, static input shapes); it emits the same ops as the concrete function.
- Ops emitted for the alpha-0.25 transfer network: const, pad (reflect), conv (valid), relu,
  reduce_mean (axes [2, 3], keep_dims), sub, mul, add, rsqrt, resize_nearest_neighbor (TF's
  half-pixel nearest resize), sigmoid, cast; plus transpose when inputs/outputs are NHWC tensors.
  Instance norm stays decomposed (mean, sub, square as mul, mean, add eps, rsqrt, mul, add). From
  a frozen GraphDef (the route `export.coreml` takes) the baked network's constant gamma/beta are
  folded into 13 `batch_norm` ops instead. The style predictors add conv with groups (depthwise)
  and pad_type same, relu6, avg_pool, max_pool and concat. The realtime network (`model=realtime`)
  adds conv with groups = channels (its depthwise 3x3) and conv_transpose (its 2x2 stride-2
  upsampling: TF's Conv2DBackpropInput with output_shape and pad_type same).
- coremltools 9 converts TF's MirrorPad SYMMETRIC to MIL `reflect` (wrong except where the two
  edge rows happen to be equal); the network uses REFLECT, which converts faithfully.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MILExecutionWarning",
    "SUPPORTED_OPS",
    "UnsupportedMILOp",
    "mil_ops_used",
    "run_mil_program",
]


class UnsupportedMILOp(Exception):
    """The program contains an op the numpy executor does not implement (raised before running)."""

    def __init__(self, op_type: str, op_name: str, others: tuple[str, ...] = ()):
        self.op_type = op_type
        self.op_name = op_name
        self.others = tuple(others)
        also = f" (also unsupported here: {', '.join(others)})" if others else ""
        super().__init__(
            f"MIL op {op_type!r} (op {op_name!r}) is not supported by the numpy MIL executor{also}; "
            f"supported ops: {', '.join(sorted(SUPPORTED_OPS))}"
        )


class MILExecutionWarning(RuntimeWarning):
    """Something the program does that a device would do too, but that the caller should know."""


# ---------------------------------------------------------------------------------------------
# Loading the program and its I/O description
# ---------------------------------------------------------------------------------------------

@dataclass
class _ImageIO:
    color: str  # RGB, BGR, GRAYSCALE, GRAYSCALE_FLOAT16
    scale: float | None = None  # known only from a Program's input_types
    bias: tuple[float, ...] | None = None


def _load(model_or_program):
    """(pymil Program, spec or None)."""
    import coremltools as ct
    from coremltools.converters.mil import Program

    if isinstance(model_or_program, Program):
        return model_or_program, None
    if isinstance(model_or_program, ct.models.MLModel):
        spec = model_or_program.get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise TypeError(f"only mlprogram models hold a MIL program; this model is a {spec.WhichOneof('Type')!r}")
        program = getattr(model_or_program, "_mil_program", None)
        if program is None:  # loaded from disk or rebuilt from a spec: read the program back from the proto
            from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

            program = milproto_load(spec, spec.specificationVersion, model_or_program.weights_dir or "")
        return program, spec
    raise TypeError(f"expected a coremltools MLModel (mlprogram) or a MIL Program, got {type(model_or_program).__name__}")


def _function(program, name: str):
    if name not in program.functions:
        raise KeyError(f"the program has no function {name!r}; it has {sorted(program.functions)}")
    return program.functions[name]


def _color_space_name(value: int) -> str:
    from coremltools.proto import FeatureTypes_pb2

    return FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(value)


def _image_inputs(func, spec) -> dict[str, _ImageIO]:
    from coremltools.converters.mil.input_types import ImageType

    images: dict[str, _ImageIO] = {}
    for t in getattr(func, "input_types", None) or ():
        if isinstance(t, ImageType):
            images[t.name] = _ImageIO(t.color_layout.name, float(t.scale), tuple(np.ravel(t.bias).astype(float)))
    if spec is not None:
        for feature in spec.description.input:
            if feature.type.WhichOneof("Type") == "imageType":
                color = _color_space_name(feature.type.imageType.colorSpace)
                if feature.name in images:
                    images[feature.name].color = color
                else:
                    images[feature.name] = _ImageIO(color)
    return images


def _image_outputs(func, spec) -> dict[str, str]:
    from coremltools.converters.mil.input_types import ImageType

    if spec is not None:  # the spec is what Core ML acts on
        return {f.name: _color_space_name(f.type.imageType.colorSpace)
                for f in spec.description.output if f.type.WhichOneof("Type") == "imageType"}
    return {t.name: t.color_layout.name for t in (getattr(func, "output_types", None) or ()) if isinstance(t, ImageType)}


def _nptype(var):
    from coremltools.converters.mil.mil import types

    return types.nptype_from_builtin(var.dtype)


def _static_shape(var) -> tuple[int, ...] | None:
    shape = getattr(var, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(d) for d in shape)
    except TypeError:  # symbolic dimension
        return None


# ---------------------------------------------------------------------------------------------
# Ops. Each takes (op, get) where get(name) gives the value of an input (None when absent),
# and returns the result before it is cast to the declared output dtype.
# ---------------------------------------------------------------------------------------------

_OPS = {}


def _op(*names):
    def register(fn):
        for n in names:
            _OPS[n] = fn
        return fn
    return register


def _f32(a):
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.kind == "f" and a.dtype != np.float32 else a


def _ints(value, default=None):
    return default if value is None else [int(v) for v in np.ravel(value)]


def _str(value, default):
    return default if value is None else str(np.asarray(value).item() if isinstance(value, np.ndarray) else value)


@_op("identity")
def _identity(op, get):
    return get("x")


@_op("cast")
def _cast(op, get):
    return get("x")  # converted to the declared dtype (the `dtype` argument) by the caller


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum,
}


@_op(*_BINARY)
def _binary(op, get):
    return _BINARY[op.op_type](_f32(get("x")), _f32(get("y")))


@_op("rsqrt")
def _rsqrt(op, get):
    eps = get("epsilon")
    return 1.0 / np.sqrt(_f32(get("x")) + np.float32(1e-12 if eps is None else eps))


@_op("sqrt")
def _sqrt(op, get):
    return np.sqrt(_f32(get("x")))


@_op("square")
def _square(op, get):
    x = _f32(get("x"))
    return x * x


@_op("abs")
def _abs(op, get):
    return np.abs(get("x"))


@_op("exp")
def _exp(op, get):
    return np.exp(_f32(get("x")))


@_op("tanh")
def _tanh(op, get):
    return np.tanh(_f32(get("x")))


@_op("relu")
def _relu(op, get):
    return np.maximum(_f32(get("x")), 0)


@_op("relu6")
def _relu6(op, get):
    return np.clip(_f32(get("x")), 0, 6)


@_op("sigmoid")
def _sigmoid(op, get):
    return 0.5 * (1.0 + np.tanh(0.5 * _f32(get("x"))))  # no overflow for large |x|


@_op("clip")
def _clip(op, get):
    return np.minimum(np.maximum(_f32(get("x")), _f32(get("alpha"))), _f32(get("beta")))


@_op("reduce_mean")
def _reduce_mean(op, get):
    x = _f32(get("x"))
    axes = _ints(get("axes"))
    keep = bool(get("keep_dims")) if get("keep_dims") is not None else False
    return np.mean(x, axis=None if axes is None else tuple(axes), keepdims=keep)


def _per_channel(v, ndim):
    return None if v is None else _f32(v).reshape((1, -1) + (1,) * (ndim - 2))


@_op("instance_norm")
def _instance_norm(op, get):
    x = _f32(get("x"))
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mean).mean(axis=axes, keepdims=True)  # biased
    return _normalize(x, mean, var, get("epsilon"), get)


def _normalize(x, mean, var, eps, get):
    """(x - mean) / sqrt(var + eps), then the optional per-channel gamma and beta (both norms)."""
    y = (x - mean) / np.sqrt(var + np.float32(1e-5 if eps is None else eps))
    gamma, beta = _per_channel(get("gamma"), x.ndim), _per_channel(get("beta"), x.ndim)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


@_op("batch_norm")
def _batch_norm(op, get):
    x = _f32(get("x"))
    return _normalize(x, _per_channel(get("mean"), x.ndim), _per_channel(get("variance"), x.ndim), get("epsilon"), get)


@_op("pad")
def _pad(op, get):
    x = get("x")
    pad = _ints(get("pad"))
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"{op.name}: pad {pad} does not fit an input of rank {x.ndim}")
    widths = [(0, 0)] * (x.ndim - len(pad) // 2) + [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    mode = _str(get("mode"), "constant")
    if mode == "constant":
        cval = get("constant_val")
        return np.pad(x, widths, mode="constant", constant_values=0 if cval is None else cval)
    if mode == "reflect":
        return np.pad(x, widths, mode="reflect")
    if mode == "replicate":
        return np.pad(x, widths, mode="edge")
    raise ValueError(f"{op.name}: pad mode {mode!r} is not one of constant, reflect, replicate")


def _window_padding(pad_type, spatial, kernel, strides, dilations, custom):
    """[(before, after)] per spatial dim for conv/pool pad types valid, same, same_lower, custom."""
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type == "custom":
        return [(custom[2 * i], custom[2 * i + 1]) for i in range(len(spatial))]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            effective = (k - 1) * d + 1
            total = max(0, (math.ceil(size / s) - 1) * s + effective - size)
            small, large = total // 2, total - total // 2
            out.append((small, large) if pad_type == "same" else (large, small))
        return out
    raise ValueError(f"unknown pad_type {pad_type!r}")


def _window_args(op, get, spatial, kernel, dilations):
    n = len(spatial)
    strides = _ints(get("strides"), [1] * n)
    pad_type = _str(get("pad_type"), "valid")
    custom = _ints(get("pad"), [0] * (2 * n))
    return strides, _window_padding(pad_type, spatial, kernel, strides, dilations, custom)


def _offsets(kernel, dilations, strides, out):
    """For every kernel position: the slices of a padded channels-last input that it reads."""
    for pos in itertools.product(*(range(k) for k in kernel)):
        yield pos, tuple(slice(p * d, p * d + s * (o - 1) + 1, s) for p, d, s, o in zip(pos, dilations, strides, out))


def _conv_operands(get):
    """conv and conv_transpose alike: input and weight in float32, the kernel's size, dilations, groups."""
    x, w = _f32(get("x")), _f32(get("weight"))
    kernel = w.shape[2:]
    dilations = _ints(get("dilations"), [1] * len(kernel))
    groups = int(get("groups")) if get("groups") is not None else 1
    return x, w, kernel, dilations, groups


@_op("conv")
def _conv(op, get):
    x, w, kernel, dilations, groups = _conv_operands(get)
    spatial = x.shape[2:]
    n = len(spatial)
    strides, pads = _window_args(op, get, spatial, kernel, dilations)
    batch, cin = x.shape[:2]
    cout, cin_g = w.shape[:2]
    if cin != cin_g * groups or cout % groups:
        raise ValueError(f"{op.name}: weight {w.shape} does not fit input {x.shape} with groups={groups}")
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    out_shape = [(x.shape[2 + i] - ((kernel[i] - 1) * dilations[i] + 1)) // strides[i] + 1 for i in range(n)]
    xl = np.moveaxis(x, 1, -1)  # (N, *S, C): one matmul per kernel position
    y = np.zeros((batch, *out_shape, cout), np.float32)
    depthwise = cin_g == 1 and groups == cin
    for pos, window in _offsets(kernel, dilations, strides, out_shape):
        patch = xl[(slice(None), *window, slice(None))]
        wk = w[(slice(None), slice(None), *pos)]  # (Cout, Cin_g)
        if groups == 1:
            y += patch @ wk.T
        elif depthwise:
            mult = cout // cin
            y += (np.repeat(patch, mult, axis=-1) if mult > 1 else patch) * wk[:, 0]
        else:
            pg = patch.reshape(*patch.shape[:-1], groups, cin_g)
            wg = wk.reshape(groups, cout // groups, cin_g)
            y += np.einsum("...gc,goc->...go", pg, wg).reshape(*patch.shape[:-1], cout)
    bias = get("bias")
    if bias is not None:
        y += _f32(bias)
    return np.moveaxis(y, -1, 1)


def _conv_transpose_crop(pad_type, full, out, custom):
    """Where the output window starts in the full result (length `full`) of a transposed conv.

    valid: at 0; custom: after pad[2i]; same: as TF's SAME conv pads its input, the smaller half
    of `full - out` before (coremltools maps TF's Conv2DBackpropInput here with its output_shape).
    """
    if pad_type == "valid":
        return [0] * len(full)
    if pad_type == "custom":
        return [custom[2 * i] for i in range(len(full))]
    if pad_type == "same":
        return [max(0, f - o) // 2 for f, o in zip(full, out)]
    raise ValueError(f"unknown pad_type {pad_type!r}")


@_op("conv_transpose")
def _conv_transpose(op, get):
    # The transpose of `conv`: input pixel i adds x[i] * weight[k] to output pixel i * stride + k * dilation
    # of the full result, weights as given (no rotation); weight is [C_in, C_out / groups, *K].
    x, w, kernel, dilations, groups = _conv_operands(get)
    spatial = x.shape[2:]
    n = len(spatial)
    strides = _ints(get("strides"), [1] * n)
    batch, cin = x.shape[:2]
    cout = w.shape[1] * groups
    if w.shape[0] != cin or cin % groups:
        raise ValueError(f"{op.name}: weight {w.shape} does not fit input {x.shape} with groups={groups}")
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(spatial, strides, kernel, dilations)]
    xl = np.moveaxis(x, 1, -1).reshape(batch, *spatial, groups, cin // groups)
    y = np.zeros((batch, *full, cout), np.float32)
    for pos, window in _offsets(kernel, dilations, strides, spatial):
        wk = w[(slice(None), slice(None), *pos)].reshape(groups, cin // groups, -1)  # (G, Cin_g, Cout_g)
        y[(slice(None), *window, slice(None))] += np.einsum("...gc,gco->...go", xl, wk).reshape(*xl.shape[:-2], cout)
    output_shape = _ints(get("output_shape"))
    pad_type = _str(get("pad_type"), "valid")
    custom = _ints(get("pad"), [0] * (2 * n))
    if output_shape is not None:
        out = list(output_shape[2:])
    elif pad_type == "same":
        out = [d * s for d, s in zip(spatial, strides)]
    else:
        out = [f - custom[2 * i] - custom[2 * i + 1] if pad_type == "custom" else f for i, f in enumerate(full)]
    start = _conv_transpose_crop(pad_type, full, out, custom)
    y = y[(slice(None), *(slice(b, b + o) for b, o in zip(start, out)), slice(None))]
    # an output longer than the full result (TF: input rows a strided conv never reads) ends in zeros
    y = np.pad(y, [(0, 0), *((0, o - size) for o, size in zip(out, y.shape[1:-1])), (0, 0)])
    bias = get("bias")
    if bias is not None:
        y += _f32(bias)
    return np.moveaxis(y, -1, 1)


def _pool(op, get, kind):
    x = _f32(get("x"))
    spatial = x.shape[2:]
    n = len(spatial)
    kernel = _ints(get("kernel_sizes"))
    strides, pads = _window_args(op, get, spatial, kernel, [1] * n)
    ceil_mode = bool(get("ceil_mode")) if get("ceil_mode") is not None else False
    out_shape, extra = [], []
    for size, k, s, (lo, hi) in zip(spatial, kernel, strides, pads):
        total = size + lo + hi
        if ceil_mode:
            o = (total - k + s - 1) // s + 1
            if (o - 1) * s >= size + lo and (lo > 0 or hi > 0):
                o -= 1
        else:
            o = (total - k) // s + 1
        out_shape.append(o)
        extra.append(max(0, (o - 1) * s + k - total))  # windows running past the padded input (ceil mode)
    widths = [(0, 0), (0, 0)] + [(lo, hi + e) for (lo, hi), e in zip(pads, extra)]
    xl = np.moveaxis(np.pad(x, widths, constant_values=-np.inf if kind == "max" else 0.0), 1, -1)
    acc = np.full((x.shape[0], *out_shape, x.shape[1]), -np.inf if kind == "max" else 0.0, np.float32)
    exclude = kind == "avg" and (bool(get("exclude_padding_from_average"))
                                 if get("exclude_padding_from_average") is not None else False)
    # which positions an average counts: real elements (exclude padding) or real + explicit padding
    counted = np.pad(np.ones(spatial, np.float32), [(lo, hi) for lo, hi in pads], constant_values=0.0 if exclude else 1.0)
    counted = np.pad(counted, [(0, e) for e in extra])
    count = np.zeros(out_shape, np.float32)
    for _, window in _offsets(kernel, [1] * n, strides, out_shape):
        patch = xl[(slice(None), *window, slice(None))]
        if kind == "max":
            np.maximum(acc, patch, out=acc)
        else:
            acc += patch
            count += counted[window]
    if kind == "avg":
        acc = acc / np.maximum(count, 1.0)[None, ..., None]
    return np.moveaxis(acc, -1, 1)


@_op("avg_pool")
def _avg_pool(op, get):
    return _pool(op, get, "avg")


@_op("max_pool")
def _max_pool(op, get):
    return _pool(op, get, "max")


def _nearest_rows(size_in, size_out, source_of):
    return np.minimum(source_of(np.arange(size_out)), size_in - 1).astype(np.intp)


@_op("upsample_nearest_neighbor")
def _upsample_nearest(op, get):
    x = get("x")
    sh = float(get("scale_factor_height")) if get("scale_factor_height") is not None else 1.0
    sw = float(get("scale_factor_width")) if get("scale_factor_width") is not None else 1.0
    h, w = x.shape[-2:]
    ho, wo = int(math.floor(h * sh)), int(math.floor(w * sw))
    rows = _nearest_rows(h, ho, lambda i: np.floor(i / sh))
    cols = _nearest_rows(w, wo, lambda i: np.floor(i / sw))
    return x[..., rows, :][..., cols]


@_op("resize_nearest_neighbor")
def _resize_nearest(op, get):
    # coremltools emits this op for TF's ResizeNearestNeighbor with half_pixel_centers=True
    # (tf.image.resize "nearest"), so sample at half-pixel centres. For integer up-scaling every
    # rule agrees; for other ratios Core ML's exact rule is not documented.
    x = get("x")
    ho, wo = int(get("target_size_height")), int(get("target_size_width"))
    h, w = x.shape[-2:]
    if ho % h or wo % w:
        warnings.warn(f"{op.name}: resize {h}x{w} -> {ho}x{wo} is not an integer up-scaling; the executor samples "
                      "at half-pixel centres (TF's rule), Core ML's own rule may differ", MILExecutionWarning, stacklevel=2)
    rows = _nearest_rows(h, ho, lambda i: np.floor((i + 0.5) * h / ho))
    cols = _nearest_rows(w, wo, lambda i: np.floor((i + 0.5) * w / wo))
    return x[..., rows, :][..., cols]


@_op("transpose")
def _transpose(op, get):
    return np.transpose(get("x"), _ints(get("perm")))


def _reshaped(op, x, shape):
    declared = _static_shape(op.outputs[0])
    if declared is not None:
        return x.reshape(declared)
    return x.reshape(shape)


@_op("reshape")
def _reshape(op, get):
    x = get("x")
    shape = _ints(get("shape"))
    declared = _static_shape(op.outputs[0])
    if declared is not None:
        return x.reshape(declared)
    # MIL: 0 copies the matching dimension of x, counted from the right (iOS17 rule; same for K == rank)
    resolved = list(shape)
    for i, d in enumerate(shape):
        if d == 0:
            j = x.ndim - (len(shape) - i)
            resolved[i] = x.shape[j] if j >= 0 else 1
    return x.reshape(resolved)


@_op("squeeze")
def _squeeze(op, get):
    x, axes = get("x"), _ints(get("axes"))
    return _reshaped(op, x, np.squeeze(x, axis=None if axes is None else tuple(axes)).shape)


@_op("expand_dims")
def _expand_dims(op, get):
    x, axes = get("x"), _ints(get("axes"))
    return _reshaped(op, x, np.expand_dims(x, tuple(axes)).shape)


@_op("slice_by_size")
def _slice_by_size(op, get):
    """x[begin : begin + size] per axis; a size of -1 runs to the end of its axis (MIL's definition)."""
    x, begin, size = get("x"), _ints(get("begin")), _ints(get("size"))
    if len(begin) != x.ndim or len(size) != x.ndim:
        raise ValueError(f"{op.name}: begin {begin} and size {size} must have one entry per axis of {x.shape}")
    index = tuple(slice(b, None if n == -1 else b + n) for b, n in zip(begin, size))
    out = x[index]
    if any(n != -1 and got != n for n, got in zip(size, out.shape)):
        raise ValueError(f"{op.name}: slice begin {begin} size {size} runs past an input of shape {x.shape}")
    return out


@_op("concat")
def _concat(op, get):
    values = [np.asarray(v) for v in get("values")]
    axis = int(get("axis"))
    interleave = bool(get("interleave")) if get("interleave") is not None else False
    if not interleave:
        return np.concatenate(values, axis=axis)
    axis = axis % values[0].ndim
    stacked = np.stack(values, axis=axis + 1)  # (..., D, n, ...): slices of each input in turn
    return stacked.reshape(*values[0].shape[:axis], -1, *values[0].shape[axis + 1:])


@_op("matmul")
def _matmul(op, get):
    x, y = _f32(get("x")), _f32(get("y"))
    if get("transpose_x") is not None and bool(get("transpose_x")) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if get("transpose_y") is not None and bool(get("transpose_y")) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@_op("linear")
def _linear(op, get):
    y = _f32(get("x")) @ _f32(get("weight")).T
    bias = get("bias")
    return y if bias is None else y + _f32(bias)


SUPPORTED_OPS = frozenset(_OPS) | {"const"}


# ---------------------------------------------------------------------------------------------
# Running a program
# ---------------------------------------------------------------------------------------------

def mil_ops_used(model_or_program, function: str = "main") -> Counter:
    """How many ops of each type the program's function has (`const` included), for the manifest."""
    program, _ = _load(model_or_program)
    return Counter(op.op_type for op in _function(program, function).operations)


def _check_supported(func) -> None:
    unsupported = [op for op in func.operations if op.op_type not in SUPPORTED_OPS]
    if unsupported:
        first = unsupported[0]
        others = tuple(sorted({op.op_type for op in unsupported} - {first.op_type}))
        raise UnsupportedMILOp(first.op_type, first.name, others)


def _image_feed(name, value, var, image: _ImageIO, apply_scale_bias: bool) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in "uif":
        raise TypeError(f"image input {name!r}: expected pixels as numbers, got dtype {a.dtype}")
    gray = image.color.startswith("GRAYSCALE")
    channels = 1 if gray else 3
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if gray and a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] != channels:
        want = "(H, W) or (H, W, 1)" if gray else "(H, W, 3) RGB"
        raise ValueError(f"image input {name!r}: expected {want} pixels in 0..255, got shape {np.shape(value)}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError(f"image input {name!r}: pixels must be finite")
        low, high = float(a.min()), float(a.max())
        if low < -1e-3 or high > 255.0 + 1e-3:
            raise ValueError(f"image input {name!r}: pixels must be in 0..255, got {low:.4g}..{high:.4g}")
        if 0.0 < high <= 1.0:
            warnings.warn(f"image input {name!r}: all pixels <= 1.0; image inputs take 0..255, not 0..1",
                          MILExecutionWarning, stacklevel=3)
        a = np.clip(a, 0.0, 255.0)
    a = a.astype(np.float32)
    if image.color == "BGR":
        a = a[..., ::-1]
    if apply_scale_bias:  # only for a program that lacks coremltools' preprocessing ops
        bias = np.asarray(image.bias, np.float32).reshape(-1)
        a = a * np.float32(image.scale) + (bias if bias.size == channels else bias[0])
    shape = _static_shape(var)
    h, w = a.shape[:2]
    if shape is not None and len(shape) in (3, 4):
        if shape[-3:] == (channels, h, w):
            a = np.moveaxis(a, -1, 0)  # CHW, the layout coremltools gives image inputs
        elif shape[-3:] != (h, w, channels):
            raise ValueError(f"image input {name!r}: {h}x{w} pixels do not fit the program's input {shape}")
        a = a.reshape(shape)
    else:
        a = np.moveaxis(a, -1, 0)[None]
    return a.astype(_nptype(var))


def _tensor_feed(name, value, var) -> np.ndarray:
    a = np.asarray(value)
    shape = _static_shape(var)
    if shape is not None and a.shape != shape:
        raise ValueError(f"input {name!r}: expected shape {shape}, got {a.shape}")
    return a.astype(_nptype(var))


def _image_result(value: np.ndarray, color: str, image_output: str) -> np.ndarray:
    a = np.asarray(value, np.float32)
    if a.ndim == 3:
        a = a[None]
    a = np.moveaxis(a, 1, -1)  # NCHW -> NHWC
    if color == "BGR":
        a = a[..., ::-1]
    a = np.clip(np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0), 0.0, 255.0)
    a = np.rint(a).astype(np.uint8) if image_output == "uint8" else a.astype(np.float32)
    if color.startswith("GRAYSCALE"):
        a = a[..., 0]
    return a[0] if a.shape[0] == 1 else a


def _scale_bias_in_program(func, name) -> bool:
    var = func.inputs[name]
    return any(op.name in (f"{name}__scaled__", f"{name}__biased__") for op in var.child_ops)


def run_mil_program(model_or_program, inputs: dict[str, np.ndarray], function: str = "main",
                    *, image_output: str = "uint8") -> dict[str, np.ndarray]:
    """Execute one function of a Core ML program with numpy; {output name: array}.

    model_or_program: a `ct.models.MLModel` of type mlprogram (as converted, or loaded from a
    .mlpackage / rebuilt from a spec: then the program is read back from the spec) or a
    `coremltools.converters.mil.Program`.
    inputs: {input name: array}. Tensor inputs have the program's static shape and are cast to
    its dtype (fp16 or fp32); image inputs are (H, W, 3) RGB pixels in 0..255 (module docstring).
    image_output: "uint8" (pixels as Core ML's buffer holds them) or "float" (clipped, unrounded).
    Every op is checked against the supported set before anything runs (UnsupportedMILOp).
    """
    if image_output not in ("uint8", "float"):
        raise ValueError(f"image_output must be 'uint8' or 'float', got {image_output!r}")
    program, spec = _load(model_or_program)
    func = _function(program, function)
    _check_supported(func)

    expected = list(func.inputs)
    missing = [n for n in expected if n not in inputs]
    unknown = [n for n in inputs if n not in func.inputs]
    if missing or unknown:
        raise KeyError(f"inputs: missing {missing}, unknown {unknown}; the program takes {expected}")
    images = _image_inputs(func, spec)
    env: dict[str, np.ndarray] = {}
    for name, var in func.inputs.items():
        if name in images:
            image = images[name]
            apply = (image.scale is not None and (image.scale != 1 or any(b != 0 for b in image.bias))
                     and not _scale_bias_in_program(func, name))
            env[name] = _image_feed(name, inputs[name], var, image, apply)
        else:
            env[name] = _tensor_feed(name, inputs[name], var)

    # free each intermediate after its last use (large images at alpha 1.0 need it)
    output_names = {v.name for v in func.outputs}
    last_use: dict[str, int] = {}
    for i, op in enumerate(func.operations):
        for value in op.inputs.values():
            for var in value if isinstance(value, (list, tuple)) else (value,):
                last_use[var.name] = i

    def value_of(var):
        if var.name in env:
            return env[var.name]
        if var.val is not None:
            return np.asarray(var.val)
        raise RuntimeError(f"MIL executor: {var.name!r} is used before it is computed")

    for i, op in enumerate(func.operations):
        if op.op_type == "const":
            continue  # its value is read from the var when an op uses it
        out_var = op.outputs[0]

        def get(name, _op=op):
            value = _op.inputs.get(name)
            if value is None:
                return None
            if isinstance(value, (list, tuple)):
                return [value_of(v) for v in value]
            return value_of(value)

        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = _OPS[op.op_type](op, get)
        env[out_var.name] = _store(op, out_var, result)
        for value in op.inputs.values():
            for var in value if isinstance(value, (list, tuple)) else (value,):
                if last_use.get(var.name) == i and var.name not in output_names and var.name in env:
                    del env[var.name]

    image_outputs = _image_outputs(func, spec)
    outputs = {}
    for var in func.outputs:
        value = env[var.name]
        outputs[var.name] = _image_result(value, image_outputs[var.name], image_output) if var.name in image_outputs else value
    return outputs


def _store(op, out_var, result) -> np.ndarray:
    """Cast a result to the dtype the program declares for it (fp16: rounded), checking its shape."""
    dtype = _nptype(out_var)
    computed = np.asarray(result)
    with np.errstate(over="ignore", invalid="ignore"):
        stored = computed.astype(dtype, copy=False)
    declared = _static_shape(out_var)
    if declared is not None and stored.shape != declared:
        raise RuntimeError(f"MIL executor: op {op.name!r} ({op.op_type}) gave shape {stored.shape}, "
                           f"the program declares {declared}")
    if dtype == np.float16 and computed.dtype.kind == "f" and computed.dtype != np.float16:
        overflow = np.isinf(stored) & np.isfinite(computed)
        if overflow.any():
            warnings.warn(f"op {op.name!r} ({op.op_type}): {int(overflow.sum())} values overflow float16 "
                          "(|x| > 65504) and become inf, as they would on an fp16 device",
                          MILExecutionWarning, stacklevel=3)
    return stored
