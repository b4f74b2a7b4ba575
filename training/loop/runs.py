"""Which folder a training run writes to: its own, never another run's.

A run is its fingerprint (config and data, not the step count or learning rate). A folder holding
the same run is resumed; a folder holding another run is left as it is, and this run writes to
`paths.runs_dir/<run_name>-<fingerprint hash>` instead. Nothing here deletes or overwrites a file.

Light on purpose (no Keras): `pipelines.cli.preflight` decides the folder before Hydra writes its
.hydra/ files there.
"""

from __future__ import annotations

import hashlib
import json
from itertools import chain, count
from pathlib import Path

RUN_RECORD = "run.json"  # the fingerprint of the run that writes a folder


def fingerprint(cfg) -> dict:
    """What must match for a folder's checkpoints to be resumed by this run (JSON values only)."""
    return {
        "model": cfg.model.name,
        "alpha": float(cfg.model.alpha),
        "backbone": cfg.backbone.name,
        "style": cfg.style.name,
        "style_strength": float(cfg.style.strength),
        "texture_size": int(cfg.style.texture_size),
        "init": cfg.init.name if cfg.get("init") else None,
        "image_size": int(cfg.data.image_size),
        "batch_size": int(cfg.trainer.batch_size),
        "seed": int(cfg.seed),
        "data": data_fingerprint(cfg),
        # Only with a teacher: runs without one keep the fingerprints (and folders) they had.
        **({"teacher": teacher_fingerprint(cfg.teacher)} if cfg.get("teacher") else {}),
        # Only when it decays: Adam's state then has no learning-rate variable (a constant run's checkpoint has one).
        **({"learning_rate_schedule": cfg.trainer.learning_rate_schedule}
           if cfg.trainer.learning_rate_schedule != "constant" else {}),
    }


def teacher_fingerprint(teacher_cfg) -> dict:
    """The distillation term a run trains with: its teacher and weight (the teacher's file by name)."""
    return {"name": teacher_cfg.name, "model_path": str(teacher_cfg.get("model_path")),
            "weight": float(teacher_cfg.weight), "loss": teacher_cfg.loss,
            # Only when not the default: runs against the painting, without a contrast term, keep the fingerprints
            # (and folders) they had.
            **({"style_target": teacher_cfg.style_target} if teacher_cfg.get("style_target", "painting") != "painting" else {}),
            **({"contrast_weight": float(teacher_cfg.contrast_weight)} if teacher_cfg.get("contrast_weight") else {})}


def data_fingerprint(cfg) -> dict:
    """The photos and paintings a run trains on, by file names and sizes (reading them would take
    minutes on a large dataset), and the settings that pick crops and the held-out photos from them."""
    d = cfg.data
    if d.source == "tfds":
        content = {"tfds": d.tfds.name, "splits": [d.tfds.train_split, d.tfds.heldout_split]}
    else:
        content = _files_digest(d.content_dir)
    style_files = [Path(p) for p in (cfg.style.get("images") or {}).values() if p]
    return {
        "content": content,
        "styles": _files_digest(cfg.style.get("dir"), style_files),
        "resize_short_side": [int(v) for v in d.resize_short_side],
        "style_size": int(d.style_size),
        "heldout_count": int(d.heldout_count),
        "seed": int(d.seed),
    }


def _files_digest(folder, files: list[Path] = ()) -> str | None:
    """A short hash of every file under `folder` and of `files` (relative name and size); None: none set."""
    entries = []
    if folder is not None and Path(folder).is_dir():
        entries += [(p.relative_to(folder).as_posix(), p.stat().st_size)
                    for p in sorted(Path(folder).rglob("*")) if p.is_file()]
    entries += [(p.name, p.stat().st_size if p.is_file() else None) for p in files]
    if folder is None and not files:
        return None
    return short_hash(entries)


