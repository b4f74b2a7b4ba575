"""One style baked into the transfer network, as plain float32 arrays.

`bake(transformer, bottleneck)` evaluates the style_params convs on one style's bottleneck and
folds what a device need not compute (Magenta's contract batch norm, the realtime network's norm
prescale) into conv weights, giving a `BakedNetwork`: every number a device runtime needs, no
Keras. It takes either transfer network: Magenta's (contract/residual/expand, reflect padding) or
the realtime one (`model=realtime`: zero "same" padding, separable residual convs, transposed-conv
upsampling). `reference_forward` runs it in numpy (float32, the networks' own padding): the ground
truth the Bender and Core ML executors are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from training.network.layers import dotted
from training.network.realtime_network import PrescaledConditionalInstanceNorm

CIN_EPSILON = 1e-5
ARCHITECTURES = ("magenta", "realtime")
PADDINGS = ("reflect", "same")


@dataclass
class BakedConv:
    scope: str                   # Magenta scope, e.g. "transformer/residual/residual1/conv1"
    kernel: np.ndarray           # HWIO float32; a transposed conv's: [k, k, out, in] (TF's Conv2DBackpropInput filter)
    stride: int = 1
    bias: np.ndarray | None = None     # contract convs: the folded batch norm
    gamma: np.ndarray | None = None    # instance-norm scale (style-conditioned convs)
    beta: np.ndarray | None = None     # instance-norm shift
    activation: str | None = None      # "relu", "sigmoid" or None
    upsample: int = 1                  # nearest-neighbour factor applied before the conv
    padding: str = "reflect"           # "reflect": Magenta's (reflect-pad by k // 2, VALID); "same": TF's zero "same"
    depthwise: np.ndarray | None = None  # [k, k, C, 1]: a depthwise conv (this stride and padding) before the 1x1 `kernel`
    transpose: bool = False            # `kernel` is a "same" transposed conv: output = input x stride
    epsilon: float = CIN_EPSILON       # the instance norm's

    @property
    def kernel_size(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def out_channels(self) -> int:
        return int(self.kernel.shape[2] if self.transpose else self.kernel.shape[3])

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """The output size for an input of height x width (sizes divisible by the strides)."""
        if self.transpose:
            return height * self.stride, width * self.stride
        return height * self.upsample // self.stride, width * self.upsample // self.stride


@dataclass
class BakedNetwork:
    """The transfer network for one style: contract, residual blocks (conv1, conv2), expand.

    Magenta's: 3 contract convs, 5 blocks, 3 expand convs. The realtime network's: 2 strided
    contract convs, its residual blocks (separable convs), 2 transposed (or nearest + 3x3) convs.
    """

    contract: list[BakedConv] = field(default_factory=list)
    residual: list[tuple[BakedConv, BakedConv]] = field(default_factory=list)
    expand: list[BakedConv] = field(default_factory=list)
    architecture: str = "magenta"
    border_pad: int = 0  # realtime: the photo reflect-padded by this much, the features cropped by a quarter of it after the residual blocks

    def convs(self) -> list[BakedConv]:
        return [*self.contract, *[c for block in self.residual for c in block], *self.expand]


def _np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def cin_scopes_of(transformer: keras.Model) -> list[str]:
    """Scopes of the convs whose output a conditional instance norm (`<scope>.StyleNorm`) normalises."""
    suffix = ".StyleNorm"
    return [layer.name[: -len(suffix)].replace(".", "/") for layer in transformer.layers if layer.name.endswith(suffix)]


def style_norm_params(transformer: keras.Model, bottleneck: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{conv scope: (gamma, beta)} for the conditional instance norms, from a (1, 1, 1, 100) bottleneck."""
    b = np.asarray(bottleneck, np.float32).reshape(-1)
    params = {}
    for scope in cin_scopes_of(transformer):
        prefix = dotted(f"style_params/{scope}/StyleNorm")
        beta_kernel, beta_bias = (_np(w) for w in transformer.get_layer(f"{prefix}.Conv").weights)
        gamma_kernel, gamma_bias = (_np(w) for w in transformer.get_layer(f"{prefix}.Conv_1").weights)
        params[scope] = (b @ gamma_kernel[0, 0] + gamma_bias, b @ beta_kernel[0, 0] + beta_bias)
    return params


def is_realtime(transformer: keras.Model) -> bool:
    return any(isinstance(layer, PrescaledConditionalInstanceNorm) for layer in transformer.layers)


def bake(transformer: keras.Model, bottleneck: np.ndarray) -> BakedNetwork:
    """Fold one style's bottleneck (and what else a device need not compute) into plain arrays."""
    params = style_norm_params(transformer, bottleneck)
    return (_bake_realtime if is_realtime(transformer) else _bake_magenta)(transformer, params)


