"""Restates throughput records timed over steps that never ran (the clock error fixed in a6dd0b2).

Before a6dd0b2, when `--steps` was not a multiple of `trainer.steps_per_execution`, the steady clock
of `train_throughput.py` took Keras' end step of the short last execution at face value
(`begin + steps_per_execution - 1`, past the last step), so it divided the window's time by more
steps than ran: at 60 steps of 8, by 48 where 44 ran. This adds to each such row `timed_steps` and
`*_restated` fields (step time, images/s, TFLOP/s, MFU, host wait) and an `erratum` to the file,
keeping every original field. Rows already restated, or timed right, are left alone.

    python -m benchmarks.restate_records RECORD.json ...   # records made before a6dd0b2 only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ERRATUM = ("Rows with steps not a multiple of steps_per_execution were timed over steps that never "
           "ran (Keras reports a short last execution as ending past the last step; fixed in a6dd0b2). "
           "The *_restated fields hold step_ms * counted / ran (48/44 at 60 steps of 8); the original fields are kept.")


# The clock as it was when those records were made: a fact about them, not today's setting.
OLD_CLOCK_SKIP_FRACTION = 0.2


def counted_and_ran(steps: int, per_execution: int, skip_fraction: float = OLD_CLOCK_SKIP_FRACTION) -> tuple[int, int]:
    """Steps the old clock divided by, and steps that ran, in its window."""
    ends = list(range(per_execution - 1, steps + per_execution - 1, per_execution))  # as Keras reported them
    first = next(end for end in ends if end >= skip_fraction * ends[-1])
    return ends[-1] - first, (steps - 1) - first


def restate(record: dict) -> int:
    """Adds the restated fields to each affected row of a record; returns how many rows."""
    count = 0
    for row in record.get("results") or []:
        per_execution, steps = row.get("steps_per_execution", 1), row.get("steps")
        if not steps or steps % per_execution == 0 or "step_ms_restated" in row:
            continue
        counted, ran = counted_and_ran(steps, per_execution)
        row["timed_steps"] = ran
        row["step_ms_restated"] = row["step_ms"] * counted / ran
        for key in ("images_per_s", "tflops_per_s", "mfu_peak", "mfu_matmul"):
            if row.get(key) is not None:
                row[key + "_restated"] = row[key] * ran / counted
        if row.get("device_step_ms"):
            row["host_wait_fraction_restated"] = 1 - row["device_step_ms"] / row["step_ms_restated"]
        count += 1
    if count:
        record["erratum"] = ERRATUM
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restate_records", description=__doc__.split("\n")[0])
    parser.add_argument("records", nargs="+", type=Path)
    for path in parser.parse_args(argv).records:
        record = json.loads(path.read_text())
        if count := restate(record):
            path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"{path}: {count} rows restated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
