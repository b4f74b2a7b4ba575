"""The export manifest: what the export stage wrote and verified, and the check that a file is still that file.

`manifest.json` names the Keras model the artifacts were made from and, for every artifact, its path,
parity and sha256. Whatever reads an export (the evaluate stage) goes through `verified_files`, so a
model swapped or edited after export (on a shared drive, a DVC remote) is refused before it is loaded
or run. The same model exports to the same bytes (`reproducible_mlpackage`, deterministic protobufs),
so its sha256s, and DVC's hashes of the export, are the same on every run.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path

from training.errors import StylepipeError
from training.fileio import atomic_write_bytes, atomic_write_text

MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("model", "model_sha256", "style", "artifacts")
REEXPORT = "run `python -m pipelines.export` again"


class ManifestError(StylepipeError):
    """An export manifest, or a file it names, is not what the export stage wrote."""


def artifact_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files in name order (an `.mlpackage` is a folder)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with open(f, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path) -> dict:
    """The manifest at `path`, with the keys every reader relies on."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no export manifest (run `python -m pipelines.export` first)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not a readable manifest ({err}); {REEXPORT}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise ManifestError(f"{path}: not an export manifest (no {', '.join(missing)}); {REEXPORT}")
    if not isinstance(manifest["artifacts"], list) or not all(
            isinstance(a, dict) and {"path", "sha256", "format", "variant", "model"} <= a.keys() for a in manifest["artifacts"]):
        raise ManifestError(f"{path}: its artifacts list is malformed; {REEXPORT}")
    return manifest


def _check(path: Path, expected: str, what: str) -> Path:
    if not path.exists():
        raise ManifestError(f"{path}: {what} named by the export manifest is missing; {REEXPORT}")
    if artifact_sha256(path) != expected:
        raise ManifestError(f"{path}: {what} differs from the one exported (sha256 does not match the manifest); "
                            f"it was changed after export: {REEXPORT}")
    return path


def verified_files(manifest: dict, export_dir) -> dict:
    """{"model": Path, (format, variant, model, path): Path} for the manifest's files, each checked
    against its recorded sha256; ManifestError names the first that is missing or changed."""
    files = {"model": _check(Path(manifest["model"]), manifest["model_sha256"], "the Keras model")}
    for a in manifest["artifacts"]:
        files[(a["format"], a["variant"], a["model"], a["path"])] = verified_artifact(a, export_dir)
    return files


def verified_artifact(artifact: dict, export_dir) -> Path:
    """The path of one manifest artifact, checked against its recorded sha256 (ManifestError if missing or changed).

    For readers that run only some artifacts (`pipelines.stylize`): the Keras model the export was made
    from need not be at hand, the files run must be the files exported.
    """
    export_dir = Path(export_dir)
    name = Path(artifact["path"])
    if name.is_absolute() or ".." in name.parts:  # artifacts live in the export folder, nowhere else
        raise ManifestError(f"{export_dir / MANIFEST_NAME}: artifact path {artifact['path']!r} leaves the export folder; {REEXPORT}")
    return _check(export_dir / name, artifact["sha256"], f"the {artifact['format']} artifact")


MLPACKAGE_MANIFEST = "Manifest.json"
COREML_CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"
COREML_CONST_NUMBER = re.compile(r"^const_(\d+)(?=_|$)")  # a const coremltools adds, and names made from it


def reproducible_mlpackage(package: Path) -> None:
    """Make a saved Core ML package the same bytes for the same model: coremltools names its items by
    random UUIDs (here: UUIDs derived from each item's path), numbers the consts it adds in an order
    that varies between processes (here: in program order), writes the spec's maps in hash order
    (here: in key order) and stamps the day of conversion into the spec's metadata (removed)."""
    manifest_path = package / MLPACKAGE_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    items, root = manifest["itemInfoEntries"], manifest["rootModelIdentifier"]
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, item["path"])) for old, item in items.items()}
    manifest.update(itemInfoEntries={ids[old]: item for old, item in items.items()}, rootModelIdentifier=ids[root])
    atomic_write_text(manifest_path, json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    _reproducible_spec(package / "Data" / items[root]["path"])


def _reproducible_spec(path: Path) -> None:
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(path.read_bytes())
    spec.description.metadata.userDefined.pop(COREML_CONVERSION_DATE, None)
    if spec.HasField("mlProgram"):
        _rename_strings(spec.mlProgram, _const_renumbering())
    atomic_write_bytes(path, spec.SerializeToString(deterministic=True))


def _const_renumbering():
    """const_<n> -> const_<k>, k counting the numbers in the order they are met (one number, one k)."""
    numbers: dict[str, int] = {}
    return lambda name: COREML_CONST_NUMBER.sub(lambda m: f"const_{numbers.setdefault(m.group(1), len(numbers))}", name)


def _rename_strings(message, rename) -> None:
    """`rename` every string in a protobuf message (names and their uses alike), in a fixed order:
    fields by number, repeated fields in order, maps by key."""
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_type = field.message_type.fields_by_name["value"]
            for key in sorted(value):
                if value_type.message_type is not None:
                    _rename_strings(value[key], rename)
                elif value_type.type == value_type.TYPE_STRING:
                    value[key] = rename(value[key])
        elif field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                _rename_strings(item, rename)
        elif field.type == field.TYPE_STRING:
            if field.is_repeated:
                value[:] = [rename(v) for v in value]
            else:
                setattr(message, field.name, rename(value))
