"""TFLite fp16 export, the GPU delegate's op rules, and running a model with LiteRT.

`tf.lite.experimental.Analyzer(gpu_compatibility=True)` accepts anything in TF 2.21, so the
rules of `tensorflow/lite/tools/versioning/gpu_compatibility.cc` that matter for this network
are checked here, on the flatbuffer itself.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# Builtin ops the GPU delegate (OpenCL/Metal) runs; anything else falls back or fails.
GPU_DELEGATE_OPS = {
    "ABS", "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "COS", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
    "DIV", "ELU", "EXP", "FULLY_CONNECTED", "HARD_SWISH", "LOG", "LOGISTIC", "MAX_POOL_2D", "MAXIMUM",
    "MEAN", "MINIMUM", "MIRROR_PAD", "MUL", "PAD", "PRELU", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SIN", "SLICE", "SOFTMAX", "SQRT", "SQUARE",
    "SQUARED_DIFFERENCE", "SUB", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
}
# Ops that only appear when shapes are dynamic: the delegate needs static shapes.
DYNAMIC_SHAPE_OPS = {"SHAPE", "PACK", "STRIDED_SLICE", "FILL", "BROADCAST_TO"}


@dataclass
class GpuReport:
    ops: Counter = field(default_factory=Counter)  # every subgraph's ops together
    problems: list[str] = field(default_factory=list)
    signature_ops: dict[str, Counter] = field(default_factory=dict)  # each signature's subgraph's ops

    @property
    def ok(self) -> bool:
        return not self.problems


def check_gpu_delegate_rules(flatbuffer: bytes) -> GpuReport:
    """Apply the GPU delegate's rules to every op of a TFLite model."""
    from tensorflow.lite.python import schema_py_generated as schema

    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    report = GpuReport()
    subgraph_ops = [Counter() for _ in range(model.SubgraphsLength())]
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)

        def constant(tensor_index):
            """The tensor's constant data, or None when it is computed at run time."""
            tensor = graph.Tensors(tensor_index)
            buffer = model.Buffers(tensor.Buffer())
            return buffer.DataAsNumpy() if buffer is not None and buffer.DataLength() else None

        for i in range(graph.InputsLength()):
            tensor = graph.Tensors(graph.Inputs(i))
            signature = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else tensor.ShapeAsNumpy()
            if np.any(np.asarray(signature) < 0):
                report.problems.append(f"input {tensor.Name().decode()} has a dynamic shape {[int(d) for d in signature]}")
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            report.ops[name] += 1
            subgraph_ops[s][name] += 1
            where = f"op {i} {name}" if model.SubgraphsLength() == 1 else f"subgraph {s} op {i} {name}"
            inputs = [op.Inputs(j) for j in range(op.InputsLength())]
            if name in DYNAMIC_SHAPE_OPS:
                report.problems.append(f"{where}: a dynamic-shape op; export with static shapes")
            elif name not in GPU_DELEGATE_OPS:
                report.problems.append(f"{where}: not supported by the GPU delegate")
            if name == "MIRROR_PAD":
                options = schema.MirrorPadOptions()
                table = op.BuiltinOptions()
                options.Init(table.Bytes, table.Pos)
                paddings = graph.Tensors(inputs[1])
                if options.Mode() != schema.MirrorPadMode.REFLECT:
                    report.problems.append(f"{where}: only REFLECT mirror padding is supported")
                if constant(inputs[1]) is None or tuple(paddings.ShapeAsNumpy()) not in ((4, 2), (3, 2)):
                    report.problems.append(f"{where}: paddings must be a constant 4x2 or 3x2 tensor")
            elif name == "SLICE" and (len(inputs) < 3 or len(graph.Tensors(inputs[0]).ShapeAsNumpy()) not in (3, 4)
                                      or constant(inputs[1]) is None or constant(inputs[2]) is None):
                report.problems.append(f"{where}: needs a 3- or 4-dimensional input and constant begin and size")
            elif name == "MEAN" and (constant(inputs[1]) is None or graph.Tensors(inputs[1]).Type() != schema.TensorType.INT32):
                report.problems.append(f"{where}: axes must be a constant int32 tensor")
            elif name in ("RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR") and constant(inputs[1]) is None:
                report.problems.append(f"{where}: the output size must be constant")
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        report.signature_ops[signature.SignatureKey().decode()] = subgraph_ops[signature.SubgraphIndex()]
    return report