def _bake_magenta(transformer: keras.Model, params) -> BakedNetwork:
    """Magenta's network: the contract's batch norm folded into conv weight + bias."""
    conv = lambda scope: transformer.get_layer(dotted(scope))  # noqa: E731
    net = BakedNetwork()
    for i in (1, 2, 3):
        scope = f"transformer/contract/conv{i}"
        layer = conv(scope)
        bn = transformer.get_layer(f"{layer.name}.BatchNorm")
        w = {v.name: _np(v) for v in bn.weights}
        inv_std = 1.0 / np.sqrt(w["moving_variance"] + bn.epsilon)
        kernel = _np(layer.kernel) * inv_std
        bias = w["beta"] - w["moving_mean"] * inv_std
        net.contract.append(BakedConv(scope, kernel, stride=layer.strides[0], bias=bias, activation="relu"))
    for i in range(1, 6):
        block = []
        for j, activation in ((1, "relu"), (2, None)):
            scope = f"transformer/residual/residual{i}/conv{j}"
            gamma, beta = params[scope]
            block.append(BakedConv(scope, _np(conv(scope).kernel), gamma=gamma, beta=beta, activation=activation))
        net.residual.append(tuple(block))
    for i, (upsample, activation) in enumerate(((2, "relu"), (2, "relu"), (1, "sigmoid")), start=1):
        scope = f"transformer/expand/conv{i}/conv"
        gamma, beta = params[scope]
        net.expand.append(BakedConv(scope, _np(conv(scope).kernel), gamma=gamma, beta=beta,
                                    activation=activation, upsample=upsample))
    return net


def _bake_realtime(transformer: keras.Model, params) -> BakedNetwork:
    """The realtime network (training/network/realtime_network.py), every conv zero "same" padded.

    Its instance norm computes gamma * (x p - mean(x p)) / sqrt(var(x p) + eps p^2) + beta with a
    prescale p: p is folded into the weights of the conv before the norm and eps p^2 becomes the norm's
    eps, the same arithmetic with one multiply less (exact for a power-of-two p, the layer's 0.25).
    """
    has = lambda name: any(layer.name == name for layer in transformer.layers)  # noqa: E731
    layer = lambda scope: transformer.get_layer(dotted(scope))  # noqa: E731

    def conv(scope, conv_scope, activation, **kw):
        weights = layer(conv_scope)
        kernel = _np(weights.kernel)
        bias = _np(weights.bias) if weights.use_bias else None
        baked = BakedConv(scope, kernel, bias=bias, activation=activation, padding="same", **kw)
        if scope in params:
            norm = layer(f"{scope}/StyleNorm")
            baked.gamma, baked.beta = params[scope]
            baked.kernel = (kernel * norm.prescale).astype(np.float32)
            baked.bias = None if bias is None else (bias * norm.prescale).astype(np.float32)
            baked.epsilon = norm.epsilon * norm.prescale ** 2
        return baked

    border = layer("transformer/border_pad").pad if has(dotted("transformer/border_pad")) else 0
    net = BakedNetwork(architecture="realtime", border_pad=border)
    for i in (1, 2):
        scope = f"transformer/contract/conv{i}"
        net.contract.append(conv(scope, scope, "relu", stride=layer(scope).strides[0]))
    i = 1
    while has(dotted(f"transformer/residual/residual{i}/conv1/depthwise")):
        block = []
        for j, activation in ((1, "relu"), (2, None)):
            scope = f"transformer/residual/residual{i}/conv{j}"
            depthwise = layer(f"{scope}/depthwise")
            block.append(conv(scope, f"{scope}/pointwise", activation, stride=depthwise.strides[0],
                              depthwise=_np(depthwise.kernel)))
        net.residual.append(tuple(block))
        i += 1
    def upsampling(scope, activation):
        if isinstance(layer(scope), keras.layers.Conv2DTranspose):
            return conv(scope, scope, activation, stride=layer(scope).strides[0], transpose=True)
        return conv(scope, scope, activation, upsample=2)  # upsample="nearest": resize x2 + 3x3 conv

    full_res = has(dotted("transformer/expand/conv3/conv"))  # model.full_res_channels > 0
    net.expand.append(upsampling("transformer/expand/conv1/conv", "relu"))
    i = 1
    while has(dotted(f"transformer/expand/half{i}/depthwise")):  # model.half_res_blocks
        scope = f"transformer/expand/half{i}"
        net.expand.append(conv(scope, f"{scope}/pointwise", "relu", depthwise=_np(layer(f"{scope}/depthwise").kernel)))
        i += 1
    net.expand.append(upsampling("transformer/expand/conv2/conv", "relu" if full_res else "sigmoid"))
    if full_res:
        net.expand.append(conv("transformer/expand/conv3/conv", "transformer/expand/conv3/conv", "sigmoid"))
    return net


# ---- numpy reference (float32, exactly the networks' maths) ----

