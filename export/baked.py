"""One style baked into the transfer network, as plain float32 arrays.

`bake(transformer, bottleneck)` evaluates the 26 style_params convs on one style's bottleneck
and folds the contract's batch norm into conv weight + bias, giving a `BakedNetwork`: every
number a device runtime needs, no Keras. `reference_forward` runs it in numpy (float32,
Magenta's reflect padding): the ground truth the Bender and Core ML executors are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from training.network.magenta_network import cin_scopes

CIN_EPSILON = 1e-5


@dataclass
class BakedConv:
    scope: str                   # Magenta scope, e.g. "transformer/residual/residual1/conv1"
    kernel: np.ndarray           # HWIO float32
    stride: int = 1
    bias: np.ndarray | None = None     # contract convs: the folded batch norm
    gamma: np.ndarray | None = None    # instance-norm scale (style-conditioned convs)
    beta: np.ndarray | None = None     # instance-norm shift
    activation: str | None = None      # "relu", "sigmoid" or None
    upsample: int = 1                  # nearest-neighbour factor applied before the conv

    @property
    def kernel_size(self) -> int:
        return int(self.kernel.shape[0])


@dataclass
class BakedNetwork:
    """The transfer network for one style: contract (3), residual blocks (5 x 2), expand (3)."""

    contract: list[BakedConv] = field(default_factory=list)
    residual: list[tuple[BakedConv, BakedConv]] = field(default_factory=list)
    expand: list[BakedConv] = field(default_factory=list)

    def convs(self) -> list[BakedConv]:
        return [*self.contract, *[c for block in self.residual for c in block], *self.expand]


def _np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def style_norm_params(transformer: keras.Model, bottleneck: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{conv scope: (gamma, beta)} for the 13 conditional instance norms, from a (1, 1, 1, 100) bottleneck."""
    b = np.asarray(bottleneck, np.float32).reshape(-1)
    params = {}
    for scope in cin_scopes_of(transformer):
        prefix = f"style_params/{scope}/StyleNorm".replace("/", ".")
        beta_kernel, beta_bias = (_np(w) for w in transformer.get_layer(f"{prefix}.Conv").weights)
        gamma_kernel, gamma_bias = (_np(w) for w in transformer.get_layer(f"{prefix}.Conv_1").weights)
        params[scope] = (b @ gamma_kernel[0, 0] + gamma_bias, b @ beta_kernel[0, 0] + beta_bias)
    return params


def cin_scopes_of(transformer: keras.Model) -> list[str]:
    depth = transformer.get_layer("transformer.residual.residual1.conv1").filters
    return list(cin_scopes(depth / 128.0))


def bake(transformer: keras.Model, bottleneck: np.ndarray) -> BakedNetwork:
    """Fold one style's bottleneck and the contract batch norm into plain arrays."""
    params = style_norm_params(transformer, bottleneck)
    conv = lambda scope: transformer.get_layer(scope.replace("/", "."))  # noqa: E731
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


# ---- numpy reference (float32, exactly Magenta's maths) ----

def reflect_conv(x: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
    """(H, W, C) image, HWIO kernel: reflect-pad by k // 2, then VALID conv with `stride`."""
    k = kernel.shape[0]
    p = k // 2
    padded = np.pad(x, [(p, p), (p, p), (0, 0)], mode="reflect")
    h = (padded.shape[0] - k) // stride + 1
    w = (padded.shape[1] - k) // stride + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(0, 1))[::stride, ::stride][:h, :w]
    return np.einsum("hwcij,ijco->hwo", windows, kernel, optimize=True).astype(np.float32)


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
    y = reflect_conv(x, c.kernel, c.stride)
    if c.bias is not None:
        y = y + c.bias
    if c.gamma is not None:
        y = instance_norm(y, c.gamma, c.beta)
    return activate(y, c.activation)


def reference_forward(net: BakedNetwork, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) content image in [0, 1] -> stylized (H, W, 3), float32 numpy."""
    x = np.asarray(image, np.float32)
    for c in net.contract:
        x = apply_conv(x, c)
    for conv1, conv2 in net.residual:
        x = x + apply_conv(apply_conv(x, conv1), conv2)
    for c in net.expand:
        x = apply_conv(x, c)
    return x.astype(np.float32)
