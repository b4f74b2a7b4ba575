"""Which painting the export bakes: by default the one the model was trained for (its style.json).

Light on purpose (no Keras): `pipelines.export` resolves it before any work, so a wrong style ends in
one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from training.config import style_image_path, style_image_sha256, style_names
from training.errors import ConfigError, StylepipeError
from training.fileio import recorded_path
from training.loop.runs import STYLE_RECORD, read_style_record

OVERRIDE = "export.allow_style_mismatch=true"


def _readable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


def baked_style(cfg) -> dict:
    """{name, image, sha256, source, trained} of the painting the `baked` variant gets.

    source: `trained` (export.style and export.style_image unset: the model's own painting, from the
    style.json beside it), `export.style` (a configs/style name) or `export.style_image` (a path).
    A model trained for one painting refuses another, unless export.allow_style_mismatch=true; a model
    with no single trained style (Magenta's published model, a multi-style model) needs one named.
    """
    e = cfg.export
    model_path = Path(e.model_path)
    if not model_path.is_file():
        raise StylepipeError(f"{model_path}: no such model file (run `python -m pipelines.train` or "
                             "`python -m pipelines.import_magenta` first)")
    trained = read_style_record(model_path.parent)
    single = bool(trained and trained.get("single"))
    if e.get("style_image") is not None:
        if e.style is not None:
            raise ConfigError(f"export.style={e.style} and export.style_image={e.style_image}: set one (a configs/style "
                              "name, or a painting's path)")
        path, source, name = Path(e.style_image), "export.style_image", Path(e.style_image).stem
        if not _readable(path):
            what = "no such file" if not path.exists() else "not a readable file"
            raise ConfigError(f"export.style_image={path}: {what} (point it at a painting's image file)")
    elif e.style is not None:
        path, source, name = Path(style_image_path(e.style, cfg.paths)), "export.style", str(e.style)
    elif single:
        path, source, name = Path(trained["image"]), "trained", trained["name"]
        if not _readable(path):
            raise ConfigError(f"{model_path.parent / STYLE_RECORD}: the painting {model_path.name} was trained for, "
                              f"{path}, is gone: point export.style_image at a copy of it")
    else:
        why = (f"was trained for {len(trained.get('images', []))} paintings ({trained['name']})" if trained
               else f"records no trained style (no {STYLE_RECORD} beside it: an imported or older model)")
        raise ConfigError(f"export.style is not set and {model_path} {why}: name the painting to bake, "
                          f"export.style=NAME (one of {', '.join(style_names())}) or export.style_image=PATH")
    sha256 = style_image_sha256(path)
    if single and sha256 == trained.get("sha256"):
        name = trained["name"]  # the trained painting, however it was named here
    elif single and not e.get("allow_style_mismatch", False):
        given = f"{source}={e.style if source == 'export.style' else path}" if source != "trained" else str(path)
        what = ("is not the painting" if source != "trained"
                else "has changed since training (its sha256 is not the one recorded): it is not the painting")
        raise ConfigError(f"{given} {what} {model_path} was trained for ({trained['name']}, {trained['image']}): "
                          f"leave export.style and export.style_image unset to bake that one, or add {OVERRIDE} to bake "
                          "this one anyway")
    return {"name": name, "image": recorded_path(path), "sha256": sha256, "source": source,
            "trained": trained["name"] if trained else None}


def file_name(style_name: str) -> str:
    """A style's name as a part of artifact file names (letters, digits, `-`, `_` and `.` only)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", style_name).strip("_") or "style"
