"""What tests share besides fixtures: the repo's paths, toy training sizes, the training config as the CLI composes it.

Test modules import it as `from helpers import ...`: pytest's default (prepend) import mode puts tests/
on sys.path when it loads tests/conftest.py, and a script run as `python tests/X.py` has it there too.
Fixtures stay in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTENT_DIR = REPO / "data" / "samples" / "content"
STYLE_DIR = REPO / "data" / "samples" / "style"
# Pretrained weights are fetched once per machine into the repo's cache, shared by all tests.
CACHE_DIR = REPO / ".cache" / "stylepipe"


# The training stage at toy sizes (the old smoke sizes), for tests of its plumbing; the smoke profile
# itself is a real fine-tune (tests/test_magenta_import.py runs it as is).
TINY_TRAINING = ["trainer.batch_size=2", "data.image_size=64", "data.resize_short_side=[64,80]",
                 "data.style_size=64", "data.heldout_size=64"]


def compose_train(overrides: list[str], tmp_path: Path):
    """The training config as the CLI would compose it, writing only under tmp_path."""
    from hydra import compose, initialize_config_dir

    tmp_path.mkdir(parents=True, exist_ok=True)  # holds the sqlite store, which must be in an existing folder
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.root_dir={REPO}",
                f"paths.output_dir={tmp_path / 'outputs'}",
                f"paths.cache_dir={CACHE_DIR}",
                f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                "trainer.progress=false",
                *overrides,
            ],
        )
