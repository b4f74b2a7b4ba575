"""TensorFlow functions with static shapes for each export variant, and frozen GraphDefs.

Names are the contract with apps: inputs `content_image` [1, H, W, 3] and `style_bottleneck`
[1, 1, 1, 100] or `style_image` [1, 256, 256, 3], all float32 in [0, 1], and the baked variant's
`strength` [1] (export/strength.py); outputs `stylized_image` [1, H, W, 3] in [0, 1] and `style_bottleneck`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.errors import StylepipeError
from training.network.layers import BOTTLENECK_DIM

# The op types exported graphs are made of: tensors, arithmetic, convolutions, padding and resizing.
# A graph with any other op (file or network I/O, py_func, control flow, variables) is refused before
# TensorFlow imports it: importing and running a GraphDef runs whatever ops it holds.
FROZEN_GRAPH_OPS = frozenset({
    "Placeholder", "PlaceholderWithDefault", "Const", "Identity", "NoOp", "StopGradient", "Reshape", "Squeeze",
    "ExpandDims", "ConcatV2",
    "Add", "AddV2", "Sub", "Mul", "RealDiv", "Pow", "Square", "SquaredDifference", "Rsqrt", "Sqrt", "Mean",
    "Maximum", "Minimum", "Relu", "Relu6", "Sigmoid", "Tanh", "BiasAdd", "Conv2D", "Conv2DBackpropInput",
    "DepthwiseConv2dNative", "Pad", "MirrorPad", "Slice", "ResizeNearestNeighbor", "ResizeBilinear",
    "AvgPool", "MaxPool",  # the style predictor's backbones (VGG-16's average pooling, Inception's max pooling)
})
TRAINING_OPS = {"VarHandleOp", "ReadVariableOp", "AssignVariableOp", "VariableV2", "Assign", "ApplyAdam",
                "ResourceApplyAdam", "RandomUniform", "RandomStandardNormal", "StatefulPartitionedCall"}
STYLE_IMAGE_SIZE = 256  # the predictor's input size (Magenta's published predictor: 256 x 256)


def make_module(variant: str, stylizer, height: int, width: int, bottleneck: np.ndarray | None = None,
                neutral: np.ndarray | None = None):
    """A tf.Module whose `serve` function is the variant at a static size.

    variant: "baked" (content -> stylized, `bottleneck` folded in as a constant),
    "baked_strength" (content + strength [1] -> stylized: `bottleneck` at strength 1, `neutral` at 0,
    folded by export.strength.fold_strength), "transfer" (content + bottleneck -> stylized),
    "predictor" (style image -> bottleneck).
    """
    import tensorflow as tf

    transformer = stylizer.get_layer("transformer")
    predictor = stylizer.get_layer("style_predictor")
    module = tf.Module()
    module.models = [transformer, predictor]  # tracked, so a SavedModel carries the weights
    content = tf.TensorSpec([1, height, width, 3], tf.float32, name="content_image")
    if variant == "baked":
        constant = np.asarray(bottleneck, np.float32).reshape(1, 1, 1, BOTTLENECK_DIM)

        @tf.function(input_signature=[content])
        def serve(content_image):
            y = transformer([content_image, tf.constant(constant)], training=False)
            return {"stylized_image": tf.identity(y, name="stylized_image")}
    elif variant == "baked_strength":
        from export.strength import STRENGTH_INPUT, STRENGTH_SHAPE, fold_strength

        folded = fold_strength(transformer, neutral, bottleneck)
        module.models.append(folded)

        @tf.function(input_signature=[content, tf.TensorSpec(STRENGTH_SHAPE, tf.float32, name=STRENGTH_INPUT)])
        def serve(content_image, strength):
            y = folded([content_image, tf.reshape(strength, [1, 1, 1, 1])], training=False)
            return {"stylized_image": tf.identity(y, name="stylized_image")}
    elif variant == "transfer":
        @tf.function(input_signature=[content, tf.TensorSpec([1, 1, 1, BOTTLENECK_DIM], tf.float32, name="style_bottleneck")])
        def serve(content_image, style_bottleneck):
            y = transformer([content_image, style_bottleneck], training=False)
            return {"stylized_image": tf.identity(y, name="stylized_image")}
    elif variant == "predictor":
        @tf.function(input_signature=[tf.TensorSpec([1, STYLE_IMAGE_SIZE, STYLE_IMAGE_SIZE, 3], tf.float32, name="style_image")])
        def serve(style_image):
            return {"style_bottleneck": tf.identity(predictor(style_image, training=False), name="style_bottleneck")}
    else:
        raise ValueError(f"unknown export variant {variant!r}")
    module.serve = serve
    return module


def _frozen_function(module):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = module.serve.get_concrete_function()
    return concrete, convert_variables_to_constants_v2(concrete)


def freeze(module):
    """(GraphDef with every weight a Const, input names, output names) of `module.serve`."""
    concrete, frozen = _frozen_function(module)
    graph_def = frozen.graph.as_graph_def()
    inputs = [t.name.split(":")[0] for t in frozen.inputs]
    outputs = sorted(concrete.structured_outputs)  # identity nodes named like the outputs
    return graph_def, inputs, outputs


def with_input_default(graph_def, name: str, value: np.ndarray):
    """`graph_def` with its placeholder `name` made a PlaceholderWithDefault of `value`: a caller that
    does not feed it gets `value` (TensorFlow's only form of an input default)."""
    import tensorflow as tf

    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    node = next((n for n in out.node if n.name == name and n.op == "Placeholder"), None)
    if node is None:
        raise ValueError(f"no placeholder named {name}")
    default = out.node.add()
    default.name, default.op = f"{name}/default", "Const"
    default.attr["dtype"].type = node.attr["dtype"].type
    default.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.asarray(value, np.float32)))
    node.op = "PlaceholderWithDefault"
    node.input.append(default.name)
    return out


