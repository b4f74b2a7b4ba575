"""python -m pipelines.evaluate [device_results=phone.json]: latency and quality of the exported models."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.cli import preflight, run_stage


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from evaluation.quality import MEASURES, STATISTICS_MEASURE
    from evaluation.stage import comparison_report, evaluate

    metrics = run_stage(evaluate, cfg)
    print(f"{'model':<22}{'format':<32}{'runtime':<16}{'threads':>8}{'size':>10}{'median ms':>11}{'p90 ms':>9}{'fps':>7}  device")
    for r in metrics["latency"]:
        size = f"{r['height']}x{r['width']}"
        print(f"{r['model'][:21]:<22}{r['format']:<32}{r['runtime']:<16}{str(r['threads'] or '-'):>8}{size:>10}"
              f"{r['median_ms']:>11.1f}{r['p90_ms']:>9.1f}{r['fps']:>7.1f}  {r['device']}")
    for s in metrics["skipped"]:
        print(f"skipped {s['format']} ({s['runtime']}) {s['height']}x{s['width']}: {s['reason']}")
    q = metrics["quality"]["style_loss_ours_vs_published"]
    print(f"style loss on held-out photos ({metrics['quality']['style']}): ours {q['ours']:.2f} vs Magenta published {q['published']:.2f}")
    ours, published = metrics["quality"]["formats"]["keras"], metrics["quality"]["formats"]["magenta_published"]
    print("without the training loss (docs/quality.md), ours vs Magenta published: "
          + ", ".join(f"{m} {ours[m]:.3f} vs {published[m]:.3f}" for m in (*MEASURES, STATISTICS_MEASURE)))
    print()
    print(comparison_report(metrics["latency"], metrics["models"], metrics["quality"]["models"], metrics["quality"]["identity"]))

if __name__ == "__main__":
    preflight("evaluate")
    main()
