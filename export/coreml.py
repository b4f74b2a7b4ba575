"""Core ML export: an mlprogram (fp16, iOS 16+) per variant and size, with image input/output.

Apps pass a CVPixelBuffer straight in: `content_image` / `style_image` are RGB ImageTypes with
scale 1/255 (pixels 0..255 -> the model's [0, 1]); `stylized_image` is an RGB ImageType (the
graph emits NCHW 0..255 for it). The baked model's `strength` is a [1] tensor input with the default
value 1 (an optional input, Core ML spec 7 / iOS 16): an app that does not set it gets full style.
Converted from a frozen GraphDef (coremltools takes a GraphDef
object; it fails on a .pb path). Predictions need macOS, so on Linux the MIL program is executed
by `export.mil_executor`.
"""

from __future__ import annotations

import numpy as np

from export.strength import STRENGTH_DEFAULT, STRENGTH_INPUT, STRENGTH_SHAPE
from export.tf_graph import STYLE_IMAGE_SIZE, constant_module, freeze
from training.network.layers import BOTTLENECK_DIM

IMAGE_OUTPUT_NODE = "coreml_stylized_image"  # renamed to `stylized_image` in the model
BOTTLENECK_OUTPUT_NODE = "coreml_style_bottleneck"  # renamed to `style_bottleneck`


def _coreml_module(module, variant: str, height: int, width: int):
    """Wrap a variant's `serve` so an image output is NCHW 0..255, as Core ML's ImageType needs."""
    import tensorflow as tf

    constant = constant_module(module)
    content = tf.TensorSpec([1, height, width, 3], tf.float32, name="content_image")
    wrapper = tf.Module()
    if variant == "baked":
        @tf.function(input_signature=[content])
        def serve(content_image):
            y = constant.serve(content_image)["stylized_image"]
            return {"pixels": tf.identity(tf.transpose(y * 255.0, [0, 3, 1, 2]), name=IMAGE_OUTPUT_NODE)}
    elif variant == "baked_strength":
        @tf.function(input_signature=[content, tf.TensorSpec(STRENGTH_SHAPE, tf.float32, name=STRENGTH_INPUT)])
        def serve(content_image, strength):
            y = constant.serve(content_image, strength)["stylized_image"]
            return {"pixels": tf.identity(tf.transpose(y * 255.0, [0, 3, 1, 2]), name=IMAGE_OUTPUT_NODE)}
    elif variant == "transfer":
        @tf.function(input_signature=[content, tf.TensorSpec([1, 1, 1, BOTTLENECK_DIM], tf.float32, name="style_bottleneck")])
        def serve(content_image, style_bottleneck):
            y = constant.serve(content_image, style_bottleneck)["stylized_image"]
            return {"pixels": tf.identity(tf.transpose(y * 255.0, [0, 3, 1, 2]), name=IMAGE_OUTPUT_NODE)}
    else:
        @tf.function(input_signature=[tf.TensorSpec([1, STYLE_IMAGE_SIZE, STYLE_IMAGE_SIZE, 3], tf.float32, name="style_image")])
        def serve(style_image):
            y = constant.serve(style_image)["style_bottleneck"]
            return {"bottleneck": tf.identity(y, name=BOTTLENECK_OUTPUT_NODE)}
    wrapper.serve = serve
    return wrapper


