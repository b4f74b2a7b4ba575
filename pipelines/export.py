"""python -m pipelines.export [export.style=starry | export.style_image=painting.jpg] [export.sizes=[[384,384]]]:
the export stage; it bakes the model's trained style unless told otherwise (export/style.py)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.cli import preflight, run_stage


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from export.stage import export

    manifest = run_stage(export, cfg)
    print(f"{'format':<13}{'variant':<10}{'model':<10}{'file':<40}{'PSNR dB':>9}{'max-abs':>10}")
    for a in manifest["artifacts"]:
        print(f"{a['format']:<13}{a['variant']:<10}{a['model']:<10}{a['path']:<40}"
              f"{a['parity']['psnr_db']:>9.1f}{a['parity']['max_abs']:>10.2e}")


def check(cfg: DictConfig) -> None:
    from export.style import baked_style
    from training.config import validate_export_config

    validate_export_config(cfg)
    baked_style(cfg)  # a mismatched or missing style ends here, before Hydra writes anything


if __name__ == "__main__":
    preflight("export", check)
    main()
