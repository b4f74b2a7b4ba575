"""`python -m pipelines.stylize`: photos, a 4032x3024 photo in seam-free tiles, an mp4, the three kinds of
model, strength, and a one-line error for each input or export it cannot use.

One real export of Magenta's published model (TFLite fp16, 128x128, baked and arbitrary) serves every test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from helpers import CACHE_DIR, CONTENT_DIR, REPO, STYLE_DIR, tracking_uri
from reliability.reliability_helpers import error_lines, run_stage

SIZE = 128
STARRY = STYLE_DIR / "starry_night.jpg"


def compose(name, tmp_path, overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose(name, overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path / 'outputs'}",
                                              f"paths.cache_dir={CACHE_DIR}", *overrides])


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, published_model_path):
    from export.stage import export

    tmp = tmp_path_factory.mktemp("stylize-export")
    export(compose("export", tmp, [f"mlflow.tracking_uri={tracking_uri(tmp)}",
                                   f"export.model_path={published_model_path}", f"export.sizes=[[{SIZE},{SIZE}]]",
                                   "export.parity_photos=1", "export.formats=[tflite_fp16]",
                                   "export.arbitrary_formats=[tflite_fp16]", "export.style=starry"]))
    return tmp / "outputs" / "export"


def stylize(tmp_path, export_dir, overrides):
    from export.apply import stylize as run

    return run(compose("stylize", tmp_path, [f"export_dir={export_dir}", *overrides]))


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def seam_ratio(image: np.ndarray, tile: int, overlap: float) -> float:
    """Mean absolute gradient across the tiles' edges and the middles of their overlaps, over the mean elsewhere."""
    from export.apply import tile_starts

    ratios = []
    for axis, length in ((0, image.shape[0]), (1, image.shape[1])):
        starts = tile_starts(length, tile, round(tile * overlap))
        lines = {s for s in starts[1:]} | {s + tile for s in starts[:-1]}
        lines |= {(a + tile + b) // 2 for a, b in zip(starts, starts[1:])}  # where neighbours weigh the same
        gradient = np.abs(np.diff(image, axis=axis)).mean(axis=(1 - axis, 2))  # gradient[i]: between i and i+1
        at_seams = gradient[[i - 1 for i in sorted(lines) if 0 < i < length]]
        elsewhere = np.delete(gradient, [i - 1 for i in lines if 0 < i < length])
        ratios.append(at_seams.mean() / elsewhere.mean())
    return max(ratios)


@pytest.mark.slow
def test_a_photo_through_the_cli_with_the_newest_baked_export(tmp_path, export_dir):
    photo = CONTENT_DIR / "chelsea.jpg"
    result = run_stage("stylize", [f"input={photo}", f"export_dir={export_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "outputs" / "stylized" / "chelsea_starry.jpg"
    assert f"wrote {out}" in result.stdout
    assert Image.open(out).size == Image.open(photo).size
    original, styled = read(photo), read(out)
    assert np.abs(styled - original).mean() > 0.08  # painted, not copied


@pytest.mark.slow
def test_a_4032x3024_phone_photo_is_tiled_without_seams(tmp_path, export_dir):
    from export.apply import load_model, stylize_tiled

    phone = tmp_path / "phone.jpg"
    Image.open(CONTENT_DIR / "chelsea.jpg").convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC).save(phone, quality=92)
    summary = stylize(tmp_path, export_dir, [f"input={phone}", f"output={tmp_path / 'phone_starry.png'}"])
    assert summary["written"] == [str(tmp_path / "phone_starry.png")]
    styled = read(tmp_path / "phone_starry.png")
    assert styled.shape == (3024, 4032, 3)
    overlap = 0.25  # configs/stylize.yaml's tile.overlap
    assert seam_ratio(styled, SIZE, overlap) < 1.1
    # The measure sees seams where they are: the same tiles without overlap (hard edges) on a corner of the photo.
    corner = read(phone)[:768, :1024]
    cfg = compose("stylize", tmp_path, [f"export_dir={export_dir}", f"input={phone}"])
    model = load_model(cfg)
    hard = np.clip(stylize_tiled(corner, model.transfer_for(corner), model.size, 0.0, progress=False), 0, 1)
    assert seam_ratio(hard, SIZE, 0.0) > 2


def write_clip(path, frames=8, fps=12, size=(160, 120)):
    """A short H.264 mp4 of sample photos with a sine-tone AAC sound track."""
    photos = sorted(CONTENT_DIR.glob("*.jpg"))[:4]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        for i in range(frames):
            image = np.asarray(Image.open(photos[i % len(photos)]).convert("RGB").resize(size))
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(16000 * frames // fps) / 16000)).astype(np.float32)[None]
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp", layout="mono")
            frame.sample_rate = 16000
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))


def test_an_mp4_keeps_its_frames_size_rate_and_sound(tmp_path, export_dir):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    result = run_stage("stylize", [f"input={clip}", f"export_dir={export_dir}", f"output={tmp_path / 'styled.mp4'}"],
                       tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "frame/s" in result.stderr  # the progress bar's rate
    assert "8 frames at 12 fps, audio copied" in result.stdout
    with av.open(str(tmp_path / "styled.mp4")) as styled, av.open(str(clip)) as original:
        stream = styled.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (160, 120, 12)
        assert [s.codec_context.name for s in styled.streams.audio] == ["aac"]
        frames = [f.to_ndarray(format="rgb24") for f in styled.decode(video=0)]
        before = [f.to_ndarray(format="rgb24") for f in original.decode(video=0)]
    assert len(frames) == 8
    assert all(np.abs(a.astype(float) - b).mean() > 15 for a, b in zip(frames, before))


def test_a_phones_rotated_video_comes_out_upright(tmp_path, export_dir):
    clip = tmp_path / "portrait.mp4"
    stored = np.zeros((120, 160, 3), np.uint8)
    stored[:60] = 255  # stored landscape, white on top: upright (turned clockwise) the white is on the right
    with av.open(str(clip), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        video.set_display_rotation(-90)  # as phones store portrait video
        for _ in range(3):
            out.mux(video.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        out.mux(video.encode(None))
    summary = stylize(tmp_path, export_dir, [f"input={clip}", f"output={tmp_path / 'upright.mp4'}"])
    assert summary["videos"][str(tmp_path / "upright.mp4")]["audio"] == "none"
    with av.open(str(tmp_path / "upright.mp4")) as styled:
        frames = list(styled.decode(video=0))
    assert len(frames) == 3 and all(f.rotation == 0 for f in frames)
    image = frames[0].to_ndarray(format="rgb24").astype(float)
    assert image.shape == (160, 120, 3)
    assert image[:, 60:].mean() > image[:, :60].mean() + 10  # turned the wrong way, the left would be brighter


def test_arbitrary_pair_and_keras_model_paint_what_the_baked_model_does(tmp_path, export_dir, published_model_path):
    photo = CONTENT_DIR / "chelsea.jpg"
    common = [f"input={photo}", "size=model"]
    baked = stylize(tmp_path, export_dir, [*common, f"output={tmp_path / 'baked.png'}"])
    arbitrary = stylize(tmp_path, export_dir, [*common, "stylizer=arbitrary", f"style.image={STARRY}",
                                               f"output={tmp_path / 'arbitrary.png'}"])
    keras = stylize(tmp_path, export_dir, [*common, f"stylizer={published_model_path}", f"style.image={STARRY}",
                                           f"tile.size={SIZE}", f"output={tmp_path / 'keras.png'}"])
    assert (baked["style"], arbitrary["style"], keras["style"]) == ("starry", "starry_night", "starry_night")
    reference = read(tmp_path / "baked.png")
    assert reference.shape == (SIZE, SIZE, 3)
    assert psnr(read(tmp_path / "arbitrary.png"), reference) > 35
    assert psnr(read(tmp_path / "keras.png"), reference) > 35


def test_a_keras_stylizer_uses_the_style_it_was_trained_on(tmp_path, export_dir, published_model_path):
    from export.apply import StylizeError

    trained = tmp_path / "train"
    trained.mkdir()
    shutil.copy(published_model_path, trained / "model.keras")
    common = [f"input={CONTENT_DIR / 'chelsea.jpg'}", "size=model", f"tile.size={SIZE}", f"stylizer={trained / 'model.keras'}"]
    with pytest.raises(StylizeError, match="the style it was trained on is not recorded .* style.image="):
        stylize(tmp_path, export_dir, common)
    (trained / "metrics.json").write_text('{"style": "starry"}')  # as the training stage writes it
    summary = stylize(tmp_path, export_dir, [*common, f"output={tmp_path / 'trained.png'}"])
    stylize(tmp_path, export_dir, [*common, f"style.image={STARRY}", f"output={tmp_path / 'given.png'}"])
    assert summary["style"] == "starry"
    assert np.array_equal(read(tmp_path / "trained.png"), read(tmp_path / "given.png"))


def test_a_folder_skips_what_it_cannot_read_and_names_it(tmp_path, export_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.jpg", "astronaut.png"):
        Image.open(CONTENT_DIR / "chelsea.jpg").convert("RGB").resize((200, 150)).save(folder / name)
    (folder / "broken.jpg").write_text("not a photo")
    (folder / "notes.txt").write_text("not an input")
    summary = stylize(tmp_path, export_dir, [f"input={folder}", f"output={tmp_path / 'styled'}"])
    assert sorted(Path(p).name for p in summary["written"]) == ["astronaut_starry.png", "chelsea_starry.jpg"]
    assert len(summary["skipped"]) == 1 and "broken.jpg: not an image" in summary["skipped"][0]
    assert Image.open(tmp_path / "styled" / "astronaut_starry.png").size == (200, 150)


def test_strength_mixes_the_paintings_style_with_the_photos_own(tmp_path, export_dir):
    photo = CONTENT_DIR / "chelsea.jpg"
    outputs = {}
    for strength in (None, 1.0, 0.5, 0.0):
        out = tmp_path / f"{strength}.png"
        stylize(tmp_path, export_dir, [f"input={photo}", "size=model", "stylizer=arbitrary", f"style.image={STARRY}",
                                       f"strength={'null' if strength is None else strength}", f"output={out}"])
        outputs[strength] = read(out)
    full = outputs[1.0]
    assert np.array_equal(outputs[None], full)
    half, none = (np.abs(outputs[s] - full).mean() for s in (0.5, 0.0))
    assert 0.01 < half < none  # less of the painting the lower the strength


@pytest.mark.parametrize("case, expected", [
    ("missing_input", "no such file or folder"),
    ("unreadable_photo", "not an image"),
    ("unreadable_video", "not a readable video"),
    ("no_export", "no export found"),
    ("changed_export", "differs from the one exported"),
    ("strength_out_of_range", "strength=1.5 is not allowed: a number from 0"),
    ("model_key", "stylize takes the model as stylizer=arbitrary"),
])
@pytest.mark.slow
def test_each_unusable_input_or_export_is_one_line(tmp_path, export_dir, case, expected):
    photo, folder = CONTENT_DIR / "chelsea.jpg", export_dir
    args = []
    if case == "missing_input":
        photo = tmp_path / "nope.jpg"
    elif case == "unreadable_photo":
        photo = tmp_path / "photo.jpg"
        photo.write_text("not a photo")
    elif case == "unreadable_video":
        photo = tmp_path / "clip.mp4"
        photo.write_text("not a video")
    elif case == "no_export":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif case == "changed_export":
        folder = tmp_path / "export"
        shutil.copytree(export_dir, folder)
        model = folder / f"baked_starry_{SIZE}x{SIZE}.tflite"
        model.write_bytes(model.read_bytes()[:-4] + b"\0\0\0\0")
    elif case == "strength_out_of_range":
        args = ["strength=1.5"]
    elif case == "model_key":
        args = ["model=arbitrary"]
    result = run_stage("stylize", [f"input={photo}", f"export_dir={folder}", *args], tmp_path)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert str(photo if case.endswith(("input", "photo", "video")) else folder) in lines[0] or case in ("strength_out_of_range", "model_key")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs" / "stylized").exists()
