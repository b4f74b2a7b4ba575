"""The realtime network (model=realtime) exported as Core ML and Bender: the export stage verifies both
against Keras, the Bender graph keeps to Bender's converter rules (and broken ones are refused), and
its rewrites (bias on a constant channel, eps matched, filters in MPS's orientation) are exact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import (compose_export, const_node, copy_graph, graph_node, insert_after, op_node, photo,
                     random_bottleneck, realtime_stylizer)
from export.baked import bake, reference_forward
from export.bender import (BENDER_INSTANCE_NORM_EPSILON, BENDER_MIN_PSNR_DB, OUTPUT_NAME, BenderExportError,
                           build_bender_graph, check_bender_graph, run_bender_numpy, to_tensorflow_graph_def)
from training.weights.parity import psnr_db

SIZE = (64, 96)
RESIDUAL = ["DepthwiseConvolution", "Convolution", "InstanceNorm", "Neuron",
            "DepthwiseConvolution", "Convolution", "InstanceNorm", "Add"]
EXPECTED_LAYERS = (["Start", "Convolution", "Convolution"] + RESIDUAL * 5
                   + ["ConvTranspose", "InstanceNorm", "Neuron", "ConvTranspose", "Neuron"])
LAST_TRANSPOSE = "transformer/expand/conv2/conv/conv2d_transpose"


# Every design option off: the plain network, the base case of the Bender rewrites tested below.
PLAIN = {"half_res_blocks": 0, "full_res_channels": 0, "border_pad": 0}


@pytest.fixture(scope="module")
def stylizer():
    return realtime_stylizer(seed=1, published_predictor=True, **PLAIN)


@pytest.fixture(scope="module")
def style():
    return random_bottleneck(5)


@pytest.fixture(scope="module")
def net(stylizer, style):
    return bake(stylizer.get_layer("transformer"), style)


@pytest.fixture(scope="module")
def graph(net):
    return build_bender_graph(net, *SIZE)


@pytest.fixture(scope="module")
def report(graph):
    return check_bender_graph(graph)


def keras_stylized(stylizer, image, style):
    return np.asarray(stylizer.get_layer("transformer")([image, style], training=False))[0]


def assert_graph_computes_keras(stylizer, style, net, graph, report, photos):
    """reference_forward, the graph in TensorFlow and Bender's executor in float32 (with Bender's eps) all give
    the Keras model's output on each photo; with Bender's float16 numerics it stays above the threshold."""
    for name in photos:
        image = photo(*SIZE, name)
        want = keras_stylized(stylizer, image, style)
        np.testing.assert_allclose(reference_forward(net, image[0]), want, atol=1e-5)
        np.testing.assert_allclose(run_tensorflow(graph, image), want, atol=1e-5)
        fp32 = run_bender_numpy(graph, image[0], fp16=False, eps=BENDER_INSTANCE_NORM_EPSILON, clamp=None, report=report)
        np.testing.assert_allclose(fp32, want, atol=1e-4)
        assert psnr_db(run_bender_numpy(graph, image[0], report=report), want) >= BENDER_MIN_PSNR_DB, name


def run_tensorflow(graph_def, image):
    import tensorflow as tf

    with tf.compat.v1.Graph().as_default() as g:
        tf.compat.v1.import_graph_def(to_tensorflow_graph_def(graph_def), name="")
        with tf.compat.v1.Session(graph=g) as session:
            return session.run(f"{OUTPUT_NAME}:0", {"content_image:0": image})[0]


# ---- the Bender graph --------------------------------------------------------------------------

def test_bender_graph_maps_op_for_op(graph, report):
    """Every node is mapped, a parameter, or rewritten away; zero SAME convs (no pad_mode, zero edges);
    the head conv carries one extra channel, the constant that holds the last conv's bias."""
    assert report.ok, report.summary()
    assert report.layers == EXPECTED_LAYERS
    assert report.dropped == []
    assert {n.op for n in graph.node}.isdisjoint({"MirrorPad", "Pad", "ResizeNearestNeighbor", "AddV2", "Rsqrt"})
    assert [n.name for n in graph.node if n.op == "BiasAdd"] == [f"transformer/contract/conv{i}/BiasAdd" for i in (1, 2)]
    convs = [layer for layer in report.details if layer.type in ("Convolution", "DepthwiseConvolution")]
    assert all(layer.params["edge_mode"] == "zero" for layer in convs)
    contract = [layer for layer in convs if layer.id.startswith("transformer/contract/")]
    assert [(layer.params["stride"], layer.params["neuron"], layer.params["bias"] is not None) for layer in contract] \
        == [((2, 2), "Relu", True)] * 2
    head, last = (layer for layer in report.details if layer.type == "ConvTranspose")
    assert head.out_size == (SIZE[0] // 2, SIZE[1] // 2, 25) and last.out_size == (*SIZE, 3)
    assert report.details[-1].id == OUTPUT_NAME


def test_bender_graph_computes_the_keras_model(stylizer, style, net, graph, report):
    """The graph is the model: TensorFlow (orientations undone) and the executor in float32 with Bender's
    eps give reference_forward, which is Keras; with Bender's numerics it stays above the threshold."""
    assert_graph_computes_keras(stylizer, style, net, graph, report, ("chelsea.jpg", "astronaut.jpg"))


def test_bender_eps_is_matched_and_the_clamp_guarded(stylizer, style, net):
    """Bender's instance norm adds 1e-4 to the variance whatever the graph says: left as the model's own
    eps (a prescaled 1e-3), it costs far more than float16; matched, float16 is all that is left."""
    image = photo(*SIZE, "rocket.jpg")
    want = keras_stylized(stylizer, image, style)
    unmatched = build_bender_graph(net, *SIZE, match_epsilon=False)
    fp32 = dict(fp16=False, clamp=None)
    assert psnr_db(run_bender_numpy(unmatched, image[0], **fp32), want) < 45
    assert psnr_db(run_bender_numpy(build_bender_graph(net, *SIZE), image[0], **fp32), want) > 100
    # the guard's powers of two keep every norm inside Bender's +-10 clamp
    assert not any("clamps them" in note for note in check_bender_graph(build_bender_graph(net, *SIZE)).notes)
    assert any("clamps them" in note for note in check_bender_graph(
        build_bender_graph(net, *SIZE, clamp_guard=False)).notes)


def test_nearest_upsampling_network_maps_too():
    """model.upsample=nearest: identity ConvTranspose + zero SAME 3x3 conv; the last conv's bias and
    sigmoid are fused into it by Bender, which then computes the output."""
    stylizer = realtime_stylizer(seed=2, upsample="nearest", residual_blocks=1, **PLAIN)
    style = random_bottleneck(6)
    graph = build_bender_graph(bake(stylizer.get_layer("transformer"), style), *SIZE)
    report = check_bender_graph(graph)
    assert report.ok, report.summary()
    assert report.layers[-3:] == ["Neuron", "ConvTranspose", "Convolution"]
    assert report.details[-1].params["neuron"] == "Sigmoid" and report.details[-1].computes == OUTPUT_NAME
    image = photo(*SIZE, "coffee.jpg")
    want = keras_stylized(stylizer, image, style)
    fp32 = run_bender_numpy(graph, image[0], fp16=False, eps=BENDER_INSTANCE_NORM_EPSILON, clamp=None, report=report)
    np.testing.assert_allclose(fp32, want, atol=1e-4)
    assert psnr_db(run_bender_numpy(graph, image[0], report=report), want) >= BENDER_MIN_PSNR_DB


def test_detail_head_maps_too():
    """model.half_res_blocks / full_res_channels: the separable block at 1/2 resolution (its norm included),
    the transposed conv to 8 channels (its bias on a constant channel of the block before) and the 5x5
    conv that makes RGB, with the sigmoid fused by Bender; the graph computes the Keras model."""
    stylizer = realtime_stylizer(seed=3, residual_blocks=1, **PLAIN | {"half_res_blocks": 1, "full_res_channels": 8, "full_res_kernel": 5})
    style = random_bottleneck(7)
    net = bake(stylizer.get_layer("transformer"), style)
    assert [(c.scope, c.activation) for c in net.expand] == [
        ("transformer/expand/conv1/conv", "relu"), ("transformer/expand/half1", "relu"),
        ("transformer/expand/conv2/conv", "relu"), ("transformer/expand/conv3/conv", "sigmoid")]
    graph = build_bender_graph(net, *SIZE)
    report = check_bender_graph(graph)
    assert report.ok, report.summary()
    assert report.layers[-10:] == ["ConvTranspose", "InstanceNorm", "Neuron", "DepthwiseConvolution", "Convolution",
                                   "InstanceNorm", "Neuron", "ConvTranspose", "Neuron", "Convolution"]
    assert report.details[-1].params["neuron"] == "Sigmoid" and report.details[-1].computes == OUTPUT_NAME
    assert_graph_computes_keras(stylizer, style, net, graph, report, ("coffee.jpg", "astronaut.jpg"))


def test_border_pad_maps_too():
    """model.border_pad: the reflect pad built from one-hot convs and ConcatV2 (concatenations of
    concatenations past Bender's 10 inputs), the crop a VALID one-hot depthwise conv; the graph computes
    the Keras model, and the padded photo leaves the output's size as the input's."""
    stylizer = realtime_stylizer(seed=6, residual_blocks=1, **PLAIN | {"border_pad": 16})
    style = random_bottleneck(8)
    net = bake(stylizer.get_layer("transformer"), style)
    assert net.border_pad == 16
    graph = build_bender_graph(net, *SIZE)
    report = check_bender_graph(graph)
    assert report.ok, report.summary()
    assert report.dropped == []
    assert {n.op for n in graph.node}.isdisjoint({"MirrorPad", "Pad", "StridedSlice", "Slice"})
    crop = next(layer for layer in report.details if layer.id == "transformer/border_crop/depthwise")
    assert crop.type == "DepthwiseConvolution" and crop.out_size == (SIZE[0] // 4, SIZE[1] // 4, 48)
    assert report.details[-1].out_size == (*SIZE, 3)
    assert_graph_computes_keras(stylizer, style, net, graph, report, ("coffee.jpg", "rocket.jpg"))


def test_configured_design_maps_too():
    """configs/model/realtime.yaml's design, both options together (border pad and detail head): the
    graph keeps to Bender's rules and computes the Keras model."""
    stylizer = realtime_stylizer(seed=7)
    style = random_bottleneck(9)
    net = bake(stylizer.get_layer("transformer"), style)
    graph = build_bender_graph(net, *SIZE)
    report = check_bender_graph(graph)
    assert report.ok, report.summary()
    assert report.dropped == []
    assert report.layers[-4:] == ["Neuron", "ConvTranspose", "Neuron", "Convolution"]
    assert_graph_computes_keras(stylizer, style, net, graph, report, ("fruits.jpg",))


def test_depthwise_hand_over_is_read_transposed_by_mps():
    """Bender's convMapper gives a DepthwiseConv2dNative filter to MPS as HWIOtoIOWH(filter) with kernelWidth
    and kernelHeight swapped; MPSCNNDepthWiseConvolution reads weights[C][kernelHeight][kernelWidth]. Done
    index by index as those sources do, the kernel MPS applies is the filter transposed."""
    from export.bender.converter import depthwise_weights_as_applied
    from export.bender.graph import bender_depthwise_filter

    filt = np.random.default_rng(3).normal(size=(3, 3, 5, 1)).astype(np.float32)  # [kh, kw, C, 1], not symmetric
    kh, kw, channels, out = filt.shape
    data = np.empty(filt.size, np.float32)
    for h in range(kh):
        for w in range(kw):
            for i in range(channels):
                for o in range(out):
                    data[h + kh * (w + kw * (o + out * i))] = filt[h, w, i, o]  # Helpers.swift HWIOtoIOWH
    kernel_width, kernel_height = kh, kw  # ConvSize(kernelWidth: kernelHeight, kernelHeight: kernelWidth)
    mps = data.reshape(channels, kernel_height, kernel_width)  # [C][row][column] as MPS reads it
    applied = depthwise_weights_as_applied(filt)[..., 0]  # [row, column, C]
    np.testing.assert_array_equal(applied.transpose(2, 0, 1), mps)
    assert not np.array_equal(applied, filt[..., 0])
    np.testing.assert_array_equal(depthwise_weights_as_applied(bender_depthwise_filter(filt)), filt)


def test_transposed_conv_bias_rides_on_a_constant_channel(net):
    from dataclasses import replace

    from export.bender.graph import fold_transpose_bias

    folded = fold_transpose_bias(net)
    head, last = folded.expand
    assert last.bias is None and net.expand[1].bias is not None
    assert head.out_channels == net.expand[0].out_channels + 1 and (head.gamma[-1], head.beta[-1]) == (0, 1)
    image = photo(*SIZE, "chelsea.jpg")[0]
    np.testing.assert_allclose(reference_forward(folded, image), reference_forward(net, image), atol=1e-6)
    # overlapping taps (kernel 3, stride 2): some output pixels would get the bias twice
    overlapping = replace(net, expand=[net.expand[0], replace(net.expand[1], kernel=np.zeros((3, 3, 3, 24), np.float32))])
    with pytest.raises(BenderExportError, match="overlaps its taps"):
        fold_transpose_bias(overlapping)


# ---- broken graphs -----------------------------------------------------------------------------

def test_a_lone_bias_add_after_the_transposed_conv_is_dropped(graph):
    """The form Bender cannot take: ConvTranspose (no bias) -> BiasAdd -> Sigmoid."""
    bias = op_node(f"{LAST_TRANSPOSE}/BiasAdd", "BiasAdd", [LAST_TRANSPOSE, f"{LAST_TRANSPOSE}/bias"])
    broken = insert_after(graph, LAST_TRANSPOSE, bias, [const_node(f"{LAST_TRANSPOSE}/bias", np.zeros(3, np.float32))])
    report = check_bender_graph(broken)
    assert not report.ok
    assert report.dropped == [f"{LAST_TRANSPOSE}/BiasAdd (BiasAdd)"]


def test_a_broken_instance_norm_pattern_is_refused(graph):
    g = copy_graph(graph)
    graph_node(g, "transformer/residual/residual3/conv2/StyleNorm/add").op = "AddV2"
    report = check_bender_graph(g)
    assert not report.ok
    assert any("residual3/conv2/StyleNorm/moments/" in p and "pattern" in p for p in report.problems)


def test_a_depthwise_channel_multiplier_is_refused(graph):
    g = copy_graph(graph)
    filt = graph_node(g, "transformer/residual/residual1/conv1/depthwise/weights").attr["value"].tensor
    filt.tensor_shape.dim[2].size, filt.tensor_shape.dim[3].size = 24, 2
    report = check_bender_graph(g)
    assert not report.ok
    assert any("channel multiplier 1 only" in p for p in report.problems)


# ---- Core ML and the export stage ----------------------------------------------------------------

@pytest.mark.slow
def test_export_stage_writes_and_verifies_core_ml_and_bender(stylizer, tmp_path):
    """`python -m pipelines.export` on a realtime model: Core ML (baked, arbitrary transfer and predictor)
    and Bender, each checked against Keras by the stage itself; the benderthon weight files beside them."""
    from export.mil_executor import mil_ops_used
    from export.stage import export

    model_path = tmp_path / "model.keras"
    stylizer.save(model_path)
    manifest = export(compose_export(tmp_path, model_path, [
        "export.sizes=[[64,96]]", "export.parity_photos=2", "export.style=starry",
        "export.formats=[coreml,bender]", "export.arbitrary_formats=[coreml]"]))
    out = tmp_path / "outputs" / "export"
    assert json.loads((out / "manifest.json").read_text())["artifacts"] == manifest["artifacts"]
    kinds = {(a["format"], a["variant"], a["model"]): a for a in manifest["artifacts"]}
    assert set(kinds) == {("coreml", "baked", "transfer"), ("bender", "baked", "transfer"),
                          ("coreml", "arbitrary", "transfer"), ("coreml", "arbitrary", "predictor")}
    for (fmt, variant, model), entry in kinds.items():
        assert entry["parity"]["psnr_db"] >= manifest["thresholds"][fmt], entry
        assert entry["parity"]["photos"] == (1 if model == "predictor" else 2)
    import coremltools as ct

    ops = mil_ops_used(ct.models.MLModel(str(out / kinds["coreml", "baked", "transfer"]["path"]), skip_model_load=True))
    assert ops["conv_transpose"] == 2
    weights = {p.name.removeprefix("stylepipe_starry-"): p.stat().st_size for p in (out / "bender_weights_starry").iterdir()}
    assert weights["transformer-residual-residual1-conv1-depthwise-weights-0"] == 4 * 48 * 3 * 3
    assert weights["transformer-expand-conv2-conv-weights-0"] == 4 * 3 * 2 * 2 * 24
    assert weights["transformer-expand-conv2-conv-biases-0"] == 4 * 3


@pytest.mark.slow
def test_export_stage_verifies_the_configured_design_in_every_format(tmp_path):
    """configs/model/realtime.yaml's design (border pad and detail head; one residual block, for time):
    the stage writes the four baked formats (strength input included where it exists) and verifies each
    against Keras."""
    from export.stage import export

    stylizer = realtime_stylizer(seed=4, published_predictor=True, residual_blocks=1)
    model_path = tmp_path / "model.keras"
    stylizer.save(model_path)
    manifest = export(compose_export(tmp_path, model_path, [
        "export.sizes=[[64,96]]", "export.parity_photos=1", "export.style=starry", "export.arbitrary_formats=[]"]))
    baked = {a["format"]: a for a in manifest["artifacts"] if a["variant"] == "baked"}
    assert set(baked) == {"frozen_graph", "tflite_fp16", "coreml", "bender"}
    for fmt, entry in baked.items():
        assert entry["parity"]["psnr_db"] >= manifest["thresholds"][fmt], entry
