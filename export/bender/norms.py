"""What Bender's instance-norm kernel needs of a baked network: its eps and its +-10 clamp.

Bender's InstanceNorm (instanceNorm.metal) computes clamp((x - mean) * scale / sqrt(var + 1e-4) +
shift, -10, 10) whatever the graph says. `match_bender_epsilon` makes its fixed eps the model's, and
`rescale_for_bender_clamp` keeps every output inside the clamp; both rewrite the baked network into an
equivalent one (a norm is invariant to its input's scale but for eps, ReLU to positive scales), for
the Bender graph and for a network defined in Swift alike.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from export.baked import BakedConv, BakedNetwork
from export.bender.spec import BENDER_INSTANCE_NORM_CLAMP, BENDER_INSTANCE_NORM_EPSILON, BenderExportError


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
    A norm that feeds a sigmoid (not homogeneous) keeps s = 1 (sigmoid(10) is already 1 - 4.5e-5).
    """
    h, w = height, width
    for c in net.contract:
        h, w = c.output_hw(h, w)
    stream = min((_pow2_scale(instance_norm_bound(c2, h * w), limit) for _, c2 in net.residual), default=1.0)
    scales = {"stream": stream}
    for c1, c2 in net.residual:
        scales[c1.scope] = _pow2_scale(instance_norm_bound(c1, h * w), limit)
        scales[c2.scope] = stream
    for c in net.expand:
        h, w = c.output_hw(h, w)
        normed = c.gamma is not None and c.activation == "relu"
        scales[c.scope] = _pow2_scale(instance_norm_bound(c, h * w), limit) if normed else 1.0
    return scales


def rescale_for_bender_clamp(net: BakedNetwork, height: int, width: int,
                             limit: float = BENDER_INSTANCE_NORM_CLAMP) -> tuple[BakedNetwork, dict[str, float]]:
    """An equivalent network whose instance-norm outputs never reach Bender's +-10 clamp.

    Each norm's gamma/beta are multiplied by a power of two s <= 1 (`clamp_guard_scales`); ReLU is
    positively homogeneous, so relu(s y) = s relu(y), and the next conv's weights are divided by s,
    which gives that conv exactly its original output (instance norms see unscaled inputs, eps
    included; a bias is added after the weights, so it stays). The residual stream is carried scaled
    by one shared s (the last contract conv's weights and bias times s). Powers of two scale
    float16/float32 values exactly, so this changes nothing but the clamp (and values below fp16's
    normal range, 6.1e-5 * s).
    """
    if net.contract[-1].activation != "relu" or any(c1.activation != "relu" or c2.activation is not None
                                                    for c1, c2 in net.residual):
        raise BenderExportError("clamp guard expects Magenta's structure (ReLU after the last contract conv and "
                                "residual conv1)")
    scales = clamp_guard_scales(net, height, width, limit)
    stream = scales["stream"]
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731

    def scaled(c: BakedConv, weights: float, norm: float) -> BakedConv:
        if c.gamma is None:
            return replace(c, kernel=f32(c.kernel * weights))
        return replace(c, kernel=f32(c.kernel * weights), gamma=f32(c.gamma * norm), beta=f32(c.beta * norm))

    contract = list(net.contract)
    last = contract[-1]
    contract[-1] = replace(last, kernel=f32(last.kernel * stream), bias=f32(last.bias * stream))
    residual = [(scaled(c1, 1 / stream, scales[c1.scope]), scaled(c2, 1 / scales[c1.scope], stream))
                for c1, c2 in net.residual]
    expand, incoming = [], stream
    for c in net.expand:
        expand.append(scaled(c, 1 / incoming, scales[c.scope]))
        incoming = scales[c.scope]
    return replace(net, contract=contract, residual=residual, expand=expand), scales


def match_bender_epsilon(net: BakedNetwork, eps: float = BENDER_INSTANCE_NORM_EPSILON) -> BakedNetwork:
    """An equivalent network whose instance norms use Bender's eps.

    Bender's kernel adds a fixed 1e-4 to the variance, whatever the graph's eps. A norm is invariant to
    the scale of its input but for eps: the conv before it scaled by t = sqrt(1e-4 / eps) (weights and
    bias) gives sqrt(t^2 var + 1e-4) = t sqrt(var + eps), so the norm's output is the model's. Exact but
    for the float32 rounding of the scaled weights (t is no power of two).
    """
    def matched(c: BakedConv) -> BakedConv:
        if c.gamma is None or c.epsilon == eps:
            return c
        t = float(np.sqrt(eps / c.epsilon))
        return replace(c, kernel=np.asarray(c.kernel * t, np.float32), epsilon=eps,
                       bias=None if c.bias is None else np.asarray(c.bias * t, np.float32))

    return replace(net, contract=[matched(c) for c in net.contract],
                   residual=[(matched(c1), matched(c2)) for c1, c2 in net.residual],
                   expand=[matched(c) for c in net.expand])


def for_bender_norms(net: BakedNetwork, match_epsilon: bool | None = None) -> BakedNetwork:
    """`net` with its norms' eps matched to Bender's when `match_epsilon`; None: for the realtime network,
    whose eps (1e-3) is of the order of its features' variances (Bender's 1e-4 alone costs it 30-34 dB),
    not for Magenta's, whose 1e-5 costs 62-73 dB (docs/bender.md)."""
    if match_epsilon is None:
        match_epsilon = net.architecture == "realtime"
    return match_bender_epsilon(net) if match_epsilon else net
