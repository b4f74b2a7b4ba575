"""python -m pipelines.train style=starry [experiment=smoke] [model=magenta] ...: the training stage."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from pipelines.cli import hydra_quoted, preflight, run_stage


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from training.loop.train import train

    run_stage(train, cfg)


def check(cfg: DictConfig) -> None:
    from training.config import check_accelerator, validate_train_config

    validate_train_config(cfg)
    check_accelerator(cfg, sys.argv[1:])


if __name__ == "__main__":
    from training.loop.runs import run_folder

    if (cfg := preflight("train", check)) is not None:
        # Decided before Hydra starts, so its .hydra/ files and train.log go to this run's folder too.
        folder, moved = run_folder(cfg)
        if moved:
            logging.getLogger("stylepipe.train").warning("%s", moved)
            sys.argv.append(f"paths.train_dir={hydra_quoted(folder)}")
    main()
