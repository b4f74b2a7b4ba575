"""What every stage entry point shares: checks before any work, logging set-up, one-line errors."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

# TensorFlow's C++ start-up chatter hides the messages that matter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def fail(message: str):
    """The one-line error every stage ends with on an expected failure: `error: ...`, exit 1."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def preflight(config_name: str, check: Callable | None = None, argv: list[str] | None = None):
    """Compose the command line's config and check it before Hydra starts the stage: every key against
    the schema (training/schema.py), then the stage's own `check`, then the tracking store; returns the
    config (None when Hydra's own flags are given).

    Hydra creates the run folder (and rewrites its .hydra/ files) before the stage runs; checking
    here first means a bad value or an unreachable tracking server ends in one line and leaves an
    earlier run's outputs as they were. Hydra's own flags (--help, --multirun, -cn ...) are left to it.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from training.errors import StylepipeError
    from training.schema import check_config
    from training.tracking import check_tracking_store

    args = sys.argv[1:] if argv is None else argv
    if any(arg.startswith("-") for arg in args):
        return None
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=args)
    except MissingConfigException as err:
        fail(_missing_option(err))
    except (HydraException, OmegaConfBaseException) as err:
        fail(_undeclared_override(config_name, args, err) or _one_line(err))
    try:
        check_config(cfg, config_name)
        check_output_folders(cfg, config_name)
        if check is not None:
            check(cfg)
        if "mlflow" in cfg:  # stages that log runs
            check_tracking_store(cfg.mlflow.tracking_uri)
    except StylepipeError as err:
        fail(str(err))
    return cfg


def output_folders(cfg, stage: str) -> dict[str, Path]:
    """The folders a stage writes, by the key that sets each."""
    from omegaconf import OmegaConf

    keys = {"prepare": ["report", "paths.cache_dir"], "import_magenta": ["paths.magenta_published_dir"],
            "train": ["paths.train_dir"], "export": ["export.output_dir"], "evaluate": ["evaluate.output_dir"],
            "stylize": ["output"]}[stage]
    folders = {key: Path(str(OmegaConf.select(cfg, key))) for key in keys}
    return {key: folder.parent if folder.suffix else folder for key, folder in folders.items()}  # a file: its folder


def check_output_folders(cfg, stage: str) -> None:
    """Refuse, before any work, a stage whose output folder is read-only, not writable or on a full disk."""
    from training.errors import StylepipeError
    from training.fileio import unwritable_reason

    for key, folder in output_folders(cfg, stage).items():
        if reason := unwritable_reason(folder):
            raise StylepipeError(f"{key}={folder}: cannot write there ({reason}); choose a writable folder with free space")


def hydra_quoted(value) -> str:
    """`value` as a quoted Hydra override value (a path may hold spaces, commas or `=`)."""
    return "'" + str(value).replace("'", "\\'") + "'"


def _missing_option(err) -> str:
    """Hydra's "Could not find 'style/nope'" with its list of options, as one line."""
    group, _, name = (err.missing_cfg_file or "").rpartition("/")
    if not group or not err.options:
        return _one_line(err)
    return f"{group}={name} is not allowed: one of {', '.join(err.options)} (configs/{group}/)"


def _undeclared_override(stage: str, args: list[str], err: Exception) -> str | None:
    """Hydra's "Could not override 'a.b'" for a key the schema declares nowhere: the schema's line instead,
    naming the keys there are (Hydra's `+a.b=...` would only be refused in turn)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from training.schema import undeclared_key

    if not (match := re.match(r"Could not override '([^']+)'", str(err))):
        return None
    given = [o for o in OverridesParser.create().parse_overrides(args) if o.key_or_group == match.group(1)]
    problem = given and undeclared_key(stage, match.group(1), given[-1].value())
    return str(problem) if problem else None


def _one_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).split("Config search path")[0].splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


def run_stage(stage, cfg):
    """Run `stage(cfg)`; an expected failure prints `error: ...` and exits 1, no traceback."""
    from training.errors import Interrupted, StylepipeError
    from training.fileio import write_failure

    logging.getLogger("stylepipe").setLevel(logging.INFO)
    for chatty in ("coremltools", "tensorflow", "absl"):  # their INFO lines bury ours (coremltools prints whole graphs)
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return stage(cfg)
    except Interrupted as err:  # Ctrl-C, the work so far saved
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except StylepipeError as err:
        _log_to_files(str(err))
        fail(str(err))
    except OSError as err:  # a disk that filled up or turned read-only during the stage
        if (message := write_failure(err)) is None:
            raise
        _log_to_files(message)
        fail(message)
    except Exception as err:  # MLflow's store failing the same way under its database
        if (message := tracking_write_failure(cfg, err)) is None:
            raise
        fail(message)


def tracking_write_failure(cfg, err: Exception) -> str | None:
    """One line for a tracking database that became read-only or full during the stage, else None."""
    text = str(err)
    if "mlflow" not in cfg or not any(s in text for s in ("readonly database", "database or disk is full", "disk I/O error")):
        return None
    return (f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}: the tracking database cannot be written "
            f"({text.strip().splitlines()[0][:160]}); the stage's files are kept. Free space or make it writable, "
            "and run the same command again")


def _log_to_files(message: str) -> None:
    """An error into the stage's log file (Hydra's file handler); the terminal shows the `error:` line alone."""
    record = logging.getLogger("stylepipe").makeRecord("stylepipe", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
