"""Run `python -m pipelines.export ARGS...` and SIGKILL it just before one step of its final install.

    python tests/reliability/export_killer.py POINT ARGS...

POINT: `hidden` (moving the old folder's hidden entries into the staging folder), `old_away` (renaming
the old export folder aside), `new_in` (renaming the staging folder into place) or `cleanup` (removing
the old folder afterwards). The export runs unchanged until that moment.
"""

from __future__ import annotations

import os
import pathlib
import runpy
import shutil
import signal
import sys

POINT, ARGS = sys.argv[1], sys.argv[2:]
real_rename, real_rmtree = pathlib.Path.rename, shutil.rmtree


def step(src: pathlib.Path, dst) -> str | None:
    """Which install step a rename is (None: not one)."""
    dst = pathlib.Path(dst)
    if src.name.startswith(".export-staging-"):
        return "new_in"
    if dst.name == ".export.previous":
        return "old_away"
    if dst.parent.name.startswith(".export-staging-") and src.name.startswith("."):
        return "hidden"
    return None


def rename(self, target):
    if step(self, target) == POINT:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(self, target)


def rmtree(path, *args, **kwargs):
    # The install's last step: the old folder, once the new one is in place.
    if POINT == "cleanup" and pathlib.Path(path).name == ".export.previous" and pathlib.Path(path).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rmtree(path, *args, **kwargs)


pathlib.Path.rename, shutil.rmtree = rename, rmtree
sys.argv = ["pipelines.export", *ARGS]
runpy.run_module("pipelines.export", run_name="__main__", alter_sys=True)
