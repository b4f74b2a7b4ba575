"""python -m pipelines.train style=starry [trainer=smoke] [model=magenta] ...: the training stage."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.cli import preflight, run_stage


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from training.train import train

    run_stage(train, cfg)


if __name__ == "__main__":
    from training.config import validate_train_config

    preflight("train", validate_train_config)
    main()
