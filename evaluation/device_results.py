"""Latency measured on a phone, in a documented JSON format, merged into the evaluation run.

Format (docs/device_results.md):
    {"device": "iPhone 12", "source": "Bender app | Core ML app | benchmark_model over adb",
     "measurements": [{"model": "realtime", "format": "bender", "variant": "baked", "runtime": "bender_metal",
                       "threads": null, "height": 384, "width": 768,
                       "median_ms": 70.0, "p90_ms": 74.0, "runs": 50, "std_ms": 2.1}]}
"""

from __future__ import annotations

import json
from pathlib import Path

from training.errors import StylepipeError

REQUIRED = {"format": str, "variant": str, "runtime": str, "height": int, "width": int, "median_ms": (int, float),
            "p90_ms": (int, float), "runs": int}


class DeviceResultsError(StylepipeError):
    """A device results file that does not follow the documented format."""


def load(path) -> list[dict]:
    """Validated latency rows, each marked with the device name."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise DeviceResultsError(f"device_results={path}: cannot be read ({err.strerror})") from None
    except ValueError as err:
        raise DeviceResultsError(f"device_results={path}: not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("device"), str) or not data["device"].strip():
        raise DeviceResultsError(f"device_results={path}: needs a top-level \"device\" name (see docs/device_results.md)")
    rows = data.get("measurements")
    if not isinstance(rows, list) or not rows:
        raise DeviceResultsError(f"device_results={path}: needs a non-empty \"measurements\" list")
    out = []
    for i, row in enumerate(rows):
        for key, kind in REQUIRED.items():
            if not isinstance(row.get(key), kind) or isinstance(row.get(key), bool):
                raise DeviceResultsError(f"device_results={path}: measurements[{i}].{key} missing or not {kind}")
        if row["median_ms"] <= 0 or row["p90_ms"] < row["median_ms"] or row["runs"] < 1:
            raise DeviceResultsError(f"device_results={path}: measurements[{i}] needs 0 < median_ms <= p90_ms and runs >= 1")
        threads = row.get("threads")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise DeviceResultsError(f"device_results={path}: measurements[{i}].threads must be null or an integer >= 1")
        out.append({"model": str(row.get("model", "")), **{k: row[k] for k in REQUIRED}, "threads": threads, "std_ms": float(row.get("std_ms", 0.0)),
                    "fps": 1000.0 / float(row["median_ms"]), "device": data["device"].strip(),
                    "source": str(data.get("source", ""))})
    return out
