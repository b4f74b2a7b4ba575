"""The config schema (training/schema.py): every leaf key of every stage refuses a value of the wrong type in
one line naming the key; every shipped config passes; the documented examples give their exact lines.

In process, through the real checks (training.schema.check_config, pipelines.cli.preflight); the CLI itself,
exit code and untouched outputs included, is tests/reliability/test_config_errors.py.
"""

from __future__ import annotations

from functools import cache

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import ListConfig, OmegaConf

from helpers import REPO
from training.errors import ConfigError
from training.schema import check_config, stage_groups

CONFIGS = REPO / "configs"
STAGES = ("prepare", "import_magenta", "train", "export", "evaluate", "stylize")
# Group options that add keys the defaults lack (the realtime network, TFDS data, each init, each teacher), and
# data.cache_bytes, which only code sets.
MORE_KEYS = {"train": [["model=realtime", "data=tfds", "init=magenta_published", "+data.cache_bytes=0"],
                       ["init=tfhub", "backbone=inception_v3", "teacher=model", "style=all"]],
             **{stage: [["data=tfds"]] for stage in ("prepare", "export", "evaluate")}}


@cache
def _composed(stage: str, overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(stage, overrides=list(overrides))


def composed(stage: str, overrides=()):
    """A fresh copy of `stage`'s config composed with `overrides`."""
    return _composed(stage, tuple(overrides)).copy()


def leaf_keys(cfg, prefix=""):
    for key in cfg:
        node = cfg._get_node(key)
        if OmegaConf.is_dict(node) and len(node) and not node._is_interpolation():
            yield from leaf_keys(node, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _cases():
    seen = set()
    for stage in STAGES:
        for overrides in [[], *MORE_KEYS.get(stage, [])]:
            for key in leaf_keys(_composed(stage, tuple(overrides))):
                if (stage, key) not in seen:
                    seen.add((stage, key))
                    yield pytest.param(stage, overrides, key, id=f"{stage}:{key}")


CASES = list(_cases())


@pytest.mark.parametrize("stage, overrides, key", CASES)
def test_every_key_refuses_a_wrong_type_in_one_line(stage, overrides, key):
    """Guards the schema's coverage: a key it forgot, or declared as accepting anything by mistake, lets a wrong
    type through to a traceback after start-up. Free text and paths take "abc" but never a list; a key whose
    default is a number, a boolean or a list takes no text."""
    default = OmegaConf.select(composed(stage, overrides), key)
    for wrong in ("abc", [1, 2]):
        cfg = composed(stage, overrides)
        OmegaConf.update(cfg, key, wrong, merge=False)
        try:
            check_config(cfg, stage)
        except ConfigError as err:
            message = str(err)
            break
    else:
        pytest.fail(f"{stage}: {key} takes both 'abc' and [1, 2]")
    assert message.startswith(f"{key}={wrong!r} is not allowed: ") and "\n" not in message, message
    if isinstance(default, (bool, int, float, ListConfig)):
        assert wrong == "abc", f"{key} (default {default!r}) takes text"


def test_the_cases_cover_every_stage():
    counts = {stage: sum(c.values[0] == stage for c in CASES) for stage in STAGES}
    assert all(n >= 10 for n in counts.values()), counts
    assert sum(counts.values()) > 250, counts


def _shipped():
    """Each option of each config group once, in the first stage composing the group (an experiment in every
    stage: each takes its own part of it), and each stage as it is."""
    done = set()
    for stage in STAGES:
        yield stage, []
        for group in stage_groups(stage):
            for option in sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")):
                key = (stage, group, option) if group == "experiment" else (group, option)
                if key not in done:
                    done.add(key)
                    yield stage, [f"{group}={option}"]


def test_every_shipped_config_passes_the_schema():
    """Guards the schema against the configs: a key added to configs/ without a rule, or a rule too strict for a
    shipped value, stops that config in preflight."""
    for stage, overrides in _shipped():
        check_config(composed(stage, overrides), stage)


EXAMPLES = [
    # stage, overrides, the whole message
    ("train", ["trainer.learning_rate=abc"],
     "trainer.learning_rate='abc' is not allowed: a number > 0 (Adam's step size, e.g. 1e-3)"),
    ("train", ["trainer.learning_rate=0"],
     "trainer.learning_rate=0 is not allowed: a number > 0 (Adam's step size, e.g. 1e-3)"),
    ("train", ["trainer.learning_rate=nan"],
     "trainer.learning_rate=nan is not allowed: a number > 0 (Adam's step size, e.g. 1e-3)"),
    ("train", ["seed=abc"], "seed='abc' is not allowed: an integer"),
    ("train", ["data.image_size=-1"],
     "data.image_size=-1 is not allowed: an integer >= 16 divisible by 4 (the network downsamples twice by 2)"),
    ("train", ["trainer.batch_size=0"], "trainer.batch_size=0 is not allowed: an integer >= 1"),
    ("train", ["trainer.steps=10.0"], "trainer.steps=10.0 is not allowed: an integer >= 0"),
    ("train", ["trainer.jit_compile=1"], "trainer.jit_compile=1 is not allowed: one of true, false, auto"),
    # set directly, it is named, not style.texture_size that takes it by interpolation
    ("train", ["data.style_size=abc"], "data.style_size='abc' is not allowed: an integer >= 16"),
    ("train", ["+trainer.stepz=3"], "trainer.stepz=3 is not allowed: not a key of trainer (its keys: allow_cpu, "
     "batch_size, checkpoint_every, checkpoint_minutes, clipnorm, data_worker_processes, data_workers, devices, "
     "fixed_style_targets, input_dtype, jit_compile, keep_checkpoints, learning_rate, learning_rate_schedule, "
     "log_every, precision, progress, relu_gradient_from_output, resume, shifted_sum_depthwise, "
     "space_to_depth_channels, steps, steps_per_execution, teacher_weight)"),
    ("train", ["+loss_network.style_weights.conv5=1"], "loss_network.style_weights.conv5=1 is not allowed: not a key "
     "of loss_network.style_weights (its keys: conv1, conv2, conv3, conv4)"),
    ("train", ["+auth.token=x"], "auth={'token': 'x'} is not allowed: not a key of the train config (its keys: "
     "backbone, data, init, loss_network, mlflow, model, paths, run_name, seed, style, teacher, trainer)"),
    ("train", ["style.images=abc"], "style.images='abc' is not allowed: a group of keys with any names"),
    ("train", ["trainer.steps=${nosuch}"], "trainer.steps=${nosuch} cannot be resolved: Interpolation key 'nosuch' "
     "not found"),
    ("export", ["export.sizes=abc"],
     "export.sizes='abc' is not allowed: [[height, width], ...] with each side an integer >= 16 divisible by 4"),
    ("export", ["export.sizes=[[384,383]]"],
     "export.sizes=[[384, 383]] is not allowed: [[height, width], ...] with each side an integer >= 16 divisible by 4"),
    ("export", ["export.thresholds.tflite_fp16=abc"], "export.thresholds.tflite_fp16='abc' is not allowed: a number > 0 "
     "(the minimum PSNR in dB against the Keras model)"),
    ("export", ["export.arbitrary_formats=[bender]"], "export.arbitrary_formats=['bender'] is not allowed: a list of "
     "frozen_graph, tflite_fp16, coreml (not bender: Bender has no conditional instance norm)"),
    ("evaluate", ["evaluate.runs=0"], "evaluate.runs=0 is not allowed: an integer >= 1"),
    ("evaluate", ["evaluate.threads=[0]"],
     "evaluate.threads=[0] is not allowed: a list of LiteRT thread counts, each an integer >= 1"),
    ("evaluate", ["evaluate.compare=abc"],
     "evaluate.compare='abc' is not allowed: a list of export folders, e.g. [outputs/export-teacher]"),
    ("evaluate", ["evaluate.warmup=-1"], "evaluate.warmup=-1 is not allowed: an integer >= 0"),
    ("stylize", ["strength=2"],
     "strength=2 is not allowed: a number from 0 (the photo's own style) to 1 (the painting's), or null"),
    ("stylize", ["tile.overlap=0.75"], "tile.overlap=0.75 is not allowed: a fraction of the tile from 0 to 0.5"),
    ("import_magenta", ["parity.content_size=383"], "parity.content_size=383 is not allowed: an integer >= 16 "
     "divisible by 4"),
]


def test_every_config_group_is_composed_by_a_stage():
    """No dangling groups: each folder of configs/ is a group some stage composes (configs/experiment/<stage>/
    are the experiments' parts, each read by its stage)."""
    composed = {group for stage in STAGES for group in stage_groups(stage)}
    assert {p.name for p in CONFIGS.iterdir() if p.is_dir()} == composed
    assert {p.name for p in (CONFIGS / "experiment").iterdir() if p.is_dir()} <= set(STAGES)


def test_the_accelerators_set_the_same_keys():
    gpu, cpu = (OmegaConf.load(CONFIGS / "accelerator" / f"{name}.yaml") for name in ("gpu", "cpu"))
    assert list(gpu) == list(cpu)


@pytest.mark.parametrize("stage, values", [
    ("train", {"trainer.precision": "float32", "trainer.allow_cpu": True, "trainer.steps": 24, "trainer.batch_size": 4,
               "data.image_size": 128}),
    ("export", {"export.sizes": [[384, 384]]}),
    ("evaluate", {"evaluate.sizes": [[384, 384]], "evaluate.runs": 5, "evaluate.warmup": 1}),
])
def test_one_experiment_choice_sets_each_stage_its_part(stage, values):
    """experiment=smoke is one choice for every stage that takes it; each stage gets its own part of it, and
    experiment=full is each stage's default."""
    smoke, full, default = (OmegaConf.to_container(composed(stage, overrides), resolve=True)
                            for overrides in (["experiment=smoke"], ["experiment=full"], []))
    assert {key: _select(smoke, key) for key in values} == values
    assert full == default and all(_select(default, key) != value for key, value in values.items())


def _select(plain: dict, dotted: str):
    for part in dotted.split("."):
        plain = plain[part]
    return plain


def test_an_accelerator_on_the_command_line_replaces_the_experiments():
    assert composed("train", ["experiment=smoke", "accelerator=gpu"]).trainer.precision == "mixed_bfloat16"
    assert composed("train", ["accelerator=cpu"]).trainer.precision == "float32"


@pytest.mark.parametrize("stage, overrides, message", EXAMPLES, ids=[" ".join(e[1]) for e in EXAMPLES])
def test_documented_examples_give_their_line(stage, overrides, message):
    with pytest.raises(ConfigError) as err:
        check_config(composed(stage, overrides), stage)
    assert str(err.value) == message


@pytest.mark.parametrize("stage, overrides", [
    ("train", ["model.alpha=1", "trainer.clipnorm=2", "trainer.learning_rate=0.1", "style.strength=10"]),
    ("export", ["export.metadata.version=1.0", "run_name=2024", "export.style=great_wave"]),
    ("evaluate", ["evaluate.compare=[outputs/export-teacher]", "device_results=phone.json"]),
    ("stylize", ["strength=0", "input=photo.jpg", "stylizer=outputs/train/model.keras"]),
])
def test_good_values_pass(stage, overrides):
    """An int where a number is expected, free text Hydra reads as a number, the bounds themselves."""
    check_config(composed(stage, overrides), stage)


def test_configs_built_in_code_may_carry_keys_of_their_own():
    """The stage functions check values only (their callers may add keys, e.g. tests/reliability/test_security.py);
    the command line refuses an undeclared key."""
    cfg = composed("train", ["+auth.api_token=secret"])
    check_config(cfg, "train", allow_other_keys=True)
    cfg.trainer.steps = -1
    with pytest.raises(ConfigError, match=r"^trainer.steps=-1 is not allowed: an integer >= 0$"):
        check_config(cfg, "train", allow_other_keys=True)


@pytest.mark.parametrize("stage, args, line", [
    ("train", ["trainer.stepz=3"], "error: trainer.stepz=3 is not allowed: not a key of trainer (its keys: "),
    ("train", ["trainr.steps=3"], "error: trainr.steps=3 is not allowed: trainr is not a key of the train config "
     "(its keys: backbone, data, "),
    ("train", ["model=nosuch"], "error: model=nosuch is not allowed: one of magenta, magenta_lite, realtime "
     "(configs/model/)"),
    ("evaluate", ["evaluate.threads=[0]"], "error: evaluate.threads=[0] is not allowed: "),
])
def test_preflight_says_it_in_one_line(tmp_path, capsys, stage, args, line):
    """pipelines.cli.preflight: Hydra's "Could not override" for a key the schema does not declare becomes the
    schema's line (Hydra's advice, `+trainer.stepz=3`, would only be refused in turn)."""
    from pipelines.cli import preflight

    with pytest.raises(SystemExit) as exit_:
        preflight(stage, argv=[f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *args])
    assert exit_.value.code == 1
    [printed] = capsys.readouterr().err.splitlines()
    assert printed.startswith(line), printed