def _padded(x: np.ndarray, k: int, stride: int, padding: str) -> np.ndarray:
    """(H, W, C) padded for a k x k conv: Magenta's reflect pad by k // 2, or TF's "same" zeros
    (the smaller half of the total before)."""
    if padding == "reflect":
        p = k // 2
        return np.pad(x, [(p, p), (p, p), (0, 0)], mode="reflect")
    if padding != "same":
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    widths = []
    for size in x.shape[:2]:
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        widths.append((total // 2, total - total // 2))
    return np.pad(x, [*widths, (0, 0)])


def _windows(padded: np.ndarray, k: int, stride: int) -> np.ndarray:
    """(h, w, C, k, k): the k x k window of every output pixel of a VALID conv."""
    h = (padded.shape[0] - k) // stride + 1
    w = (padded.shape[1] - k) // stride + 1
    return np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(0, 1))[::stride, ::stride][:h, :w]


def conv2d(x: np.ndarray, kernel: np.ndarray, stride: int = 1, padding: str = "reflect") -> np.ndarray:
    """(H, W, C) image, HWIO kernel, `padding` "reflect" (Magenta's) or "same" (TF's zeros)."""
    windows = _windows(_padded(x, kernel.shape[0], stride, padding), kernel.shape[0], stride)
    return np.einsum("hwcij,ijco->hwo", windows, kernel, optimize=True).astype(np.float32)


def reflect_conv(x: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
    """(H, W, C) image, HWIO kernel: reflect-pad by k // 2, then VALID conv with `stride`."""
    return conv2d(x, kernel, stride, "reflect")


def depthwise_conv2d(x: np.ndarray, kernel: np.ndarray, stride: int = 1, padding: str = "same") -> np.ndarray:
    """(H, W, C) image, [k, k, C, 1] kernel: each channel convolved with its own filter."""
    windows = _windows(_padded(x, kernel.shape[0], stride, padding), kernel.shape[0], stride)
    return np.einsum("hwcij,ijc->hwc", windows, kernel[..., 0], optimize=True).astype(np.float32)


def conv2d_transpose(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """TF's "same" conv2d_transpose: (H, W, in) -> (H s, W s, out), kernel [k, k, out, in].

    Input pixel (i, j) adds kernel[a, b] x[i, j] at (i s + a, j s + b) of the full result, which is
    then cropped as TF's SAME conv pads (the smaller half before).
    """
    k = kernel.shape[0]
    h, w = x.shape[:2]
    full = np.zeros(((h - 1) * stride + k, (w - 1) * stride + k, kernel.shape[2]), np.float32)
    for a in range(k):
        for b in range(kernel.shape[1]):
            full[a:a + (h - 1) * stride + 1:stride, b:b + (w - 1) * stride + 1:stride] += x @ kernel[a, b].T
    oh, ow = h * stride, w * stride
    top, left = max(full.shape[0] - oh, 0) // 2, max(full.shape[1] - ow, 0) // 2
    y = full[top:top + oh, left:left + ow]
    return np.pad(y, [(0, oh - y.shape[0]), (0, ow - y.shape[1]), (0, 0)])  # k < stride: zero rows at the end


def instance_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = CIN_EPSILON) -> np.ndarray:
    mean = x.mean(axis=(0, 1), keepdims=True)
    var = x.var(axis=(0, 1), keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def activate(x: np.ndarray, activation: str | None) -> np.ndarray:
    if activation == "relu":
        return np.maximum(x, 0.0)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def apply_conv(x: np.ndarray, c: BakedConv) -> np.ndarray:
    if c.upsample > 1:
        x = x.repeat(c.upsample, axis=0).repeat(c.upsample, axis=1)
    if c.transpose:
        y = conv2d_transpose(x, c.kernel, c.stride)
    elif c.depthwise is not None:
        y = conv2d(depthwise_conv2d(x, c.depthwise, c.stride, c.padding), c.kernel, 1, c.padding)
    else:
        y = conv2d(x, c.kernel, c.stride, c.padding)
    if c.bias is not None:
        y = y + c.bias
    if c.gamma is not None:
        y = instance_norm(y, c.gamma, c.beta, c.epsilon)
    return activate(y, c.activation)


def reference_forward(net: BakedNetwork, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) content image in [0, 1] -> stylized (H, W, 3), float32 numpy."""
    x = np.asarray(image, np.float32)
    p, crop = net.border_pad, net.border_pad // 4
    if p:
        x = np.pad(x, ((p, p), (p, p), (0, 0)), mode="reflect")
    for c in net.contract:
        x = apply_conv(x, c)
    for conv1, conv2 in net.residual:
        x = x + apply_conv(apply_conv(x, conv1), conv2)
    if crop:
        x = x[crop:-crop, crop:-crop]
    for c in net.expand:
        x = apply_conv(x, c)
    return x.astype(np.float32)
