"""`export(cfg) -> manifest`: write every format, check each against Keras, then install them.

Everything, the manifest included, is written to a staging folder first; only when every artifact
meets its parity threshold does that folder replace `export.output_dir` as a whole. A failed export
leaves the previous artifacts and manifest as they were; a kill at any moment leaves one complete
export; no artifact of an earlier export (another style, other sizes) stays beside the new ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
from omegaconf import OmegaConf

from export.manifest import artifact_sha256, reproducible_mlpackage
from export.style import baked_style, file_name
from training.config import validate_export_config
from training.errors import StylepipeError
from training.fileio import atomic_write_bytes, atomic_write_text
from training.weights.parity import max_abs, psnr_db

log = logging.getLogger("stylepipe.export")


class ExportParityError(StylepipeError):
    """An artifact does not reproduce the Keras model closely enough."""


def _size_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Exporter:
    """Writes artifacts into a staging folder and records their manifest entries.

    A check is {label: [(feeds, Keras reference)]}: label None for an artifact without a strength
    input; for a baked one "default" (strength left out, against the style's own bottleneck) and each
    of PARITY_STRENGTHS (against the Keras transformer fed the blended bottleneck).
    """

    def __init__(self, cfg, stylizer, staging: Path, photos: list[np.ndarray], style: dict, style_image: np.ndarray):
        self.cfg, self.stylizer, self.staging = cfg, stylizer, staging
        self.photos = photos
        self.style = style  # export.style.baked_style
        self.style_name = style["name"]
        self.style_file_name = file_name(style["name"])
        self.style_image = style_image  # 256 x 256, [0, 1]
        self.transformer = stylizer.get_layer("transformer")
        self.predictor = stylizer.get_layer("style_predictor")
        self.bottleneck = keras.ops.convert_to_numpy(self.predictor(style_image[None], training=False))
        self.neutral = None  # export.strength.NeutralBottleneck, once a baked format with the strength input runs
        self.entries: list[dict] = []

    # -- references --
    def keras_stylized(self, height: int, width: int, bottleneck=None) -> list[tuple[np.ndarray, np.ndarray]]:
        from training.data.datasets import fit_crop

        bottleneck = self.bottleneck if bottleneck is None else bottleneck
        pairs = []
        for photo in self.photos:
            x = fit_crop(photo, height, width)[None]
            pairs.append((x, keras.ops.convert_to_numpy(self.transformer([x, bottleneck], training=False))))
        return pairs

    def strength_checks(self, height: int, width: int, baked_ref) -> dict:
        """The baked checks: strength left out (its default, 1) and each of PARITY_STRENGTHS."""
        from export.strength import PARITY_STRENGTHS, STRENGTH_INPUT, STRENGTH_SHAPE, blend

        checks = {"default": baked_ref}
        for strength in PARITY_STRENGTHS:
            blended = blend(self.neutral.values, self.bottleneck, strength)
            checks[f"{strength:g}"] = [({"content_image": x, STRENGTH_INPUT: np.full(STRENGTH_SHAPE, strength, np.float32)}, y)
                                       for x, y in self.keras_stylized(height, width, blended)]
        return checks

    def record(self, fmt, variant, model, path: Path, inputs, outputs, results: dict, strength: dict | None = None):
        """One manifest entry; results: {check label: [(ours, reference)]} (Exporter's docstring)."""
        # Images are in [0, 1]; a predictor's bottleneck is compared relative to its own range.
        peak = lambda ref: 1.0 if model != "predictor" else float(np.abs(ref).max())  # noqa: E731
        parity = {label: (min(psnr_db(ours, ref, peak(ref)) for ours, ref in pairs),
                          max(max_abs(ours, ref) for ours, ref in pairs)) for label, pairs in results.items()}
        entry = {
            "format": fmt, "variant": variant, "model": model,
            "style": self.style_name if variant == "baked" else None,
            "path": path.name, "inputs": inputs, "outputs": outputs,
            "parity": {"psnr_db": min(p for p, _ in parity.values()), "max_abs": max(m for _, m in parity.values()),
                       "photos": len(next(iter(results.values())))},
        }
        if strength is not None:
            entry["strength"] = strength
        if set(parity) != {None}:
            entry["parity"]["strength"] = {label: {"psnr_db": p, "max_abs": m} for label, (p, m) in parity.items()}
        self.entries.append(entry)
        for label, (p, m) in parity.items():
            at = "" if label is None else f"strength {label}"
            log.info("%-12s %-9s %-9s %-28s %-16s PSNR %.1f dB  max-abs %.2e", fmt, variant, model, path.name, at, p, m)

    def metadata(self, variant, model) -> dict:
        """What each artifact says about itself (TFLite metadata `stylepipe`, Core ML user metadata)."""
        baked = variant == "baked"
        return {"style": self.style_name if baked else "arbitrary", "style_sha256": self.style["sha256"] if baked else "",
                "variant": variant, "model": model}

    # -- formats --
    def frozen_graph(self, variant, model, module, name, checks):
        from export.strength import STRENGTH_DEFAULT, STRENGTH_INPUT, STRENGTH_SHAPE, strength_input
        from export.tf_graph import check_frozen_graph, freeze, run_frozen_graph, with_input_default

        graph_def, inputs, outputs = freeze(module)
        strength = None
        if STRENGTH_INPUT in inputs:  # left out, it is 1: the graph runs as the baked graph without the input did
            graph_def = with_input_default(graph_def, STRENGTH_INPUT, np.full(STRENGTH_SHAPE, STRENGTH_DEFAULT, np.float32))
            strength = strength_input(default=STRENGTH_DEFAULT)
        problems = check_frozen_graph(graph_def, inputs, outputs)
        if problems:
            raise StylepipeError(f"frozen graph {name}: " + "; ".join(problems))
        path = self.staging / name
        atomic_write_bytes(path, graph_def.SerializeToString(deterministic=True))  # maps in key order
        placeholder = {n.name: n for n in graph_def.node if n.op in ("Placeholder", "PlaceholderWithDefault")}
        in_shapes = [[d.size for d in placeholder[n].attr["shape"].shape.dim] for n in inputs]
        results = {label: [(run_frozen_graph(graph_def, feeds, outputs)[outputs[0]], ref) for feeds, ref in pairs]
                   for label, pairs in checks.items()}
        out_shapes = [list(next(iter(results.values()))[0][0].shape)]
        self.record("frozen_graph", variant, model, path, _io(inputs, in_shapes, strength), _io(outputs, out_shapes),
                    results, strength)

    def tflite_fp16(self, variant, model, modules: dict, name, checks):
        """modules: {signature key: module}; a baked model has `serve` (strength 1) and STRENGTH_SIGNATURE."""
        from export.strength import STRENGTH_INPUT, STRENGTH_SIGNATURE, strength_input
        from export.tf_graph import constant_module
        from export.tflite import check_gpu_delegate_rules, convert_signatures, run_signature, signature_io, with_metadata

        functions = {key: constant_module(module).serve for key, module in modules.items()}
        flatbuffer = with_metadata(convert_signatures(functions, fp16=True), self.metadata(variant, model))
        report = check_gpu_delegate_rules(flatbuffer)
        if not report.ok:
            raise StylepipeError(f"TFLite {name} breaks the GPU delegate's rules: " + "; ".join(report.problems[:5]))
        path = self.staging / name
        atomic_write_bytes(path, flatbuffer)
        inputs, outputs = signature_io(path, "serve")
        key = outputs[0]["name"]
        signature = lambda feeds: STRENGTH_SIGNATURE if STRENGTH_INPUT in feeds else "serve"  # noqa: E731
        results = {label: [(run_signature(path, signature(feeds), feeds)[key], ref) for feeds, ref in pairs]
                   for label, pairs in checks.items()}
        strength = None
        if STRENGTH_SIGNATURE in modules:
            strength = strength_input(default=None, signature=STRENGTH_SIGNATURE)
            strength["inputs"] = signature_io(path, STRENGTH_SIGNATURE)[0]
        self.record("tflite_fp16", variant, model, path, inputs, outputs, results, strength)
        self.entries[-1]["ops"] = dict(report.signature_ops.get("serve", report.ops))
        if STRENGTH_SIGNATURE in modules:
            self.entries[-1]["ops_strength"] = dict(report.signature_ops[STRENGTH_SIGNATURE])

    def coreml(self, variant, model, module, name, checks, height, width):
        from export import coreml
        from export.strength import STRENGTH_DEFAULT, STRENGTH_INPUT, strength_input

        # Free text (training/schema.py): a version Hydra read as a number is Core ML's text all the same.
        metadata = {k: str(v) for k, v in OmegaConf.to_container(self.cfg.export.metadata, resolve=True).items()}
        metadata["description"] = (f"stylepipe {variant} {model}" + (f", style {self.style_name}" if variant == "baked" else "")
                                   + f", {width}x{height}")
        metadata["user"] = self.metadata(variant, model)
        # coreml.convert: baked_strength (the baked model has the strength input) | transfer | predictor
        kind = "baked_strength" if variant == "baked" else model
        from export.mil_executor import UnsupportedMILOp

        mlmodel, executable = coreml.convert(module, kind, height, width, metadata)
        path = self.staging / name
        mlmodel.save(str(path))
        reproducible_mlpackage(path)
        inputs, outputs = coreml.io_description(mlmodel)
        results = {}
        for label, pairs in checks.items():
            results[label] = []
            for feeds, ref in pairs:
                image_feeds = {k: (v[0] * 255.0 if k in ("content_image", "style_image") else v) for k, v in feeds.items()}
                try:
                    result = coreml.predict(path, executable, image_feeds)
                except UnsupportedMILOp as err:
                    raise StylepipeError(f"Core ML {name} cannot be verified here: {err}") from None
                if model == "predictor":
                    results[label].append((np.asarray(result["style_bottleneck"], np.float32).reshape(ref.shape), ref))
                else:
                    results[label].append((np.asarray(result["stylized_image"], np.float32)[None] / 255.0, ref))
        strength = strength_input(default=STRENGTH_DEFAULT) if any(i["name"] == STRENGTH_INPUT for i in inputs) else None
        self.record("coreml", variant, model, path, _with_default(inputs, strength), outputs, results, strength)

    def bender(self, name, reference, height, width):
        from export import bender
        from export.baked import bake

        net = bake(self.transformer, self.bottleneck)
        try:  # the builder refuses a graph that Bender's converter would not map op for op
            graph_def = bender.build_bender_graph(net, height, width)
        except bender.BenderExportError as err:
            raise StylepipeError(f"Bender graph {name}: " + "; ".join(str(err).split("\n")[:6])) from None
        report = bender.check_bender_graph(graph_def)
        path = self.staging / name
        atomic_write_bytes(path, graph_def.SerializeToString(deterministic=True))  # maps in key order
        pairs = [(bender.run_bender_numpy(graph_def, feeds["content_image"][0], report=report)[None], ref)
                 for feeds, ref in reference]
        io = [{"name": "content_image", "shape": [1, height, width, 3], "dtype": "float32"}]
        out = [{"name": "stylized_image", "shape": [1, height, width, 3], "dtype": "float16"}]
        # Bender's converter takes one image input and maps no Mul by a runtime value (docs/bender.md).
        self.record("bender", "baked", "transfer", path, io, out, {None: pairs}, {"input": None, "fixed": 1.0})
        weights_dir = self.staging / f"bender_weights_{self.style_file_name}"
        if not weights_dir.exists():
            bender.write_benderthon_weights(net, weights_dir, f"stylepipe_{self.style_file_name}")

    def run(self):
        from export.strength import STRENGTH_SIGNATURE, neutral_bottleneck
        from export.tf_graph import STYLE_IMAGE_SIZE, make_module

        e = self.cfg.export
        extension = {"frozen_graph": "pb", "tflite_fp16": "tflite", "coreml": "mlpackage", "bender": "bender.pb"}
        if set(e.formats) & STRENGTH_FORMATS:
            self.neutral = neutral_bottleneck(self.predictor, e.neutral_photos, STYLE_IMAGE_SIZE)
        for height, width in e.sizes:
            stylized = self.keras_stylized(height, width)
            baked_ref = [({"content_image": x}, y) for x, y in stylized]
            transfer_ref = [({"content_image": x, "style_bottleneck": self.bottleneck}, y) for x, y in stylized]
            baked_checks = self.strength_checks(height, width, baked_ref) if self.neutral else None
            for fmt in e.formats:
                name = f"baked_{self.style_file_name}_{height}x{width}.{extension[fmt]}"
                if fmt == "bender":
                    self.bender(name, baked_ref, height, width)
                    continue
                module = make_module("baked_strength", self.stylizer, height, width, self.bottleneck, self.neutral.values)
                if fmt == "tflite_fp16":  # no input defaults in TFLite: `serve` keeps strength 1, a second signature takes it
                    module = {"serve": make_module("baked", self.stylizer, height, width, self.bottleneck),
                              STRENGTH_SIGNATURE: module}
                self._format(fmt, "baked", "transfer", module, name, baked_checks, height, width)
            for fmt in e.arbitrary_formats:
                module = make_module("transfer", self.stylizer, height, width)
                name = f"arbitrary_transfer_{height}x{width}.{extension[fmt]}"
                self._format(fmt, "arbitrary", "transfer", module, name, {None: transfer_ref}, height, width)
        predictor_ref = [({"style_image": self.style_image[None]}, self.bottleneck)]
        for fmt in e.arbitrary_formats:
            module = make_module("predictor", self.stylizer, STYLE_IMAGE_SIZE, STYLE_IMAGE_SIZE)
            name = f"arbitrary_predictor_{STYLE_IMAGE_SIZE}x{STYLE_IMAGE_SIZE}.{extension[fmt]}"
            self._format(fmt, "arbitrary", "predictor", module, name, {None: predictor_ref}, STYLE_IMAGE_SIZE, STYLE_IMAGE_SIZE)

    def _format(self, fmt, variant, model, module, name, checks, height, width):
        if fmt == "coreml":
            self.coreml(variant, model, module, name, checks, height, width)
        elif fmt == "tflite_fp16":
            self.tflite_fp16(variant, model, module if isinstance(module, dict) else {"serve": module}, name, checks)
        else:
            self.frozen_graph(variant, model, module, name, checks)


STRENGTH_FORMATS = {"frozen_graph", "tflite_fp16", "coreml"}  # baked formats with the strength input (not Bender)


def _io(names, shapes, strength: dict | None = None) -> list[dict]:
    return _with_default([{"name": n, "shape": s, "dtype": "float32"} for n, s in zip(names, shapes)], strength)


def _with_default(inputs: list[dict], strength: dict | None) -> list[dict]:
    """Inputs with the strength input's default value, if it has one, in its row."""
    if strength is None or strength.get("default") is None:
        return inputs
    return [{**i, "default": strength["default"]} if i["name"] == strength["input"] else i for i in inputs]


def _parity_failures(entries: list[dict], thresholds) -> list[str]:
    failures = []
    for entry in entries:
        need = float(thresholds[entry["format"]])
        if entry["parity"]["psnr_db"] < need:
            failures.append(f"{entry['path']} ({entry['format']}): PSNR {entry['parity']['psnr_db']:.1f} dB < {need}")
    return failures


STAGING_PREFIX = ".export-staging-"


def _previous(output_dir: Path) -> Path:
    return output_dir.with_name(f".{output_dir.name}.previous")


def recover_interrupted_install(output_dir: Path) -> list[str]:
    """Undo what a killed export left: put back an export folder caught between the swap's two renames,
    and remove the staging folders of exports that are no longer running. Returns what it did."""
    import psutil

    done = []
    previous = _previous(output_dir)
    if previous.exists():
        if output_dir.exists():  # the swap finished; only its cleanup was cut short
            shutil.rmtree(previous, ignore_errors=True)
            done.append(f"removed {previous.name}")
        else:
            previous.rename(output_dir)
            done.append(f"restored {output_dir} from {previous.name}")
    for staging in output_dir.parent.glob(f"{STAGING_PREFIX}*"):
        pid = staging.name[len(STAGING_PREFIX):].split("-")[0]
        if not (pid.isdigit() and psutil.pid_exists(int(pid))):
            shutil.rmtree(staging, ignore_errors=True)
            done.append(f"removed {staging.name}")
    return done


def _swap_in(staging: Path, output_dir: Path) -> None:
    """Make the complete staging folder the export folder by two renames on one file system: a kill at
    any moment leaves the old export or the new one (between the renames, the old one as
    `.<name>.previous`, which `recover_interrupted_install` puts back). Earlier styles' artifacts go
    with the old folder; its hidden entries (Hydra's run files of this export) move to the new one."""
    previous = _previous(output_dir)
    shutil.rmtree(previous, ignore_errors=True)
    if output_dir.exists():
        for hidden in output_dir.glob(".*"):
            hidden.rename(staging / hidden.name)
        output_dir.rename(previous)
    staging.rename(output_dir)
    shutil.rmtree(previous, ignore_errors=True)


def export(cfg) -> dict:
    """The export stage; returns the manifest."""
    from training.data.datasets import load_content, load_painting, style_crop
    from training.network.stylizer import load_stylizer
    from training.tracking import check_tracking_store, mlflow_run, record_run_id, scrub_path

    validate_export_config(cfg)
    check_tracking_store(cfg.mlflow.tracking_uri)
    e = cfg.export
    style = baked_style(cfg)  # the trained painting unless export.style / export.style_image name another
    log.info("baking style %s (%s, from %s)", style["name"], style["image"], style["source"])
    model_sha256 = artifact_sha256(Path(e.model_path))  # before loading: the manifest names the file as it was read
    stylizer = load_stylizer(e.model_path)
    content = load_content(cfg.data)
    photos = content.heldout_full[: int(e.parity_photos)]
    style_image = style_crop(load_painting(style["image"]), 256)
    output_dir = Path(e.output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    for note in recover_interrupted_install(output_dir):
        log.info("%s (left by an interrupted export)", note)

    training = training_metadata(Path(e.model_path).parent)
    model_name = training.get("model") or Path(e.model_path).parent.name
    tags = {"stage": "export", "style": style["name"], "model": model_name}
    run_name = cfg.run_name or f"export-{style['name']}-{model_name}"
    with mlflow_run(cfg, run_name, tags=tags, parent_run_id=training.get("mlflow_run_id")) as run:
        import mlflow

        mlflow.log_params({"style": style["name"], "style_image": scrub_path(style["image"]), "style_sha256": style["sha256"],
                           "style_source": style["source"], "trained_style": style["trained"] or "none"})

        staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
        try:
            exporter = Exporter(cfg, stylizer, staging, photos, style, style_image)
            exporter.run()
            if exporter.neutral:
                mlflow.log_params({"neutral_photos": scrub_path(exporter.neutral.photos_dir),
                                   "neutral_photo_count": exporter.neutral.photos})
            failures = _parity_failures(exporter.entries, e.thresholds)
            for entry in exporter.entries:
                key = f"{entry['format']}.{entry['variant']}.{entry['model']}.{Path(entry['path']).stem.split('_')[-1]}"
                mlflow.log_metric(f"psnr_db.{key}", min(entry["parity"]["psnr_db"], 1e3))
                for label, parity in entry["parity"].get("strength", {}).items():
                    mlflow.log_metric(f"psnr_db.{key}.strength_{label}", min(parity["psnr_db"], 1e3))
            if failures:
                raise ExportParityError("export failed parity, previous artifacts left untouched: " + "; ".join(failures))
            for entry in exporter.entries:
                entry["bytes"] = _size_bytes(staging / entry["path"])
                entry["sha256"] = artifact_sha256(staging / entry["path"])
            manifest = {"model": str(e.model_path), "model_sha256": model_sha256, "model_name": model_name,
                        "style": style["name"],  # baked into the `baked` artifacts; the painting and where it came from:
                        "style_image": style["image"], "style_sha256": style["sha256"], "style_source": style["source"],
                        "trained_style": style["trained"],  # the model's own (style.json); None: none recorded
                         # strength 0 of the baked models (export/strength.py); None: no baked format has the input
                         "neutral_bottleneck": exporter.neutral.manifest() if exporter.neutral else None,
                         "thresholds": OmegaConf.to_container(e.thresholds), "artifacts": exporter.entries}
            atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=2))
            record_run_id(staging, run.info.run_id)
            _swap_in(staging, output_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when installed
        mlflow.log_artifact(str(output_dir / "manifest.json"))
        for entry in exporter.entries:
            path = output_dir / entry["path"]
            if path.is_file() and entry["bytes"] < 50_000_000:
                mlflow.log_artifact(str(path), "artifacts")
    return manifest


def training_metadata(train_dir: Path) -> dict:
    """metrics.json of the training that wrote the model (model name, style) and its MLflow run
    (`mlflow_run_id`); {} if none."""
    from training.tracking import recorded_run_id

    try:
        return {**json.loads((train_dir / "metrics.json").read_text()), "mlflow_run_id": recorded_run_id(train_dir)}
    except (OSError, ValueError):
        return {}
