"""python -m pipelines.prepare: fetch the loss network's weights and check the data, before training."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.cli import preflight, run_stage


@hydra.main(config_path="../configs", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from training.loop.prepare import prepare

    report = run_stage(prepare, cfg)
    photos = report["content_photos"]
    print(f"{photos['train']} training and {photos['heldout']} held-out photos, {len(report['style_images'])} style images, "
          f"{report['skipped_files']} skipped; loss network weights: {(report['loss_network_weights'] or {}).get('file', 'not cached')}")


if __name__ == "__main__":
    preflight("prepare")
    main()
