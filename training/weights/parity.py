"""Numeric agreement between two outputs: the figures parity checks and quality tables report."""

from __future__ import annotations

import numpy as np


def psnr_db(a: np.ndarray, b: np.ndarray, peak: float = 1.0, *, border: int = 0) -> float:
    """Peak signal-to-noise ratio in dB; images in [0, 1] use peak 1.

    border > 0 leaves out that many pixels on every side of (H, W, ...) images.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
