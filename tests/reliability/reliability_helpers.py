"""What the reliability tests share: the real CLI in a subprocess, and files that break loaders."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import CACHE_DIR, CONTENT_DIR, REPO, TINY_TRAINING, tracking_uri

PHOTOS = sorted(CONTENT_DIR.glob("*.jpg"))
# A tiny training run: random loss-network weights (nothing to download), 64 px crops and style.
TINY = ["experiment=smoke", *TINY_TRAINING, "loss_network.weights=null", "data.heldout_count=1"]


UNTRACKED_STAGES = {"stylize"}  # stages without an MLflow run (and no mlflow config)


def run_stage(stage: str, args: list[str], tmp_path: Path, wrap: list[str] = (), **kwargs) -> subprocess.CompletedProcess:
    """`python -m pipelines.<stage> ...` from the repo root, writing only under tmp_path (`wrap`: a command
    that runs it, e.g. in its own mount namespace)."""
    tracked = stage not in UNTRACKED_STAGES and not any(a.startswith("mlflow.tracking_uri=") for a in args)
    cmd = [sys.executable, "-m", f"pipelines.{stage}", f"paths.output_dir={tmp_path / 'outputs'}",
           f"paths.cache_dir={CACHE_DIR}", *([f"mlflow.tracking_uri={tracking_uri(tmp_path)}"] if tracked else []),
           *args]
    if stage == "train":
        cmd.append("trainer.progress=false")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([*wrap, *cmd], cwd=REPO, env=env, capture_output=True, text=True, **kwargs)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16_rgb(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    h, w, _ = rgb.shape
    rows = b"".join(b"\0" + rgb[r].astype(">u2").tobytes() for r in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def damaged(data: bytes, marker: bytes, offset: int, junk: bytes) -> bytes:
    """`data` with `junk` written `offset` bytes after the first `marker`."""
    i = data.index(marker) + offset
    return data[:i] + junk + data[i + len(junk):]


# name -> the reason it is skipped for (data.min_side=32, data.max_pixels=50e6)
BAD_FILES = {
    "zero.jpg": "empty", "truncated.jpg": "truncated", "truncated.png": "truncated",
    "corrupt_huffman.jpg": "corrupt", "corrupt_header.jpg": "corrupt", "corrupt_data.png": "corrupt",
    "text.jpg": "not_an_image", "tiny.png": "too_small", "bomb.png": "too_large",
}
# Unusual but real images that must be used: name -> what they are.
ODD_GOOD_FILES = ("gray.png", "cmyk.jpg", "rgba.png", "gray16.png", "rgb16.png", "palette.png", "small_for_crop.png")


def write_bad_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = PHOTOS[0].read_bytes()
    photo = Image.open(PHOTOS[1]).convert("RGB").resize((96, 80))
    photo.save(folder / "source.png")
    png = (folder / "source.png").read_bytes()
    (folder / "source.png").unlink()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "corrupt_huffman.jpg").write_bytes(damaged(jpeg, b"\xff\xc4", 5, b"\xff" * 16))  # Huffman table
    (folder / "corrupt_header.jpg").write_bytes(damaged(jpeg, b"\xff\xdb", 2, b"\xff\xff"))  # quantisation table length
    (folder / "corrupt_data.png").write_bytes(damaged(png, b"IDAT", 20, bytes(20)))  # deflate stream and CRC
    (folder / "text.jpg").write_text("this is not a jpeg")
    Image.new("RGB", (20, 20), "red").save(folder / "tiny.png")
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # 81 Mpx in a few kB: a decompression bomb


def write_odd_good_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(PHOTOS[2]).convert("RGB").resize((96, 80))
    photo.convert("L").save(folder / "gray.png")
    photo.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257)).save(folder / "gray16.png")
    write_png16_rgb(folder / "rgb16.png", np.asarray(photo, np.uint16) * 257)
    photo.quantize(64).save(folder / "palette.png")
    photo.resize((56, 48)).save(folder / "small_for_crop.png")  # below the 64 px crop, above data.min_side=32