def constant_module(module):
    """A tf.Module with the same `serve` signature but every weight a constant (no variables).

    TFLite converted from it has no VAR_HANDLE/READ_VARIABLE ops, only the network's ops.
    """
    import tensorflow as tf

    concrete, frozen = _frozen_function(module)
    names = sorted(concrete.structured_outputs)  # frozen outputs come flattened in this order
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0]) for t in frozen.inputs]

    @tf.function(input_signature=specs)
    def serve(*args):
        return dict(zip(names, frozen(*args)))

    constant = tf.Module()
    constant.serve = serve
    return constant


def check_frozen_graph(graph_def, inputs: list[str], outputs: list[str]) -> list[str]:
    """Problems that make a GraphDef unfit to ship: variables, training ops, dynamic shapes, missing names."""
    problems = []
    nodes = {n.name: n for n in graph_def.node}
    for node in graph_def.node:
        if node.op in TRAINING_OPS:
            problems.append(f"node {node.name}: {node.op} (a variable or training op) left in the graph")
    for name in inputs + outputs:
        if name not in nodes:
            problems.append(f"no node named {name}")
    for name in inputs:
        if name in nodes:
            dims = [d.size for d in nodes[name].attr["shape"].shape.dim]
            if not dims or any(d < 0 for d in dims):
                problems.append(f"input {name} has a dynamic shape {dims}")
    return problems


class UnsafeGraphError(StylepipeError):
    """A frozen graph that is not a readable GraphDef, or holds ops an exported stylizer never has."""


def check_graph_ops(graph_def, source: str = "graph") -> None:
    """Refuse a GraphDef with an op outside FROZEN_GRAPH_OPS, or with functions (which can hide ops)."""
    unknown = sorted({n.op for n in graph_def.node} - FROZEN_GRAPH_OPS)
    if unknown:
        raise UnsafeGraphError(f"{source}: refused, it holds ops an exported stylizer never has: {', '.join(unknown[:8])}")
    if len(graph_def.library.function):
        raise UnsafeGraphError(f"{source}: refused, it holds {len(graph_def.library.function)} function(s); "
                               "exported stylizers have none")


def load_frozen_graph(path):
    """Read a frozen GraphDef from `path` and check its ops before anything imports it."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        graph_def = tf.compat.v1.GraphDef.FromString(Path(path).read_bytes())
    except (DecodeError, RuntimeWarning) as err:
        raise UnsafeGraphError(f"{path}: not a readable frozen graph ({err})") from None
    except OSError as err:
        raise UnsafeGraphError(f"{path}: cannot be read ({err.strerror})") from None
    check_graph_ops(graph_def, str(path))
    return graph_def


def run_frozen_graph(graph_def, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Execute a frozen GraphDef with TensorFlow, feeding placeholders by name (its ops checked first)."""
    import tensorflow as tf

    check_graph_ops(graph_def)

    names = list(feeds)

    def imported():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    fn = wrapped.prune([wrapped.graph.get_tensor_by_name(f"{n}:0") for n in names],
                       [wrapped.graph.get_tensor_by_name(f"{n}:0") for n in outputs])
    results = fn(*[tf.constant(np.asarray(feeds[n], np.float32)) for n in names])
    return {name: r.numpy() for name, r in zip(outputs, results)}