def convert(module, signature_key: str, fp16: bool = True) -> bytes:
    """TFLite with fp16 weights (fp32 when `fp16` is false) from a variable-free tf.Module
    (`export.tf_graph.constant_module`).

    Going through a SavedModel keeps the signature and tensor names (`content_image`, ...).
    """
    return convert_signatures({signature_key: module.serve}, fp16)


def convert_signatures(functions: dict, fp16: bool = True) -> bytes:
    """One TFLite model with a signature per {key: tf.function of a variable-free module}; the
    converter stores a constant the signatures share (the network's weights) once."""
    import tensorflow as tf

    holder = tf.Module()
    for i, function in enumerate(functions.values()):
        # Not `serve`: with several signatures the converter takes a module with a `serve`
        # attribute for a `model.export` archive and keeps that one function alone.
        setattr(holder, f"signature_{i}", function)
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(holder, saved, signatures=dict(functions))
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(functions))
        if fp16:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def signature_io(path, signature_key: str) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of a signature as [{name, shape, dtype}] for the manifest."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(signature_key)
    describe = lambda details: [  # noqa: E731
        {"name": n, "shape": [int(d) for d in v["shape"]], "dtype": np.dtype(v["dtype"]).name} for n, v in details.items()]
    return describe(runner.get_input_details()), describe(runner.get_output_details())


def run_signature(path, signature_key: str, inputs: dict[str, np.ndarray], num_threads: int = 2) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=num_threads).get_signature_runner(signature_key)
    return runner(**{k: np.asarray(v, np.float32) for k, v in inputs.items()})


@dataclass
class TfliteCost:
    """Per-frame work of a TFLite model: convolution/matmul FLOPs and activation bytes."""

    flops: int  # 2 x multiply-adds of CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, FULLY_CONNECTED
    activation_bytes: int  # every op's output tensor, as float32 (DEQUANTIZE outputs are weights: left out)
    largest_activation_bytes: int  # the largest of them, as float32


def tflite_cost(flatbuffer: bytes) -> TfliteCost:
    """FLOPs and activation sizes of a static-shape TFLite model, from its tensor shapes.

    Element-wise work (norms, activations, padding, resizing) is not counted as FLOPs, as in the
    usual convention; it shows in the activation bytes, the memory traffic a phone's GPU is bound by.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    flops = activations = largest = 0
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        shape = lambda index: [int(d) for d in graph.Tensors(index).ShapeAsNumpy()]  # noqa: E731
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            if name == "DEQUANTIZE":
                continue
            out = shape(op.Outputs(0))
            out_elements = int(np.prod(out))
            if name == "CONV_2D":  # filter [O, kh, kw, I]
                _, kh, kw, cin = shape(op.Inputs(1))
                flops += 2 * out_elements * kh * kw * cin
            elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, O]
                _, kh, kw, _ = shape(op.Inputs(1))
                flops += 2 * out_elements * kh * kw
            elif name == "TRANSPOSE_CONV":  # inputs: output shape, filter [O, kh, kw, I], input
                _, kh, kw, cin = shape(op.Inputs(1))
                flops += 2 * int(np.prod(shape(op.Inputs(2)))) * kh * kw * out[-1]
            elif name == "FULLY_CONNECTED":  # filter [O, I]
                flops += 2 * out_elements * shape(op.Inputs(1))[-1]
            for j in range(op.OutputsLength()):
                size = int(np.prod(shape(op.Outputs(j)))) * 4
                activations += size
                largest = max(largest, size)
    return TfliteCost(flops=flops, activation_bytes=activations, largest_activation_bytes=largest)


METADATA_NAME = "stylepipe"  # the TFLite metadata entry naming an artifact's style


def with_metadata(flatbuffer: bytes, values: dict, name: str = METADATA_NAME) -> bytes:
    """`flatbuffer` with a metadata entry `name` holding `values` as JSON (the model's own metadata
    table, as TFLite Support writes `TFLITE_METADATA`; interpreters ignore entries they do not know)."""
    import json

    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(values, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path, name: str = METADATA_NAME) -> dict | None:
    """The JSON metadata entry `name` of a .tflite file (`with_metadata`); None: it has none."""
    import json
    from pathlib import Path

    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(Path(path).read_bytes()), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == name:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None
