"""MLflow tracking shared by every stage: one run per invocation, config as params."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

MAX_PARAM_VALUE = 6000
PARAMS_PER_BATCH = 100


def flatten_config(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """{"a.b.c": "value"} for every leaf, with machine-specific absolute paths made relative."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}

    def visit(node, key):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                visit(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = scrub_path(str(node))[:MAX_PARAM_VALUE]

    visit(container, prefix)
    return flat


def scrub_path(value: str) -> str:
    """Replace this machine's working directory, temp dir and home in a value (no absolute paths logged)."""
    for root, alias in ((os.getcwd(), "."), (tempfile.gettempdir(), "$TMPDIR"), (str(Path.home()), "~")):
        if root not in ("", "/"):
            value = value.replace(root, alias)
    return value


@contextlib.contextmanager
def mlflow_run(cfg: DictConfig, run_name: str, tags: dict | None = None, parent_run_id: str | None = None):
    """Start an MLflow run on cfg.mlflow's store, logging the flattened config as params."""
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.mlflow.experiment)
    with mlflow.start_run(run_name=run_name, tags=tags or {}, parent_run_id=parent_run_id) as run:
        params = flatten_config(cfg)
        items = sorted(params.items())
        for i in range(0, len(items), PARAMS_PER_BATCH):
            mlflow.log_params(dict(items[i : i + PARAMS_PER_BATCH]))
        mlflow.log_text(scrub_path(OmegaConf.to_yaml(cfg, resolve=True)), "config/composed.yaml")
        yield run
