"""python -m pipelines.stylize input=photo.jpg|folder|video.mp4 [stylizer=...] [style.image=...]: apply a model."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.cli import preflight, run_stage


@hydra.main(config_path="../configs", config_name="stylize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from export.apply import stylize

    summary = run_stage(stylize, cfg)
    print(f"style {summary['style']}, model {summary['model']}")
    for path in summary["written"]:
        video = summary["videos"].get(path)
        print(f"wrote {path}" + (f" ({video['frames']} frames at {video['fps']:g} fps, audio {video['audio']})" if video else ""))
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} file(s): " + "; ".join(summary["skipped"]))


if __name__ == "__main__":
    import sys

    from export.apply import validate_stylize_config
    from pipelines.cli import fail

    if given := next((a for a in sys.argv[1:] if a.startswith("model=")), None):
        fail(f"{given}: stylize takes the model as stylizer={given.partition('=')[2]} "
             "(model= picks a training architecture in configs/model/)")
    preflight("stylize", validate_stylize_config)
    main()