def short_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def folder_run(folder: Path) -> dict | None:
    """The fingerprint of the run that wrote `folder`; None: no run's outputs are there (Hydra's
    .hydra/ and train.log alone do not count); {}: outputs without a readable record (another run)."""
    record = folder / RUN_RECORD
    if record.is_file():
        try:
            return json.loads(record.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
    outputs = [folder / "model.keras", folder / "metrics.json", *(folder / "checkpoints").glob("ckpt-*.npz")]
    return {} if any(p.exists() for p in outputs) else None


def run_folder(cfg) -> tuple[Path, str | None]:
    """Where this run writes, and a log line when that is not `paths.train_dir`.

    paths.train_dir when it is free or holds this run (resumed); otherwise this run's own folder
    `paths.runs_dir/<run_name>-<fingerprint hash>`, resumed in turn. trainer.resume=false starts
    over in the first free one of them (a `-2`, `-3`... suffix), never by deleting a run.
    """
    wanted = Path(cfg.paths.train_dir)
    mine = fingerprint(cfg)
    own = Path(cfg.paths.runs_dir) / f"{cfg.run_name}-{short_hash(mine)}"
    same = [f for f in (wanted, own) if cfg.trainer.resume and folder_run(f) == mine]
    candidates = chain((wanted, own), (own.with_name(f"{own.name}-{n}") for n in count(2)))
    folder = same[0] if same else next(f for f in candidates if folder_run(f) is None)
    if folder == wanted:
        return folder, None
    held = folder_run(wanted)
    if held is None:  # free, but this run was started in its own folder earlier
        return folder, f"this run resumes in {folder}, where it was started (not {wanted})"
    if held == mine:
        why = "holds this run and trainer.resume=false starts over"
    elif held:
        differs = sorted(k for k in set(held) | set(mine) if held.get(k) != mine.get(k))
        why = f"is taken by another run (differs in: {', '.join(differs)})"
    else:
        why = "is taken by another run"
    return folder, f"{wanted} {why} -> this run writes to {folder}"


def write_run_record(folder: Path, run_name: str, run_fingerprint: dict) -> None:
    """`RUN_RECORD`: the run's name and fingerprint (its MLflow run: `training.tracking.recorded_run_id`)."""
    from training.fileio import atomic_write_text

    record = {"run_name": run_name, "fingerprint": run_fingerprint}
    atomic_write_text(folder / RUN_RECORD, json.dumps(record, indent=2))


HISTORY_RECORD = "history.json"  # the mean losses of every logging interval so far, rewritten at each


def read_history(folder: Path, up_to_step: int) -> list[dict]:
    """The logged intervals of an earlier part of this run, up to the step it resumes from (later ones
    were trained again). Empty when there is no readable record."""
    try:
        entries = json.loads((folder / HISTORY_RECORD).read_text())
        return [e for e in entries if int(e["step"]) <= up_to_step]
    except (OSError, ValueError, KeyError, TypeError):
        return []


STYLE_RECORD = "style.json"  # beside model.keras: the style(s) the model was trained for


def style_record(style_cfg, paths: dict[str, Path]) -> dict:
    """What `STYLE_RECORD` holds: the style's name, its settings and each painting's path and sha256;
    for a single-style model also `image` and `sha256`, the painting the export bakes by default."""
    from training.config import style_image_sha256
    from training.fileio import recorded_path

    images = [{"name": name, "path": recorded_path(path), "sha256": style_image_sha256(path)}
              for name, path in paths.items()]
    record = {"name": style_cfg.name, "strength": float(style_cfg.strength), "texture_size": int(style_cfg.texture_size),
              "single": len(images) == 1, "images": images}
    if len(images) == 1:
        record.update(image=images[0]["path"], sha256=images[0]["sha256"])
    return record


def read_style_record(folder: Path) -> dict | None:
    """The `STYLE_RECORD` of the training that wrote `folder`'s model; None: none (an imported model, or
    one trained before models recorded their style)."""
    try:
        record = json.loads((Path(folder) / STYLE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "name" in record else None