def convert(module, variant: str, height: int, width: int, metadata: dict):
    """The mlprogram of one variant ("baked", "baked_strength", "transfer" or "predictor") at a static size."""
    import coremltools as ct

    graph_def, _, _ = freeze(_coreml_module(module, variant, height, width))
    image = lambda name, size: ct.ImageType(  # noqa: E731
        name=name, shape=(1, *size, 3), scale=1 / 255.0, color_layout=ct.colorlayout.RGB)
    if variant == "predictor":
        inputs = [image("style_image", (STYLE_IMAGE_SIZE, STYLE_IMAGE_SIZE))]
        outputs = [ct.TensorType(name=BOTTLENECK_OUTPUT_NODE)]
    else:
        inputs = [image("content_image", (height, width))]
        if variant == "transfer":
            inputs.append(ct.TensorType(name="style_bottleneck", shape=(1, 1, 1, BOTTLENECK_DIM)))
        if variant == "baked_strength":
            inputs.append(ct.TensorType(name=STRENGTH_INPUT, shape=STRENGTH_SHAPE,
                                        default_value=np.full(STRENGTH_SHAPE, STRENGTH_DEFAULT, np.float32)))
        outputs = [ct.ImageType(name=IMAGE_OUTPUT_NODE, color_layout=ct.colorlayout.RGB)]
    mlmodel = ct.convert(graph_def, source="tensorflow", convert_to="mlprogram", inputs=inputs, outputs=outputs,
                         minimum_deployment_target=ct.target.iOS16, compute_precision=ct.precision.FLOAT16)
    executable = mlmodel  # as converted, for the Linux executor; renaming below changes only the saved spec
    spec = mlmodel.get_spec()
    if variant == "predictor":
        ct.utils.rename_feature(spec, BOTTLENECK_OUTPUT_NODE, "style_bottleneck")
    else:
        ct.utils.rename_feature(spec, IMAGE_OUTPUT_NODE, "stylized_image")
    described = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    described.author = metadata.get("author", "stylepipe")
    described.license = metadata.get("license", "")
    described.short_description = metadata.get("description", "")
    described.version = metadata.get("version", "")
    described.user_defined_metadata.update({k: str(v) for k, v in metadata.get("user", {}).items()})
    for feature in described.input_description:
        described.input_description[feature] = {
            "content_image": f"RGB photo, {width}x{height}, pixels 0..255",
            "style_image": f"RGB style image, {STYLE_IMAGE_SIZE}x{STYLE_IMAGE_SIZE}, pixels 0..255",
            "style_bottleneck": "style embedding from the style predictor, 1x1x1x100",
            STRENGTH_INPUT: "style strength, 0 (neutral) to 1 (the full baked style); optional, default 1",
        }[feature]
    for feature in described.output_description:
        described.output_description[feature] = {
            "stylized_image": f"stylized RGB image, {width}x{height}",
            "style_bottleneck": "style embedding, 1x1x1x100",
        }[feature]
    return described, executable


def io_description(mlmodel) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as [{name, shape, dtype}] for the manifest."""
    def describe(features):
        rows = []
        for f in features:
            kind = f.type.WhichOneof("Type")
            if kind == "imageType":
                rows.append({"name": f.name, "shape": [1, int(f.type.imageType.height), int(f.type.imageType.width), 3],
                             "dtype": "image_rgb"})
            else:
                rows.append({"name": f.name, "shape": [int(d) for d in f.type.multiArrayType.shape], "dtype": "float32"})
        return rows

    description = mlmodel.get_spec().description
    return describe(description.input), describe(description.output)


def input_defaults(mlmodel) -> dict[str, np.ndarray]:
    """{name: value} of the optional tensor inputs with a default value (what Core ML feeds when left out)."""
    defaults = {}
    for feature in mlmodel.get_spec().description.input:
        array = feature.type.multiArrayType
        if feature.type.isOptional and feature.type.WhichOneof("Type") == "multiArrayType":
            kind = array.WhichOneof("defaultOptionalValue")
            if kind is not None:
                defaults[feature.name] = np.full([int(d) for d in array.shape], getattr(array, kind), np.float32)
    return defaults


def predict(path, executable, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a saved model: Core ML itself on macOS, else the MIL program on the numpy executor.

    Image inputs are (H, W, 3) arrays in 0..255; the image output comes back under
    `stylized_image` as an (H, W, 3) array in 0..255. An optional input left out gets its default
    value, as Core ML gives it.
    """
    import platform

    if platform.system() == "Darwin":  # the real runtime: MLModel.predict on PIL images
        import coremltools as ct
        from PIL import Image

        model = ct.models.MLModel(str(path))
        feeds = {k: Image.fromarray(np.clip(v, 0, 255).astype(np.uint8)) if v.ndim == 3 else v for k, v in inputs.items()}
        outputs = model.predict(feeds)
        return {k: np.asarray(v, np.float32) for k, v in outputs.items()}
    from export.mil_executor import run_mil_program

    outputs = run_mil_program(executable, {**input_defaults(executable), **inputs})  # image output as an app reads it: uint8 pixels
    renames = {IMAGE_OUTPUT_NODE: "stylized_image", BOTTLENECK_OUTPUT_NODE: "style_bottleneck"}
    return {renames.get(k, k): v for k, v in outputs.items()}
