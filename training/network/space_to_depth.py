"""Stride-1 convolutions with few channels, computed on space-to-depth blocks (training speed only).

cuDNN runs a convolution with 3 or 8 channels far below the tensor cores' rate: on an H200 the
transfer network's two 9x9 convolutions (3 -> 8 and 8 -> 3 channels at alpha 0.25) took about a
third of the lite model's whole training step at 6 TFLOP/s. The same
convolution on b x b pixel blocks has b*b times the channels: a 9x9 kernel over 3 channels is a
3x3 kernel over 48 channels making 128 (b = 4). It does about 1.8x the multiply-adds, on shapes
the tensor cores run well. The result is the same convolution (up to float summation order).
Blocks may be rectangular (`block_for`).

Nothing is stored this way: the kernel variable keeps its own shape and Magenta name, and the
blocked kernel is rebuilt from it inside each step with constant 0/1 placement tensors, so
gradients reach the real weights. Export and inference use the plain convolution.
"""

from __future__ import annotations

import numpy as np
from keras import ops


def block_for(kernel_size: int, in_channels: int) -> tuple[int, int]:
    """Block (rows, columns) for a kernel side and input channel count.

    9x9 -> 3x3 on 4x4 blocks; 3x3 -> 2x2 on 2x2 blocks, except over an image (<= 4 channels):
    1x4 blocks along the width, whose blocked output is the plain one reshaped, where 2x2 blocks
    need a transpose back to pixels of their wide output (VGG-16's block1_conv1: 0.3 ms per call
    at batch 64 on an H200).
    """
    if kernel_size >= 5:
        return 4, 4
    return (1, 4) if in_channels <= 4 else (2, 2)


def blocked_kernel_size(kernel_size: int, block: int) -> int:
    """Blocks an output block's inputs span: ceil((k - 1) / b) + 1."""
    return (kernel_size + block - 2) // block + 1


def _placement(kernel_size: int, block: int) -> np.ndarray:
    """P[d, p, r, u] = 1 where tap u of the kernel joins input offset p of block d to output offset r."""
    size = blocked_kernel_size(kernel_size, block)
    placement = np.zeros((size, block, block, kernel_size), np.float32)
    for d in range(size):
        for p in range(block):
            for r in range(block):
                u = block * d + p - r
                if 0 <= u < kernel_size:
                    placement[d, p, r, u] = 1.0
    return placement


def _rows_columns(block) -> tuple[int, int]:
    return (block, block) if isinstance(block, int) else tuple(block)


def blocked_kernel(kernel, block):
    """(kh, kw, cin, cout) -> (kh', kw', bh*bw*cin, bh*bw*cout), channels ordered (row, column, channel).

    `block` is a side (square blocks) or (rows, columns).
    """
    kh, kw, cin, cout = kernel.shape
    bh, bw = _rows_columns(block)
    rows = ops.convert_to_tensor(_placement(kh, bh), dtype=kernel.dtype)
    cols = ops.convert_to_tensor(_placement(kw, bw), dtype=kernel.dtype)
    # Every entry of the result is one kernel weight or zero: exact in any dtype.
    blocked = ops.einsum("aprk,bqsl,klco->abpqcrso", rows, cols, kernel)
    return ops.reshape(blocked, (rows.shape[0], cols.shape[0], bh * bw * cin, bh * bw * cout))


def conv2d_space_to_depth(inputs, kernel, block, bias=None, activation=None):
    """VALID, stride-1 `activation(ops.conv(inputs, kernel) + bias)` (NHWC) computed on pixel blocks.

    `block` is a side or (rows, columns). The bias and activation act on the blocked output, where
    XLA can fuse them into cuDNN's convolution; after the reshape back to pixels they were a pass of
    their own over the whole activation (VGG-16's block1_conv1: 0.33 ms per step at batch 64 on an
    H200).
    """
    kh, kw, cin, cout = kernel.shape
    bh, bw = _rows_columns(block)
    # Zero input channels so the blocked channels are a multiple of 8, which tensor-core kernels
    # need (an image's 3 channels on 1x4 blocks: 12 -> 16); cuDNN otherwise pads in a kernel of its own.
    extra = -cin % (8 // np.gcd(8, bh * bw))
    if extra:
        inputs = ops.pad(inputs, [[0, 0], [0, 0], [0, 0], [0, extra]])
        kernel = ops.pad(kernel, [[0, 0], [0, 0], [0, extra], [0, 0]])
    batch, height, width, channels = inputs.shape
    out_h, out_w = height - kh + 1, width - kw + 1
    # Zero rows/columns at the bottom/right so whole blocks cover every output's inputs; the extra
    # outputs they make are cut off at the end.
    rows_out, cols_out = -(-out_h // bh), -(-out_w // bw)
    pad_h = bh * (rows_out + blocked_kernel_size(kh, bh) - 1) - height
    pad_w = bw * (cols_out + blocked_kernel_size(kw, bw) - 1) - width
    x = ops.pad(inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    rows_in, cols_in = (height + pad_h) // bh, (width + pad_w) // bw
    batch = -1 if batch is None else batch
    # With one-row blocks both transposes move only a size-1 axis: reshapes, no data movement.
    x = ops.reshape(x, (batch, rows_in, bh, cols_in, bw, channels))
    x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (batch, rows_in, cols_in, bh * bw * channels))
    y = ops.conv(x, blocked_kernel(kernel, (bh, bw)), strides=1, padding="valid")
    if bias is not None:  # blocked channels are ordered (row, column, channel)
        y = y + ops.tile(bias, [bh * bw])
    if activation is not None:
        y = activation(y)
    y = ops.reshape(y, (batch, rows_out, cols_out, bh, bw, cout))
    y = ops.reshape(ops.transpose(y, (0, 1, 3, 2, 4, 5)), (batch, rows_out * bh, cols_out * bw, cout))
    return y[:, :out_h, :out_w, :]
