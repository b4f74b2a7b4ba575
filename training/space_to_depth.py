"""Stride-1 convolutions with few channels, computed on space-to-depth blocks (training speed only).

cuDNN runs a convolution with 3 or 8 channels far below the tensor cores' rate: on an H200 the
transfer network's two 9x9 convolutions (3 -> 8 and 8 -> 3 channels at alpha 0.25) took about a
third of the lite model's whole training step at 6 TFLOP/s (docs/benchmarks.md). The same
convolution on b x b pixel blocks has b*b times the channels: a 9x9 kernel over 3 channels is a
3x3 kernel over 48 channels making 128 (b = 4). It does about 1.8x the multiply-adds, on shapes
the tensor cores run well. The result is the same convolution (up to float summation order).

Nothing is stored this way: the kernel variable keeps its own shape and Magenta name, and the
blocked kernel is rebuilt from it inside each step with constant 0/1 placement tensors, so
gradients reach the real weights. Export and inference use the plain convolution.
"""

from __future__ import annotations

import numpy as np
from keras import ops


def block_for(kernel_size: int) -> int:
    """Block side for a kernel side: 4 for 9x9 (-> 3x3 on 4x4 blocks), 2 for 3x3 (-> 2x2 on 2x2 blocks)."""
    return 4 if kernel_size >= 5 else 2


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


def blocked_kernel(kernel, block: int):
    """(kh, kw, cin, cout) -> (kh', kw', b*b*cin, b*b*cout), channels ordered (row, column, channel)."""
    kh, kw, cin, cout = kernel.shape
    rows = ops.convert_to_tensor(_placement(kh, block), dtype=kernel.dtype)
    cols = ops.convert_to_tensor(_placement(kw, block), dtype=kernel.dtype)
    # Every entry of the result is one kernel weight or zero: exact in any dtype.
    blocked = ops.einsum("aprk,bqsl,klco->abpqcrso", rows, cols, kernel)
    return ops.reshape(blocked, (rows.shape[0], cols.shape[0], block * block * cin, block * block * cout))


def conv2d_space_to_depth(inputs, kernel, block: int):
    """VALID, stride-1 `ops.conv(inputs, kernel)` (NHWC) computed on block x block pixel blocks."""
    kh, kw, _, cout = kernel.shape
    batch, height, width, channels = inputs.shape
    out_h, out_w = height - kh + 1, width - kw + 1
    # Zero rows/columns at the bottom/right so whole blocks cover every output's inputs; the extra
    # outputs they make are cut off at the end.
    rows_out, cols_out = -(-out_h // block), -(-out_w // block)
    pad_h = block * (rows_out + blocked_kernel_size(kh, block) - 1) - height
    pad_w = block * (cols_out + blocked_kernel_size(kw, block) - 1) - width
    x = ops.pad(inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    rows_in, cols_in = (height + pad_h) // block, (width + pad_w) // block
    batch = -1 if batch is None else batch
    x = ops.reshape(x, (batch, rows_in, block, cols_in, block, channels))
    x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (batch, rows_in, cols_in, block * block * channels))
    y = ops.conv(x, blocked_kernel(kernel, block), strides=1, padding="valid")
    y = ops.reshape(y, (batch, rows_out, cols_out, block, block, cout))
    y = ops.reshape(ops.transpose(y, (0, 1, 3, 2, 4, 5)), (batch, rows_out * block, cols_out * block, cout))
    return y[:, :out_h, :out_w, :]
