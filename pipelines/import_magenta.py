"""python -m pipelines.import_magenta: import Magenta's published weights and check parity."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.cli import preflight, run_stage


@hydra.main(config_path="../configs", config_name="import_magenta", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from training.weights.magenta_import import import_magenta

    parity = run_stage(import_magenta, cfg)
    print(f"transfer PSNR >= {parity['min_transfer_psnr_db']:.1f} dB over {len(parity['transfer'])} photos; "
          f"predictor cosine >= {parity['min_predictor_cosine']:.5f} over {len(parity['predictor'])} styles")


if __name__ == "__main__":
    preflight("import_magenta")
    main()
