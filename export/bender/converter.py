"""A Python replay of Bender's `TFConverter`: which layers Bender would make of a GraphDef.

Bender reads a binary GraphDef, rewrites it with a fixed list of `TFOptimizer`s and maps the
surviving ops to Metal Performance Shaders layers; any other op is skipped silently and disconnects
the network. `check_bender_graph` runs the same rewrites and op -> layer mapping (file by file from
Bender's Swift sources, listed in docs/bender.md) and returns a `BenderReport`: the layers with
their parameters and sizes, the nodes Bender would drop, and whether the network stays connected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from export.bender.spec import BENDER_INSTANCE_NORM_CLAMP, INPUT_NAME, MAX_CONCAT_INPUTS, OUTPUT_NAME


# TFConverter+Mappers.swift setupMappers(): TF op -> Bender layer class.
BENDER_MAPPERS = {
    "Add": "Add", "AddV2": "Add",
    "Relu": "Neuron", "Relu6": "Neuron", "QuantizedRelu": "Neuron", "Tanh": "Neuron", "Sigmoid": "Neuron",
    "MaxPool": "Pooling", "AvgPool": "Pooling",
    "Softmax": "Softmax",
    "Conv2D": "Convolution", "QuantizedConv2D": "Convolution", "DepthwiseConv2dNative": "DepthwiseConvolution",
    "Conv2DBackpropInput": "ConvTranspose",
    "Dense": "FullyConnected",
    "InstanceNormAdd": "InstanceNorm",
    "ConcatV2": "Concat", "Concat": "Concat",
    "BatchNormWithGlobalNormalization": "BatchNorm", "FusedBatchNorm": "BatchNorm", "FusedBatchNormV3": "BatchNorm",
}
IGNORED_OPS = ("Const", "Placeholder")  # TFConverter.ignoredOps
# TFDeleteOptimizers.swift TFIgnoredOpsDeleter.ops
DELETED_OPS = ("NoOp", "ExpandDims", "Cast", "Squeeze", "StopGradient", "CheckNumerics", "Assert", "Equal", "All",
               "Dequantize", "RequantizationRange", "Requantize", "PlaceholderWithDefault", "Identity")
# Nodes that only hold parameters read by the mapper of their consumer (not "dropped").
PARAMETER_OPS = ("Const", "VariableV2", "InstanceNormMul")
NEURON_OPS = ("Relu", "Tanh", "Sigmoid")  # TFOptimizer.addNeuronIfThere fuses only these
_I = re.IGNORECASE  # Regex.swift: NSRegularExpression(options: .caseInsensitive), matched anywhere
STRIP_REGEXES = (re.compile(r"save(_\d+)?/", _I), re.compile(r"Regularizer(_\d+)?/", _I),
                 re.compile(r"Initializer(_\d+)?/", _I))
DROPOUT_REGEX = re.compile(r"dropout(_\d+)?/", _I)
DROPOUT_MUL_REGEX = re.compile(r"dropout(_\d+)?/mul", _I)
MOMENTS_REGEX = re.compile(r"moments(_\d+)?/", _I)
READ_REGEX = re.compile(r".*/read$", _I)


class _Node:
    """Graph/Node.swift: ordered in/out adjacency with Bender's edge operations."""

    def __init__(self, nd):
        self.nd = nd
        self.name = nd.name
        self.op = nd.op
        self.neuron: str | None = None  # Constants.CustomAttr.neuron
        self.fused: list[str] = []  # BiasAdd / neuron nodes folded into this one, in order
        self.edge_in: list[_Node] = []
        self.edge_out: list[_Node] = []

    def __repr__(self):
        return f"<{self.op} {self.name}>"

    def add_incoming(self, other: "_Node") -> None:
        if other not in self.edge_in:
            self.edge_in.append(other)
            if self not in other.edge_out:
                other.edge_out.append(self)

    def replace_incoming(self, old: "_Node", new: "_Node") -> None:
        if old in self.edge_in:
            self.edge_in[self.edge_in.index(old)] = new
            if old in new.edge_out:
                new.edge_out[new.edge_out.index(old)] = self
            else:
                new.edge_out.append(self)

    def delete_incoming(self, node: "_Node") -> None:
        if node in self.edge_in:
            self.edge_in.remove(node)

    def delete_outgoing(self, node: "_Node") -> None:
        if node in self.edge_out:
            self.edge_out.remove(node)

    def remove_from_graph(self) -> None:
        outgoing, incoming = list(self.edge_out), list(self.edge_in)
        for out in outgoing:
            out.delete_incoming(self)
        for inc in incoming:
            inc.delete_outgoing(self)
            for out in outgoing:
                out.add_incoming(inc)
        self.edge_in, self.edge_out = [], []

    def strip(self, recursive: bool = False) -> None:
        outgoing, incoming = list(self.edge_out), list(self.edge_in)
        for out in outgoing:
            out.delete_incoming(self)
        for inc in incoming:
            inc.delete_outgoing(self)
        self.edge_in, self.edge_out = [], []
        if recursive:
            for node in incoming + outgoing:
                node.strip(recursive=True)

    @property
    def lonely(self) -> bool:
        return not self.edge_in and not self.edge_out

    @property
    def is_const_or_var(self) -> bool:
        return self.op in ("Const", "VariableV2")


