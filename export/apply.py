"""`stylize(cfg) -> summary`: apply a trained or exported model to a photo, a folder of photos or a video.

It lives in export/ because it runs what the export stage wrote, verified through export/manifest.py
(the layers allow export to use training, not the other way round); `pipelines/stylize.py` is its
command line. Three kinds of model:

- `stylizer=baked` (default): the newest export's baked TFLite model (one style, fixed size);
- `stylizer=arbitrary style.image=painting.jpg`: the export's predictor + transfer TFLite pair;
- `stylizer=path/to/model.keras`: the stylizer itself, with `style.image` or the style it was trained on;
  (`stylizer=path/to/file.tflite` picks one exported file; the manifest beside it verifies it).
The key is `stylizer`, not `model`: `model=` picks a training architecture from configs/model/ in Hydra.

Any photo size: `size=model` resizes and centre-crops to the model's size, `size=resize` goes to the
model's size and back, `size=tile` stylizes overlapping model-size tiles at full resolution and blends
them with raised-cosine weights, so no tile edge shows (`size=auto`: tile when the photo is larger than
the model, else resize). `strength` mixes the painting's style bottleneck with the photo's own, as
Magenta does; a baked model takes it through its `serve_strength` signature (export/strength.py:
towards the neutral style of an average photo). Videos are decoded and encoded with PyAV (its wheels
ship FFmpeg), frame by frame.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.manifest import MANIFEST_NAME, read_manifest, verified_artifact
from training.errors import ConfigError, StylepipeError
from training.schema import check_config

log = logging.getLogger("stylepipe.stylize")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}  # as training/data/datasets.py reads
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm"}
MP4_AUDIO_CODECS = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}  # what `audio=copy` can put in an mp4 as it is
STYLE_IMAGE_SIZE = 256  # the predictor's input, as Magenta feeds it (short side to 256, centre crop)
FIX_EXPORT = "run `python -m pipelines.export` first, or give stylizer=path/to/model.keras"


class StylizeError(StylepipeError):
    """An input, output or model that `pipelines.stylize` cannot use."""


# ---------------------------------------------------------------- config


def validate_stylize_config(cfg) -> None:
    """Checks that need no model and no decoding (run before Hydra starts): each value's (training/schema.py),
    then the input and the painting."""
    check_config(cfg, "stylize", allow_other_keys=True)
    if cfg.input is None or str(cfg.input) == "":
        raise ConfigError("input is not set: python -m pipelines.stylize input=path/to/photo.jpg "
                          "(a photo, a folder of photos or a video)")
    if not Path(cfg.input).exists():
        raise StylizeError(f"{cfg.input}: no such file or folder (input= takes a photo, a folder of photos or a video)")
    if cfg.style.image is not None and not Path(cfg.style.image).is_file():
        raise StylizeError(f"style.image={cfg.style.image}: no such file (give a painting's image file)")
    if str(cfg.stylizer) == "arbitrary" and cfg.style.image is None:
        raise ConfigError("stylizer=arbitrary needs a painting: add style.image=path/to/painting.jpg")


# ---------------------------------------------------------------- models


@dataclass
class Model:
    """A stylizer of fixed-size images: `transfer_for(photo)` gives the call that stylizes tiles of that photo."""

    description: str
    style: str
    size: tuple[int, int]                                  # (height, width) of the images it takes
    transfer: Callable[[np.ndarray, np.ndarray | None], np.ndarray]  # (image HxWx3, bottleneck or None) -> image
    predict: Callable[[np.ndarray], np.ndarray] | None = None      # 256x256x3 -> (1, 1, 1, 100); None for baked
    style_bottleneck: np.ndarray | None = None
    strength: float | None = None

    def transfer_for(self, photo: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        bottleneck = self.style_bottleneck
        if self.predict is not None and self.strength is not None and self.strength < 1:
            # Magenta's interpolation: the painting's bottleneck mixed with the photo's own.
            own = self.predict(_style_input(photo))
            bottleneck = self.strength * self.style_bottleneck + (1 - self.strength) * own
        return lambda image: self.transfer(image, bottleneck)


def _style_input(image: np.ndarray) -> np.ndarray:
    from training.data.datasets import style_crop

    return style_crop(image, STYLE_IMAGE_SIZE)


def _signature_runner(path: Path, signature: str = "serve"):
    from ai_edge_litert.interpreter import Interpreter

    try:
        return Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1).get_signature_runner(signature)
    except (ValueError, RuntimeError) as err:
        raise StylizeError(f"{path}: not a TFLite model with a `{signature}` signature ({str(err).splitlines()[0]}); "
                           f"{FIX_EXPORT}") from None


def _baked_strength_runner(path: Path, strength: float):
    """The baked model's `strength` signature, as a call of one image at `strength`."""
    from ai_edge_litert.interpreter import Interpreter

    from export.strength import STRENGTH_INPUT, STRENGTH_SHAPE, STRENGTH_SIGNATURE

    if STRENGTH_SIGNATURE not in Interpreter(model_path=str(path)).get_signature_list():
        raise StylizeError(f"{path}: this baked model has no strength input (exported before it had one): run "
                           "`python -m pipelines.export` again, or leave strength out")
    runner = _signature_runner(path, STRENGTH_SIGNATURE)
    value = np.full(STRENGTH_SHAPE, strength, np.float32)
    return lambda x: runner(content_image=x[None].astype(np.float32), **{STRENGTH_INPUT: value})["stylized_image"][0]


def _manifests(export_dir: Path) -> list[Path]:
    """The export manifests in export_dir or one folder below it, newest first."""
    found = [p for p in (export_dir / MANIFEST_NAME, *export_dir.glob(f"*/{MANIFEST_NAME}")) if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _tflite_entries(manifest: dict, variant: str, model: str) -> list[dict]:
    entries = [a for a in manifest["artifacts"] if a["format"] == "tflite_fp16" and a["variant"] == variant
               and a["model"] == model and a.get("inputs")]
    return sorted(entries, key=lambda a: a["inputs"][0]["shape"][1] * a["inputs"][0]["shape"][2], reverse=True)


def _export_entry(cfg, variant: str) -> tuple[dict, dict, Path]:
    """(manifest, the largest tflite_fp16 transfer entry of `variant`, export folder) of the newest export."""
    export_dir = Path(cfg.export_dir)
    manifests = _manifests(export_dir)
    if not manifests:
        raise StylizeError(f"{export_dir}: no export found (no {MANIFEST_NAME}); {FIX_EXPORT}")
    for path in manifests:
        manifest = read_manifest(path)
        entries = _tflite_entries(manifest, variant, "transfer")
        if entries:
            return manifest, entries[0], path.parent
    raise StylizeError(f"{manifests[0]}: this export has no {variant} TFLite model (export.formats without tflite_fp16); "
                       f"export with it, or give stylizer=path/to/model.keras")


def _shape_hw(entry: dict) -> tuple[int, int]:
    shape = next(i["shape"] for i in entry["inputs"] if i["name"] == "content_image")
    return int(shape[1]), int(shape[2])


def _tflite_model(cfg, manifest: dict, entry: dict, export_dir: Path) -> Model:
    path = verified_artifact(entry, export_dir)  # nothing is run that the export did not write
    runner = _signature_runner(path)
    size = _shape_hw(entry)
    if entry["variant"] == "baked":
        style = entry.get("style") or manifest.get("style") or "baked"
        if cfg.strength is not None:
            at_strength = _baked_strength_runner(path, float(cfg.strength))
            return Model(f"{path} (baked TFLite, strength {float(cfg.strength):g})", style, size,
                         lambda x, _b: at_strength(x), strength=float(cfg.strength))
        return Model(f"{path} (baked TFLite)", style, size,
                     lambda x, _b: runner(content_image=x[None].astype(np.float32))["stylized_image"][0])
    predictors = _tflite_entries(manifest, "arbitrary", "predictor")
    if not predictors:
        raise StylizeError(f"{export_dir / MANIFEST_NAME}: this export has no arbitrary predictor TFLite model; "
                           "export with export.arbitrary_formats=[tflite_fp16]")
    predictor = _signature_runner(verified_artifact(predictors[0], export_dir))
    predict = lambda image: predictor(style_image=image[None].astype(np.float32))["style_bottleneck"]  # noqa: E731
    transfer = lambda x, b: runner(content_image=x[None].astype(np.float32),  # noqa: E731
                                   style_bottleneck=np.asarray(b, np.float32))["stylized_image"][0]
    return _with_painting(cfg, Model(f"{path} + {predictors[0]['path']} (arbitrary TFLite)", "", size, transfer, predict))


def _with_painting(cfg, model: Model, painting=None, style_name: str | None = None) -> Model:
    from training.data.datasets import load_painting

    painting = painting or cfg.style.image
    image = load_painting(painting)
    model.style = style_name or Path(painting).stem
    model.style_bottleneck = np.asarray(model.predict(_style_input(image)), np.float32)
    model.strength = None if cfg.strength is None else float(cfg.strength)
    return model


def _keras_model(cfg, path: Path) -> Model:
    import keras

    from export.stage import training_metadata
    from training.config import style_image_path
    from training.network.stylizer import load_stylizer

    painting, style_name = cfg.style.image, None
    if painting is None:  # the style it was trained on, as the training stage recorded it
        style_name = training_metadata(path.parent).get("style")
        if not style_name:
            raise StylizeError(f"{path}: the style it was trained on is not recorded (no metrics.json beside it); "
                               "give the painting with style.image=path/to/painting.jpg")
        try:
            painting = style_image_path(style_name, cfg.paths)
        except ConfigError:
            raise StylizeError(f"{path}: it was trained on style {style_name!r}, which is not a single-painting config in "
                               "configs/style/; give the painting with style.image=path/to/painting.jpg") from None
    stylizer = load_stylizer(path)
    predictor, transformer = stylizer.get_layer("style_predictor"), stylizer.get_layer("transformer")
    predict = lambda image: keras.ops.convert_to_numpy(predictor(image[None], training=False))  # noqa: E731
    transfer = lambda x, b: keras.ops.convert_to_numpy(transformer([x[None], b], training=False))[0]  # noqa: E731
    return _with_painting(cfg, Model(f"{path} (Keras)", "", (cfg.tile.size, cfg.tile.size), transfer, predict),
                          painting, style_name)


def load_model(cfg) -> Model:
    """The model `cfg.stylizer` names, its files verified against their export manifest before they are run."""
    name = str(cfg.stylizer)
    if name in ("baked", "arbitrary"):
        manifest, entry, export_dir = _export_entry(cfg, name)
        return _tflite_model(cfg, manifest, entry, export_dir)
    path = Path(name)
    if not path.is_file():
        raise StylizeError(f"stylizer={name}: no such file (stylizer= takes baked, arbitrary, a .tflite file of an export "
                           "or a .keras stylizer)")
    if path.suffix == ".keras":
        return _keras_model(cfg, path)
    if path.suffix != ".tflite":
        raise StylizeError(f"stylizer={name}: not a model stylize runs (baked, arbitrary, a .tflite file of an export "
                           "or a .keras stylizer)")
    manifest = read_manifest(path.parent / MANIFEST_NAME)
    entry = next((a for a in manifest["artifacts"] if a["path"] == path.name and a["model"] == "transfer"), None)
    if entry is None:
        raise StylizeError(f"stylizer={name}: not a transfer model named by {path.parent / MANIFEST_NAME}; {FIX_EXPORT}")
    if entry["variant"] == "arbitrary" and cfg.style.image is None:
        raise ConfigError(f"stylizer={name} is an arbitrary model: add style.image=path/to/painting.jpg")
    return _tflite_model(cfg, manifest, entry, path.parent)


# ---------------------------------------------------------------- any size


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    channels = [Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode="F") for c in range(3)]
    resized = [np.asarray(c.resize((width, height), Image.Resampling.BICUBIC)) for c in channels]
    return np.clip(np.stack(resized, axis=-1), 0.0, 1.0)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts of tiles covering [0, length), neighbours sharing at least `overlap` pixels."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    count = max(count, 2)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp(width: int) -> np.ndarray:
    """Raised-cosine weights rising from ~0 to ~1 over `width` pixels; a ramp and its mirror sum to 1."""
    return 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)


def _window(starts: list[int], tile: int) -> list[np.ndarray]:
    """Per tile along one axis: 1 inside, a raised-cosine ramp over what it shares with each neighbour."""
    windows = []
    for i, start in enumerate(starts):
        w = np.ones(tile, np.float32)
        if i > 0 and (shared := starts[i - 1] + tile - start) > 0:
            w[:shared] = _ramp(shared)
        if i < len(starts) - 1 and (shared := start + tile - starts[i + 1]) > 0:
            w[tile - shared:] = np.minimum(w[tile - shared:], _ramp(shared)[::-1])
        windows.append(w)
    return windows


def stylize_tiled(image: np.ndarray, transfer: Callable[[np.ndarray], np.ndarray], tile_hw: tuple[int, int],
                  overlap: float, progress: bool = True) -> np.ndarray:
    """Stylize an image at least as large as a tile, tile by tile, blending the overlaps without seams.

    Each tile is normalised by the network's instance norms on its own, so neighbouring tiles differ a
    little in colour and contrast; blending them over a generous overlap turns every tile edge into a
    gradual transition instead of a line.
    """
    from tqdm.auto import tqdm

    (height, width), (th, tw) = image.shape[:2], tile_hw
    ys = tile_starts(height, th, round(th * overlap))
    xs = tile_starts(width, tw, round(tw * overlap))
    wy, wx = _window(ys, th), _window(xs, tw)
    out = np.zeros((height, width, 3), np.float32)
    weight = np.zeros((height, width, 1), np.float32)
    with tqdm(total=len(ys) * len(xs), desc="tiles", unit="tile", leave=False, disable=not progress) as bar:
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                w = (wy[i][:, None] * wx[j][None, :])[..., None]
                out[y:y + th, x:x + tw] += w * transfer(image[y:y + th, x:x + tw])
                weight[y:y + th, x:x + tw] += w
                bar.update()
    return out / weight


def stylize_image(image: np.ndarray, model: Model, size: str, overlap: float, progress: bool = True) -> np.ndarray:
    """One photo (H, W, 3) in [0, 1] stylized; the result has the photo's size except with size=model."""
    from training.data.datasets import fit_crop

    (h, w), (height, width) = model.size, image.shape[:2]
    transfer = model.transfer_for(image)
    if size == "auto":
        size = "tile" if height > h or width > w else "resize"
    if size == "model":
        return np.clip(transfer(fit_crop(image, h, w)), 0, 1)
    if size == "resize":
        return _resize(np.clip(transfer(_resize(image, h, w)), 0, 1), height, width)
    scale = max(h / height, w / width, 1.0)  # a photo smaller than a tile is tiled at a size that holds one
    big = _resize(image, max(h, math.ceil(height * scale)), max(w, math.ceil(width * scale)))
    return _resize(np.clip(stylize_tiled(big, transfer, (h, w), overlap, progress), 0, 1), height, width)


# ---------------------------------------------------------------- photos and videos


def _save_photo(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    from training.data.datasets import to_uint8
    from training.fileio import atomic_write_bytes

    buffer = io.BytesIO()
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _av_error(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def stylize_video(source: Path, target: Path, model: Model, cfg) -> dict:
    """Every frame stylized, at the same frame rate, encoded as H.264 in an mp4; audio copied or dropped.

    A rotated video (a phone's display matrix) is stylized upright and written upright, with no rotation.
    """
    import av
    from tqdm.auto import tqdm

    try:
        reader = av.open(str(source))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise StylizeError(f"{source}: not a readable video ({_av_error(err)})") from None
    import training.data.datasets  # noqa: F401 - imports TensorFlow: done before the first frame, so the frames/s bar is true

    with reader:
        if not reader.streams.video:
            raise StylizeError(f"{source}: no video stream in this file")
        video = reader.streams.video[0]
        rate = video.average_rate or video.guessed_rate or 25
        audio = reader.streams.audio[0] if reader.streams.audio else None
        if audio is not None and cfg.video.audio == "copy" and audio.codec_context.name not in MP4_AUDIO_CODECS:
            log.warning("%s: its %s audio cannot go into an mp4 as it is: dropped", source, audio.codec_context.name)
            audio = None
        if cfg.video.audio == "drop":
            audio = None
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".mp4")
        os.close(fd)
        frames, summary = 0, {}
        try:
            with av.open(tmp, "w", format="mp4") as writer:
                encoder = None
                audio_out = writer.add_stream_from_template(audio) if audio is not None else None
                streams = [video] + ([audio] if audio is not None else [])
                with tqdm(total=video.frames or None, desc=source.name, unit="frame") as bar:
                    for packet in reader.demux(*streams):
                        if packet.stream.type == "audio":
                            if packet.dts is not None:
                                packet.stream = audio_out
                                writer.mux(packet)
                            continue
                        for frame in packet.decode():
                            rgb = frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0
                            if turns := round((frame.rotation or 0) / 90) % 4:  # a phone's portrait video: upright pixels out
                                rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))  # rotation is counter-clockwise
                            styled = stylize_image(rgb, model, cfg.size, cfg.tile.overlap, progress=False)
                            if encoder is None:
                                encoder = _video_encoder(writer, rate, styled.shape, cfg.video.crf)
                            out = av.VideoFrame.from_ndarray(_even(styled), format="rgb24")
                            out.pts = frames
                            writer.mux(encoder.encode(out))
                            frames += 1
                            bar.update()
                    if encoder is None:
                        raise StylizeError(f"{source}: no frame could be decoded")
                    writer.mux(encoder.encode(None))
                sound = "copied" if audio_out is not None else "dropped" if reader.streams.audio else "none"
                summary = {"frames": frames, "fps": float(rate), "width": encoder.width, "height": encoder.height,
                           "audio": sound}
            os.replace(tmp, target)
        except av.FFmpegError as err:
            raise StylizeError(f"{source}: the video cannot be decoded ({_av_error(err)}) after {frames} frames") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
    return summary


def _even(image: np.ndarray) -> np.ndarray:
    """uint8 frame cut to even sides (H.264 in 4:2:0 needs them)."""
    from training.data.datasets import to_uint8

    h, w = image.shape[:2]
    return np.ascontiguousarray(to_uint8(image[: h - h % 2, : w - w % 2]))


def _video_encoder(writer, rate, shape, crf: int):
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "h264"
    stream = writer.add_stream(codec, rate=rate, options={"crf": str(crf)})
    stream.height, stream.width = shape[0] - shape[0] % 2, shape[1] - shape[1] % 2
    stream.pix_fmt = "yuv420p"
    return stream


# ---------------------------------------------------------------- the command


@dataclass
class Job:
    source: Path
    target: Path
    video: bool


@dataclass
class Summary:
    model: str
    style: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    videos: dict = field(default_factory=dict)


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "photo" if suffix in IMAGE_SUFFIXES else None


def _target(source: Path, output: Path, style: str, in_folder: bool) -> Path:
    video = _kind(source) == "video"
    suffix = ".mp4" if video else ".jpg" if source.suffix.lower() in (".jpg", ".jpeg") else ".png"
    if not in_folder and output.suffix:
        wanted = {".mp4"} if video else {".jpg", ".jpeg", ".png"}
        if output.suffix.lower() not in wanted:
            raise StylizeError(f"output={output}: a {'video' if video else 'photo'} is written as "
                               f"{' or '.join(sorted(wanted))}; give such a file name or a folder")
        return output
    if in_folder and output.suffix:
        raise StylizeError(f"output={output}: a folder of inputs needs an output folder, not a file name")
    return output / f"{source.stem}_{style}{suffix}"


def plan(cfg, style: str) -> list[Job]:
    source, output = Path(cfg.input), Path(cfg.output)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and _kind(p))
        if not files:
            raise StylizeError(f"{source}: no photos or videos in this folder "
                               f"({', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})")
        jobs = [Job(p, _target(p, output, style, True), _kind(p) == "video") for p in files]
    else:
        jobs = [Job(source, _target(source, output, style, False), _kind(source) == "video")]
    for job in jobs:
        if job.target.resolve() == job.source.resolve():
            raise StylizeError(f"output={job.target}: it is the input itself; give another file name or folder")
    return jobs


def stylize(cfg) -> dict:
    """The stylize command; returns what it wrote: {model, style, written, skipped, videos}."""
    from tqdm.auto import tqdm

    validate_stylize_config(cfg)
    model = load_model(cfg)
    jobs = plan(cfg, model.style)
    summary = Summary(model.description, model.style)
    log.info("stylizing %d file(s) with %s, style %s", len(jobs), model.description, model.style)
    folder = len(jobs) > 1 or Path(cfg.input).is_dir()
    photos = [j for j in jobs if not j.video]
    with tqdm(total=len(photos), desc="photos", unit="photo", disable=len(photos) < 2) as bar:
        for job in photos:
            from training.data.datasets import DataError, load_image  # TensorFlow comes with it: not before it is needed

            try:
                image = load_image(job.source)
            except DataError as err:
                if not folder:
                    raise StylizeError(f"{err}; input= takes a readable photo, a folder of photos or a video") from None
                log.warning("skipped %s", err)
                summary.skipped.append(str(err))
                bar.update()
                continue
            _save_photo(stylize_image(image, model, cfg.size, cfg.tile.overlap, progress=not folder), job.target)
            summary.written.append(str(job.target))
            bar.update()
    for job in (j for j in jobs if j.video):
        try:
            summary.videos[str(job.target)] = stylize_video(job.source, job.target, model, cfg)
        except StylizeError as err:
            if not folder:
                raise
            log.warning("skipped %s", err)
            summary.skipped.append(str(err))
            continue
        summary.written.append(str(job.target))
    if not summary.written:
        raise StylizeError(f"{cfg.input}: none of its {len(jobs)} file(s) could be stylized: " + "; ".join(summary.skipped[:3]))
    return {"model": summary.model, "style": summary.style, "written": summary.written, "skipped": summary.skipped,
            "videos": summary.videos}
