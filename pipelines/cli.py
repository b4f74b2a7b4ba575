"""What every stage entry point shares: logging set-up and clear one-line errors."""

from __future__ import annotations

import logging
import os
import sys

# TensorFlow's C++ start-up chatter hides the messages that matter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_stage(stage, cfg):
    """Run `stage(cfg)`; an expected failure prints `error: ...` and exits 1, no traceback."""
    from training.errors import StylepipeError

    logging.getLogger("stylepipe").setLevel(logging.INFO)
    for chatty in ("coremltools", "tensorflow", "absl"):  # their INFO lines bury ours (coremltools prints whole graphs)
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return stage(cfg)
    except StylepipeError as err:
        logging.getLogger("stylepipe").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