def _dependency_list(roots: list[_Node], limit: int) -> list[_Node]:
    """DependencyListBuilder.swift, iteratively: pre-order DFS that appends a node once all its inputs
    are placed. Like the Swift code it does not check for repeats (a node reached again after it was
    placed is appended again)."""
    placed: set[int] = set()
    order: list[_Node] = []
    for root in roots:
        stack = [iter([root])]
        while stack:
            try:
                node = next(stack[-1])
            except StopIteration:
                stack.pop()
                continue
            if any(id(i) not in placed for i in node.edge_in):
                continue
            order.append(node)
            placed.add(id(node))
            if len(order) > limit:
                return order
            stack.append(iter(list(node.edge_out)))
    return order


@dataclass
class BenderLayer:
    """One layer Bender would create: its class, the TF node it came from and its parameters."""

    id: str
    type: str
    op: str
    inputs: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    out_size: tuple[int, int, int] | None = None  # (h, w, f) per the layer's initialize()
    computes: str = ""  # the TF node whose value this layer outputs: `id`, or the BiasAdd / neuron fused into it

    def __post_init__(self):
        self.computes = self.computes or self.id


@dataclass
class BenderReport:
    layers: list[str]
    dropped: list[str]
    ok: bool
    problems: list[str]
    details: list[BenderLayer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = f"Bender: {'OK' if self.ok else 'NOT OK'}, {len(self.layers)} layers, {len(self.dropped)} dropped"
        return "\n".join([head, *(f"  problem: {p}" for p in self.problems), *(f"  note: {n}" for n in self.notes)])


class _Replay:
    """TFGraph.swift + the optimizers of TFConverter.default(additionalOptimizers: [TFInstanceNormOptimizer()])."""

    def __init__(self, graph_def):
        self.problems: list[str] = []
        self.notes: list[str] = []
        by_name: dict[str, _Node] = {}
        nodes = []
        for nd in graph_def.node:
            node = _Node(nd)
            if nd.name in by_name:
                self.problems.append(f"duplicate node name {nd.name!r}")
            by_name[nd.name] = node
            nodes.append(node)
        self.by_name = by_name
        for node in nodes:
            for inp in node.nd.input:
                if inp.startswith("^"):
                    continue  # TFGraph.initNodes filters control inputs
                src = by_name.get(inp)
                if src is None:
                    reason = "an output index (Bender looks inputs up by exact node name)" if ":" in inp else "no such node"
                    self.problems.append(f"edge {inp!r} -> {node.name!r} is dropped: {reason}")
                    continue
                node.add_incoming(src)
        roots = [n for n in nodes if not n.edge_in]
        self.nodes = _dependency_list(roots, limit=4 * len(nodes) + 16)
        if len(self.nodes) != len(nodes) or len({id(n) for n in self.nodes}) != len(self.nodes):
            names = [n.name for n in self.nodes]
            repeated = sorted({x for x in names if names.count(x) > 1})
            missing = sorted(set(by_name) - set(names))
            self.problems.append(
                "Bender's dependency sort (sortNodes) does not list every node exactly once "
                f"(repeated: {repeated[:5]}, unreachable/cyclic: {missing[:5]}); reorder the GraphDef so each "
                "Const comes right before its first consumer")

    # -- TFOptimizer.swift
    @staticmethod
    def _add_neuron_if_there(node: _Node) -> None:
        if len(node.edge_out) == 1 and node.edge_out[0].op in NEURON_OPS:
            nxt = node.edge_out[0]
            node.neuron = nxt.op
            node.fused.append(nxt.name)
            for output in list(nxt.edge_out):
                output.replace_incoming(nxt, node)
            nxt.strip()

    def strip_training_ops(self):
        for node in list(self.nodes):
            if any(r.search(node.name) for r in STRIP_REGEXES):
                node.strip()

    def delete_ignored_ops(self):
        for node in list(self.nodes):
            if node.op in DELETED_OPS:
                node.remove_from_graph()

    def delete_dropout(self):
        """TFDeleteSubgraphOptimizer.optimize with TFDeleteDropout's input (Shape) / output (dropout/mul) rules."""
        mappings: dict[str, dict] = {}
        for node in list(self.nodes):
            m = DROPOUT_REGEX.search(node.name)
            if not m:
                continue
            key = node.name[: m.end()]
            entry = mappings.setdefault(key, {"inputs": None, "outputs": None})
            if node.op == "Shape":
                ins = [i for i in node.edge_in if not DROPOUT_REGEX.search(i.name)]
                entry["inputs"] = (entry["inputs"] or []) + ins
            elif DROPOUT_MUL_REGEX.search(node.name):
                outs = [o for o in node.edge_out if not DROPOUT_REGEX.search(o.name)]
                entry["outputs"] = (entry["outputs"] or []) + outs
            node.strip()
        for entry in mappings.values():
            if entry["inputs"] is not None and entry["outputs"] is not None:
                for out in entry["outputs"]:
                    for inp in entry["inputs"]:
                        out.add_incoming(inp)

    def process_variables(self):
        """TFVariableProcessor.swift."""
        for node in list(self.nodes):
            if node.op == "VariableV2":
                assign = next((o for o in node.edge_out if o.op == "Assign"), None)
                read = next((o for o in node.edge_out if READ_REGEX.search(o.name)), None)
                if assign is not None and read is not None and read.edge_out:
                    output = read.edge_out[0]
                    read.strip()
                    value = next((i for i in assign.edge_in if i.op == "Const"), None)
                    if value is not None:
                        assign.strip()
                        output.add_incoming(node)
                        node.add_incoming(value)
                    else:
                        assign.delete_incoming(node)
                        assign.strip(recursive=True)
                        output.add_incoming(node)
            elif READ_REGEX.search(node.name) and len(node.edge_in) == 1 and node.edge_in[0].op == "Const" \
                    and not node.edge_in[0].edge_in and len(node.edge_out) == 1:
                variable, output = node.edge_in[0], node.edge_out[0]
                node.strip()
                output.add_incoming(variable)

    def dense_substitution(self):
        """TFDenseSubstitution.swift: MatMul + (BiasAdd | Add) -> Dense."""
        for node in list(self.nodes):
            if node.op != "MatMul":
                continue
            add = next((o for o in node.edge_out if o.op in ("BiasAdd", "Add")), None)
            weight = next((i for i in node.edge_in if i.is_const_or_var), None)
            inp = next((i for i in node.edge_in if not i.is_const_or_var), None)
            if add is None or weight is None or inp is None:
                continue
            add.op = "Dense"
            add.add_incoming(weight)
            pre = next((i for i in inp.edge_in if i.op != "Const"), None) if inp.op == "Reshape" else None
            if pre is not None:
                add.add_incoming(pre)
                inp.strip()
            else:
                add.add_incoming(inp)
            node.strip()
            self._add_neuron_if_there(add)

    def remove_reshapes(self):
        """TFReshapeOptimizer.swift: a Reshape with a Const shape is removed (input rewired to output)."""
        for node in list(self.nodes):
            if node.op in ("Reshape", "QuantizedReshape"):
                shape = next((i for i in node.edge_in if i.op == "Const"), None)
                if shape is not None:
                    shape.strip()
                    node.remove_from_graph()

    def fold_dilations(self):
        """TFConvDilationOptimizer: SpaceToBatchND -> Conv2D -> BatchToSpaceND becomes a dilated SAME conv."""
        for node in list(self.nodes):
            if node.op not in ("Conv2D", "DepthwiseConv2dNative"):
                continue
            stb = next((i for i in node.edge_in if i.op == "SpaceToBatchND"), None)
            if stb is None or len(node.edge_out) != 1 or node.edge_out[0].op != "BatchToSpaceND":
                continue
            bts = node.edge_out[0]
            for c in [i for i in bts.edge_in if i.op == "Const"]:
                c.strip()
            bts.remove_from_graph()
            consts = [i for i in stb.edge_in if i.op == "Const"]
            block = next((c for c in consts if c.name.endswith("/block_shape")), None)
            if block is not None:
                shape = _const_array(block.nd)
                if shape is not None and shape.size == 2 and len(node.nd.attr["dilations"].list.i) == 4:
                    node.nd.attr["dilations"].list.i[1] = int(shape[0])
                    node.nd.attr["dilations"].list.i[2] = int(shape[1])
                    node.nd.attr["padding"].s = b"SAME"
            for c in consts:
                c.strip()
            stb.remove_from_graph()

    def fuse_convs(self):
        """TFConvOptimizer.swift: Conv2D + (BiasAdd | Add with a Const/Variable) [+ Relu/Tanh/Sigmoid]."""
        for node in list(self.nodes):
            if node.op not in ("Conv2D", "DepthwiseConv2dNative") or len(node.edge_out) != 1:
                continue
            bias_add = node.edge_out[0]
            if bias_add.op in ("BiasAdd", "Add"):
                bias = next((i for i in bias_add.edge_in if i.is_const_or_var), None)
                if bias is not None:
                    node.add_incoming(bias)
                    node.fused.append(bias_add.name)
                    for output in list(bias_add.edge_out):
                        output.replace_incoming(bias_add, node)
                    bias_add.strip()
            self._add_neuron_if_there(node)

    def fold_instance_norms(self):
        """TFInstanceNormOptimizer.swift (the converter's additional optimizer)."""
        mappings: dict[str, dict] = {}
        reported = set()
        for node in list(self.nodes):
            m = MOMENTS_REGEX.search(node.name)
            if not m:
                continue
            key = node.name[: m.end()]
            entry = mappings.setdefault(key, {"input": None, "output": None, "strip": []})
            inputs = [i for i in node.edge_in if not MOMENTS_REGEX.search(i.name)]
            outputs = [o for o in node.edge_out if not MOMENTS_REGEX.search(o.name)]
            if len(inputs) == 1:
                if entry["input"] is None:
                    entry["input"] = inputs[0]
                elif entry["input"] is not inputs[0]:
                    self.problems.append(f"{key}: moments read two different inputs ({entry['input'].name}, {inputs[0].name})")
            elif len(outputs) == 1:
                found = self._instance_norm_chain(outputs[0])
                if found is not None:
                    sub, add, pow_, div, mul, add_final = found
                    entry["strip"] += [sub, add, pow_, div]
                    add_final.op = "InstanceNormAdd"
                    mul.op = "InstanceNormMul"
                    entry["output"] = add_final
                else:
                    reported.add(key)
                    self.problems.append(
                        f"{key}: the nodes after the moments do not form Bender's instance-norm pattern "
                        f"(Add -> Pow -> RealDiv(Sub) -> Mul -> Add, op types literally 'Add', each with one consumer): "
                        f"{self._describe_chain(outputs[0])}")
            entry["strip"].append(node)
        for key, entry in mappings.items():
            if entry["input"] is not None and entry["output"] is not None:
                entry["output"].add_incoming(entry["input"])
                for node in entry["strip"]:
                    node.strip()
            elif key not in reported:
                self.problems.append(f"{key}: instance-norm pattern not recognised (input found: "
                                     f"{entry['input'] is not None}, output found: {entry['output'] is not None}); "
                                     "its nodes stay in the graph")

    @staticmethod
    def _instance_norm_chain(add):
        def single(n):
            return n.edge_out[0] if len(n.edge_out) == 1 else None
        if add.op != "Add":
            return None
        pow_ = single(add)
        if pow_ is None or pow_.op != "Pow":
            return None
        div = single(pow_)
        if div is None or div.op != "RealDiv" or len(div.edge_out) != 1:
            return None
        sub = next((i for i in div.edge_in if i.op == "Sub"), None)
        mul = div.edge_out[0]
        if sub is None or mul.op != "Mul" or len(mul.edge_out) != 1:
            return None
        add_final = mul.edge_out[0]
        if add_final.op != "Add":
            return None
        return sub, add, pow_, div, mul, add_final

    @staticmethod
    def _describe_chain(node, depth=6) -> str:
        parts = []
        while node is not None and depth:
            parts.append(f"{node.op}({node.name}, {len(node.edge_out)} consumer(s))")
            node = node.edge_out[0] if len(node.edge_out) == 1 else None
            depth -= 1
        return " -> ".join(parts)

    def run(self):
        for step in (self.strip_training_ops, self.delete_ignored_ops, self.delete_dropout, self.process_variables,
                     self.dense_substitution, self.remove_reshapes, self.fold_dilations, self.fuse_convs,
                     self.fold_instance_norms):
            step()
            self.nodes = [n for n in self.nodes if not n.lonely]  # GraphProtocol.removeLonely


def _const_array(nd) -> np.ndarray | None:
    """Bender's NodeDef.valueData(): tensor_content of a Const, or None when it has none."""
    if nd.op != "Const":
        return None
    t = nd.attr["value"].tensor
    if not t.tensor_content:
        return None
    dtype = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8", 19: "<f2"}.get(t.dtype)
    if dtype is None:
        return None
    arr = np.frombuffer(t.tensor_content, dtype)
    shape = [d.size for d in t.tensor_shape.dim]
    return arr.reshape(shape) if int(np.prod(shape)) == arr.size else arr


def _const_shape(nd) -> list[int] | None:
    if "shape" in nd.attr and nd.attr["shape"].WhichOneof("value") == "shape":
        return [d.size for d in nd.attr["shape"].shape.dim]
    if nd.op == "Const":
        return [d.size for d in nd.attr["value"].tensor.tensor_shape.dim]
    return None


def _param(node: _Node | None, what: str, layer: str, problems: list[str]) -> np.ndarray | None:
    """Weight bytes as Bender reads them (Const, or the Const feeding a VariableV2), float32 only."""
    if node is None:
        return None
    src = node if node.op == "Const" else (node.edge_in[0] if node.edge_in and node.edge_in[0].op == "Const" else None)
    if src is None:
        problems.append(f"{layer}: {what} {node.name!r} has no frozen value (needs a ParameterLoader)")
        return None
    t = src.nd.attr["value"].tensor
    if not t.tensor_content:
        where = "float_val" if len(t.float_val) else "no tensor_content"
        problems.append(f"{layer}: {what} {src.name!r} is stored in {where}; Bender reads only tensor_content "
                        "and would load an empty buffer")
        return None
    if t.dtype != 1:
        problems.append(f"{layer}: {what} {src.name!r} has dtype {t.dtype}, Bender reads float32")
        return None
    return _const_array(src.nd)


def _weight_data(node: _Node, layer: str, problems: list[str], read_bias: bool = True):
    """TFWeightData.getWeightData: (weights, bias, weight_shape, bias_node)."""
    var_inputs = [i for i in node.edge_in if i.is_const_or_var]
    bias_node = None
    if len(var_inputs) == 1:
        weights_node = var_inputs[0]
    elif len(var_inputs) == 2:
        s0, s1 = (_const_shape(v.nd) or [] for v in var_inputs)
        if len(s0) == 1:
            bias_node, weights_node = var_inputs
        elif len(s1) == 1:
            weights_node, bias_node = var_inputs
        elif len(s0) == 4 and not s1:
            weights_node = var_inputs[0]
        elif len(s1) == 4 and not s0:
            weights_node = var_inputs[1]
        else:
            problems.append(f"{layer}: Bender's getWeightData fails (two parameter inputs, neither is a bias)")
            return None, None, None, None
    else:
        problems.append(f"{layer}: Bender's getWeightData needs 1 or 2 parameter inputs, found {len(var_inputs)}")
        return None, None, None, None
    shape = _const_shape(weights_node.nd)
    weights = _param(weights_node, "weights", layer, problems)
    bias = _param(bias_node, "bias", layer, problems) if bias_node is not None and read_bias else None
    if weights is not None and shape and weights.size == int(np.prod(shape)):
        weights = weights.reshape(shape)
    return weights, bias, shape, bias_node


def _attr_ints(nd, name, default):
    return list(nd.attr[name].list.i) if name in nd.attr and nd.attr[name].list.i else default


def depthwise_weights_as_applied(filt: np.ndarray) -> np.ndarray:
    """The depthwise kernel MPS applies, in TF's [kh, kw, C, 1] orientation, for a DepthwiseConv2dNative filter.

    convMapper hands MPS `HWIOtoIOWH(filter)`, i.e. [C][kw][kh] with kh varying fastest, and a descriptor
    with kernelWidth = kh, kernelHeight = kw; MPSCNNDepthWiseConvolution reads its weights as
    [C][kernelHeight][kernelWidth], so its tap at row y, column x is filter[x, y]: the filter transposed.
    """
    return np.ascontiguousarray(filt.transpose(1, 0, 2, 3))


def _map_layer(node: _Node, problems: list[str], notes: list[str]) -> BenderLayer:
    """The TFConverter mapper of node.op, keeping what the executor needs."""
    kind = BENDER_MAPPERS[node.op]
    layer = BenderLayer(id=node.name, type=kind, op=node.op, computes=node.fused[-1] if node.fused else node.name)
    nd = node.nd
    p = layer.params
    if kind in ("Convolution", "DepthwiseConvolution"):
        strides = _attr_ints(nd, "strides", [1, 1, 1, 1])
        p["stride"] = (int(strides[1]), int(strides[2]))
        dil = _attr_ints(nd, "dilations", [1, 1, 1, 1])
        p["dilation"] = (int(dil[1]), int(dil[2]))
        p["padding"] = "valid" if nd.attr["padding"].s == b"VALID" else "same"  # PaddingType.fromTF
        pads = [0, 0, 0, 0]
        if "explicit_paddings" in nd.attr:
            arr = nd.attr["explicit_paddings"]
            content = arr.tensor.tensor_content if arr.WhichOneof("value") == "tensor" else b""
            values = np.frombuffer(content, "<i4").tolist() if content else []
            if sum(v != 0 for v in values) > 1:
                pads = values[2:6]
            elif arr.WhichOneof("value") == "list" and any(arr.list.i):
                problems.append(f"{node.name}: explicit_paddings is a list(int) attribute; Bender reads it only as "
                                "a tensor (attr.tensor.tensorContent) and ignores this padding")
        if nd.attr["padding"].s == b"EXPLICIT":
            notes.append(f"{node.name}: padding EXPLICIT is SAME for Bender (PaddingType.fromTF)")
        # Convolution.swift uses paddings[0], [1] as left/right and [2], [3] as top/bottom.
        p["paddings"] = [int(v) for v in pads]
        mode = nd.attr["pad_mode"].s.decode() if "pad_mode" in nd.attr else ""
        p["edge_mode"] = "clamp" if mode in ("REFLECT", "SYMMETRIC") else "zero"
        p["neuron"] = node.neuron
        w, b, shape, _ = _weight_data(node, node.name, problems)
        if kind == "DepthwiseConvolution" and w is not None:
            if w.ndim != 4 or w.shape[3] != 1:
                problems.append(f"{node.name}: depthwise filter {list(w.shape)}: Bender gives MPS as many output "
                                "channels as input channels (channel multiplier 1 only)")
            else:
                w = depthwise_weights_as_applied(w)
                notes.append(f"{node.name}: Bender hands MPS the depthwise filter transposed "
                             "(HWIOtoIOWH, kernel width and height swapped); the executor applies it so")
        p["weights"], p["bias"] = w, b
        channels = None if w is None else w.shape[2] if kind == "DepthwiseConvolution" else w.shape[-1]
        if channels is not None and b is not None and b.size != channels:
            problems.append(f"{node.name}: bias has {b.size} values for {channels} output channels")
    elif kind == "ConvTranspose":
        strides = _attr_ints(nd, "strides", [1, 1, 1, 1])
        p["stride"] = (int(strides[1]), int(strides[2]))
        # ConvTranspose is built without useBias, so whatever getWeightData calls the bias is not read.
        w, _, shape, bias_node = _weight_data(node, node.name, problems, read_bias=False)
        p["weights"] = w  # [kh, kw, out, in]
        if bias_node is not None and bias_node.name == nd.input[0]:
            notes.append(f"{node.name}: input_sizes is taken as a 'bias' by getWeightData, but ConvTranspose is "
                         "built with useBias false, so it is ignored (output size = input x stride)")
    elif kind == "InstanceNorm":
        shift_node = next((i for i in node.edge_in if i.is_const_or_var), None)
        mul = next((i for i in node.edge_in if i.op == "InstanceNormMul"), None)
        scale_node = mul.edge_in[0] if mul is not None and mul.edge_in and mul.edge_in[0].is_const_or_var else None
        if shift_node is None or scale_node is None:
            problems.append(f"{node.name}: inormMapper cannot find scale/shift ('Could not parse Instance norm node')")
        p["scale"] = _param(scale_node, "scale", node.name, problems)
        p["shift"] = _param(shift_node, "shift", node.name, problems)
    elif kind == "Neuron":
        p["neuron"] = node.op
    elif kind == "Concat":
        axis_node = next((i for i in node.edge_in if i.name in (f"{node.name}/axis", f"{node.name}/concat_dim")), None)
        values = list(axis_node.nd.attr["value"].tensor.int_val) if axis_node is not None else []
        axis = {1: "w", 2: "h", 3: "f"}.get(values[0]) if values else None  # LayerSizeAxis.fromTF
        if axis is None:
            problems.append(f"{node.name}: concatMapper needs a Const '{node.name}/axis' with int_val 1, 2 or 3 "
                            f"(found {values or 'none'})")
        p["axis"] = axis
        repeated = {i for i in node.nd.input if list(node.nd.input).count(i) > 1}
        if repeated:
            problems.append(f"{node.name}: repeated inputs {sorted(repeated)} (Bender keeps one edge per node)")
    elif kind == "Add":
        pass
    else:
        notes.append(f"{node.name}: {kind} is mapped but not modelled by run_bender_numpy")
    return layer


def _layer_size(layer: BenderLayer, in_sizes: list, problems: list[str]):
    """outputSize as each Bender layer's initialize() computes it."""
    if not in_sizes or any(s is None for s in in_sizes):
        return None
    h, w, f = in_sizes[0]
    p = layer.params
    if layer.type in ("Convolution", "DepthwiseConvolution"):
        wt = p.get("weights")
        if wt is None or wt.ndim != 4:
            return None
        kh, kw, cin, cout = wt.shape
        if layer.type == "DepthwiseConvolution":
            cout = cin  # DepthwiseConvolution: outputChannels = the filter's input channels
        if cin != f:
            problems.append(f"{layer.id}: weights expect {cin} input channels, the input has {f}")
        sy, sx = p["stride"]
        pads = p["paddings"]
        ph, pw = h + pads[2] + pads[3], w + pads[0] + pads[1]
        if p["padding"] == "same":
            return ph // sy, pw // sx, cout
        return (ph - kh) // sy + 1, (pw - kw) // sx + 1, cout
    if layer.type == "ConvTranspose":
        wt = p.get("weights")
        if wt is None or wt.ndim != 4:
            return None
        if wt.shape[3] != f:
            problems.append(f"{layer.id}: filter expects {wt.shape[3]} input channels, the input has {f}")
        sy, sx = p["stride"]
        return h * sy, w * sx, int(wt.shape[2])
    if layer.type == "InstanceNorm":
        for key in ("scale", "shift"):
            v = p.get(key)
            if v is not None and v.size != f:
                problems.append(f"{layer.id}: {key} has {v.size} values for {f} channels")
        return h, w, f
    if layer.type in ("Neuron", "Add"):
        return h, w, f
    if layer.type == "Concat" and p.get("axis"):
        axis = "hwf".index(p["axis"])
        if len(in_sizes) > MAX_CONCAT_INPUTS:
            problems.append(f"{layer.id}: Concat takes at most {MAX_CONCAT_INPUTS} inputs (maxInputTextures), has {len(in_sizes)}")
        for s in in_sizes[1:]:
            if any(s[i] != in_sizes[0][i] for i in range(3) if i != axis):
                problems.append(f"{layer.id}: Concat inputs differ off the {p['axis']} axis: {in_sizes}")
                return None
        if p["axis"] == "f" and any(s[2] % 4 for s in in_sizes):
            problems.append(f"{layer.id}: Concat along f needs multiples of 4 channels")
        out = list(in_sizes[0])
        out[axis] = sum(s[axis] for s in in_sizes)
        return tuple(out)
    return None


def check_bender_graph(graph_def, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME) -> BenderReport:
    """Replay Bender's TFConverter on `graph_def` (a GraphDef or its serialized bytes).

    Runs TFConverter.default's optimizers plus TFInstanceNormOptimizer in order, then the op -> layer
    mapping and the layers' validate()/initialize() size rules. `dropped` lists nodes that are neither
    mapped, nor parameters of a mapped layer, nor removed by a rewrite (Bender skips them silently).
    `ok` means: nothing dropped, no problem found, one Start, every layer on a path from the input to
    the output, and the output is the last layer (Network.initialize takes nodes.last as output).
    """
    from tensorflow.core.framework import graph_pb2

    parsed = graph_pb2.GraphDef()  # a copy: the replay rewrites attributes (dilation folding) in place
    if isinstance(graph_def, (bytes, bytearray)):
        parsed.ParseFromString(bytes(graph_def))
    else:
        parsed.CopyFrom(graph_def)
    replay = _Replay(parsed)
    replay.run()
    problems, notes = replay.problems, replay.notes
    layers: list[BenderLayer] = []
    processed: dict[str, BenderLayer] = {}
    dropped: list[str] = []
    placeholders = []
    for node in replay.nodes:
        if node.op in BENDER_MAPPERS:
            layer = _map_layer(node, problems, notes)
            layer.inputs = [i.name for i in node.edge_in if i.name in processed]
            layers.append(layer)
            processed[node.name] = layer
        elif node.op == "Placeholder":
            placeholders.append(node.name)
            shape = [d.size for d in node.nd.attr["shape"].shape.dim]
            size = (shape[1], shape[2], shape[3]) if len(shape) == 4 and min(shape[1:]) > 0 else None
            start = BenderLayer(id=node.name, type="Start", op="Placeholder", out_size=size)
            layers.insert(0, start)
            processed[node.name] = start
        elif node.op not in PARAMETER_OPS:
            dropped.append(f"{node.name} ({node.op})")
    if len(placeholders) != 1:
        problems.append(f"expected one Placeholder (Start), found {placeholders}")
    elif placeholders[0] != input_name:
        problems.append(f"the Placeholder is {placeholders[0]!r}, expected {input_name!r}")
    if dropped:
        problems.append(f"{len(dropped)} node(s) have no Bender mapping and would be skipped, disconnecting the "
                        f"network: {', '.join(dropped[:8])}{' ...' if len(dropped) > 8 else ''}")
    # layer validate() rules and sizes
    sizes: dict[str, tuple | None] = {}
    for layer in layers:
        if layer.type == "Start":
            sizes[layer.id] = layer.out_size
            continue
        n_in = len(layer.inputs)
        if layer.type == "Add":
            if n_in != 2:
                problems.append(f"{layer.id}: Add needs exactly two input layers, has {n_in}")
            elif sizes.get(layer.inputs[0]) != sizes.get(layer.inputs[1]):
                problems.append(f"{layer.id}: Add inputs differ in size: {sizes.get(layer.inputs[0])} vs "
                                f"{sizes.get(layer.inputs[1])}")
        elif layer.type != "Concat" and n_in != 1:
            problems.append(f"{layer.id}: {layer.type} needs exactly one input layer, has {n_in}")
        layer.out_size = _layer_size(layer, [sizes.get(i) for i in layer.inputs], problems)
        sizes[layer.id] = layer.out_size
        if layer.type == "InstanceNorm" and layer.out_size and layer.params.get("scale") is not None \
                and layer.params.get("shift") is not None:
            n_max = float(np.sqrt(max(layer.out_size[0] * layer.out_size[1] - 1, 1)))
            bound = float(np.max(np.abs(layer.params["scale"]) * n_max + np.abs(layer.params["shift"])))
            layer.params["bound"] = bound
            if bound > BENDER_INSTANCE_NORM_CLAMP:
                notes.append(f"{layer.id}: |scale| * sqrt(N-1) + |shift| = {bound:.1f}; values beyond "
                             f"+-{BENDER_INSTANCE_NORM_CLAMP:g} are possible and Bender's kernel clamps them")
    # connectivity: Network.set(layers:) wants one input layer; the output is nodes.last
    sources = [layer.id for layer in layers if not layer.inputs]
    if len(sources) != 1:
        problems.append(f"the network has {len(sources)} input layers ({sources[:6]}); Bender expects one (Start)")
    by_id = {layer.id: layer for layer in layers}
    consumers: dict[str, list[str]] = {layer.id: [] for layer in layers}
    for layer in layers:
        for i in layer.inputs:
            consumers[i].append(layer.id)
    output = next((layer.id for layer in layers if layer.computes == output_name), None)
    if output is None:
        problems.append(f"output {output_name!r} is not a Bender layer (nor fused into one)")
    else:
        if layers and layers[-1].id != output:
            problems.append(f"the last layer is {layers[-1].id!r}, not the output {output_name!r} "
                            "(Bender returns nodes.last)")
        forward = _reach(input_name, lambda n: consumers.get(n, []))
        backward = _reach(output, lambda n: by_id[n].inputs if n in by_id else [])
        if output not in forward:
            problems.append(f"the output {output_name!r} is not reachable from {input_name!r}")
        off_path = [layer.id for layer in layers if layer.id not in forward or layer.id not in backward]
        if off_path:
            problems.append(f"{len(off_path)} layer(s) not on a path from input to output: {off_path[:6]}")
    return BenderReport(layers=[layer.type for layer in layers], dropped=dropped, ok=not problems,
                        problems=problems, details=layers, notes=notes)


def _reach(start: str, step) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in step(todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen
