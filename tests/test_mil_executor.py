"""The numpy MIL executor on real Core ML conversions (vs TensorFlow / Keras) and on Builder
programs (vs numpy formulas), fp16 storage, image I/O, and ops it does not know."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import CONTENT_DIR, REPO, STYLE_DIR

ct = pytest.importorskip("coremltools")
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from training.weights.parity import psnr_db  # noqa: E402
from export.mil_executor import (  # noqa: E402
    SUPPORTED_OPS,
    MILExecutionWarning,
    UnsupportedMILOp,
    mil_ops_used,
    run_mil_program,
)

PUBLISHED = REPO / "models" / "magenta-published"
# What ct.convert emits for the alpha-0.25 transfer network (TF concrete function, static shape).
TRANSFER_OPS = {"const", "pad", "conv", "relu", "reduce_mean", "sub", "mul", "add", "rsqrt",
                "resize_nearest_neighbor", "sigmoid", "cast"}


def photo(name: str, height: int, width: int) -> np.ndarray:
    """A real photo scaled to cover height x width and centre-cropped: (H, W, 3) uint8."""
    from PIL import Image

    image = Image.open(CONTENT_DIR / name).convert("RGB")
    s = max(height / image.height, width / image.width)
    image = image.resize((max(width, round(image.width * s)), max(height, round(image.height * s))), Image.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)), np.uint8)


# --------------------------------------------------------------------------------------------
# A converted TF function with the network's kinds of ops, fp32 and fp16
# --------------------------------------------------------------------------------------------

H, W = 40, 48


@pytest.fixture(scope="module")
def tf_function():
    import tensorflow as tf

    rng = np.random.default_rng(1)

    def he(*shape):
        return tf.constant(rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), size=shape).astype(np.float32))

    w1, b1 = he(5, 5, 3, 8), tf.constant(rng.normal(0, 0.1, 8).astype(np.float32))
    wd, w2, w3 = he(3, 3, 8, 2), he(3, 3, 16, 12), he(3, 3, 12, 3)

    @tf.function(input_signature=[tf.TensorSpec([1, H, W, 3], tf.float32, name="image")])
    def f(x):
        h = tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]], mode="REFLECT")
        h = tf.nn.relu(tf.nn.conv2d(h, w1, 1, "VALID") + b1)          # conv valid + bias
        h = tf.nn.depthwise_conv2d(h, wd, [1, 1, 1, 1], "SAME")       # groups, multiplier 2
        mean = tf.reduce_mean(h, [1, 2], keepdims=True)
        var = tf.reduce_mean(tf.square(h - mean), [1, 2], keepdims=True)
        h = (h - mean) * tf.math.rsqrt(var + 1e-5)
        h = tf.nn.relu(tf.nn.conv2d(h, w2, 2, "SAME"))                 # stride 2 SAME: asymmetric pad
        h = tf.image.resize(h, [H, W], method="nearest")               # resize_nearest_neighbor
        h = tf.pad(h, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        h = tf.nn.conv2d(h, w3, 1, "VALID")
        h = tf.compat.v1.image.resize_nearest_neighbor(h, [2 * H, 2 * W])  # upsample_nearest_neighbor
        return tf.sigmoid(h)

    x = photo("chelsea.jpg", H, W)[None].astype(np.float32) / 255.0
    return f, x, f(x).numpy()


def convert_tf_function(f, precision):
    return ct.convert([f.get_concrete_function()], source="tensorflow", convert_to="mlprogram",
                      inputs=[ct.TensorType(name="image", shape=(1, H, W, 3))],
                      minimum_deployment_target=ct.target.iOS16, compute_precision=precision)


def test_tf_function_fp32_program_matches_tensorflow(tf_function):
    f, x, reference = tf_function
    mlmodel = convert_tf_function(f, ct.precision.FLOAT32)
    used = mil_ops_used(mlmodel)
    assert {"conv", "pad", "relu", "sigmoid", "reduce_mean", "rsqrt", "upsample_nearest_neighbor",
            "resize_nearest_neighbor"} <= set(used)
    assert "cast" not in used  # an fp32 program: nothing is rounded to fp16

    (name, out), = run_mil_program(mlmodel, {"image": x}).items()
    assert out.dtype == np.float32 and out.shape == reference.shape == (1, 2 * H, 2 * W, 3)
    np.testing.assert_allclose(out, reference, rtol=0, atol=2e-5)


def test_tf_function_fp16_program_rounds_every_tensor_and_stays_close(tf_function):
    f, x, reference = tf_function
    mlmodel = convert_tf_function(f, ct.precision.FLOAT16)
    (name, out), = run_mil_program(mlmodel, {"image": x}).items()
    assert out.dtype == np.float16  # iOS16 with FLOAT16: fp16 inputs and outputs
    quality = psnr_db(out, reference)
    assert quality >= 40.0
    assert quality < 100.0  # fp16 rounding happened (an fp32 run gives > 120 dB)


# --------------------------------------------------------------------------------------------
# The real transfer network (Magenta's published weights, a real style), as the export ships it
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published_transfer():
    from PIL import Image

    from training.weights.magenta_import import (
        PUBLISHED_PREDICTOR_INT8,
        PUBLISHED_TRANSFER_FP16,
        import_transfer,
        run_tflite,
        verified_path,
    )
    from training.network.magenta_network import build_transfer_network

    transfer = build_transfer_network(alpha=0.25)
    import_transfer(transfer, verified_path(PUBLISHED, PUBLISHED_TRANSFER_FP16))
    style = Image.open(STYLE_DIR / "starry_night.jpg").convert("RGB").resize((256, 256), Image.BICUBIC)
    style = np.asarray(style, np.float32)[None] / 255.0
    bottleneck = run_tflite(verified_path(PUBLISHED, PUBLISHED_PREDICTOR_INT8), [style]).reshape(1, 1, 1, 100)
    return transfer, bottleneck.astype(np.float32)


def test_baked_transfer_network_with_image_io_matches_keras(published_transfer, tmp_path):
    import tensorflow as tf

    transfer, bottleneck = published_transfer
    height, width = 96, 128

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="content_image")])
    def baked(content_image):
        y = transfer([content_image, tf.constant(bottleneck)], training=False)
        return tf.transpose(y * 255.0, [0, 3, 1, 2])  # NCHW 0..255, as an ImageType output needs

    mlmodel = ct.convert(
        [baked.get_concrete_function()], source="tensorflow", convert_to="mlprogram",
        inputs=[ct.ImageType(name="content_image", shape=(1, height, width, 3), scale=1 / 255.0,
                             color_layout=ct.colorlayout.RGB)],
        outputs=[ct.ImageType(name="Identity", color_layout=ct.colorlayout.RGB)],
        minimum_deployment_target=ct.target.iOS16, compute_precision=ct.precision.FLOAT16)
    assert set(mil_ops_used(mlmodel)) == TRANSFER_OPS

    results = {}
    for name in ("chelsea.jpg", "astronaut.jpg"):
        pixels = photo(name, height, width)
        out = run_mil_program(mlmodel, {"content_image": pixels})["Identity"]
        assert out.dtype == np.uint8 and out.shape == (height, width, 3)
        reference = transfer([pixels[None].astype(np.float32) / 255.0, bottleneck], training=False).numpy()[0]
        assert psnr_db(out / 255.0, reference) >= 40.0, name
        unrounded = run_mil_program(mlmodel, {"content_image": pixels}, image_output="float")["Identity"]
        assert unrounded.dtype == np.float32 and np.abs(unrounded - out).max() <= 0.5
        assert psnr_db(unrounded / 255.0, reference) >= psnr_db(out / 255.0, reference)
        results[name] = out
    assert not np.array_equal(results["chelsea.jpg"], results["astronaut.jpg"])

    # renamed and saved the way an app gets it: read back from the .mlpackage's spec
    spec = mlmodel.get_spec()
    ct.utils.rename_feature(spec, "Identity", "stylized_image")
    path = tmp_path / "baked.mlpackage"
    ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True).save(str(path))
    reloaded = ct.models.MLModel(str(path), skip_model_load=True)
    again = run_mil_program(reloaded, {"content_image": photo("astronaut.jpg", height, width)})
    assert list(again) == ["stylized_image"]
    # The same program: equal but for threaded float sums landing on the other side of a rounding
    # boundary (seen: 2 of 36,864 values off by one).
    difference = np.abs(again["stylized_image"].astype(int) - results["astronaut.jpg"].astype(int))
    assert difference.max() <= 1 and np.count_nonzero(difference) <= 1e-3 * difference.size


def test_keras_transfer_model_with_fp16_tensor_io_matches_keras(published_transfer):
    from training.network.magenta_network import build_transfer_network

    transfer, bottleneck = published_transfer
    size = 64
    static = build_transfer_network(alpha=0.25, input_shape=(size, size, 3))
    static.set_weights(transfer.get_weights())
    mlmodel = ct.convert(static, source="tensorflow", convert_to="mlprogram",
                         inputs=[ct.TensorType(name="content_image", shape=(1, size, size, 3)),
                                 ct.TensorType(name="style_bottleneck", shape=(1, 1, 1, 100))],
                         minimum_deployment_target=ct.target.iOS16)
    assert {"conv", "transpose"} <= set(mil_ops_used(mlmodel)) <= TRANSFER_OPS | {"transpose"}
    content = photo("fruits.jpg", size, size)[None].astype(np.float32) / 255.0
    out = run_mil_program(mlmodel, {"content_image": content, "style_bottleneck": bottleneck})
    (name, stylized), = out.items()
    assert stylized.dtype == np.float16 and stylized.shape == (1, size, size, 3)
    reference = static([content, bottleneck], training=False).numpy()
    assert psnr_db(stylized, reference) >= 40.0


# --------------------------------------------------------------------------------------------
# Programs built with the MIL Builder, against numpy formulas
# --------------------------------------------------------------------------------------------

def test_builder_pad_modes_match_numpy():
    x = np.random.default_rng(2).normal(size=(1, 2, 5, 6)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return (mb.pad(x=x, pad=[2, 1, 3, 4], mode="reflect", name="reflect"),
                mb.pad(x=x, pad=[1, 2, 0, 3], mode="replicate", name="replicate"),
                mb.pad(x=x, pad=[1, 1], mode="constant", constant_val=-2.5, name="constant"))

    out = run_mil_program(prog, {"x": x})
    np.testing.assert_array_equal(out["reflect"], np.pad(x, [(0, 0), (0, 0), (2, 1), (3, 4)], mode="reflect"))
    np.testing.assert_array_equal(out["replicate"], np.pad(x, [(0, 0), (0, 0), (1, 2), (0, 3)], mode="edge"))
    np.testing.assert_array_equal(out["constant"], np.pad(x, [(0, 0), (0, 0), (0, 0), (1, 1)], constant_values=-2.5))
    # reflect excludes the edge: the row above the first is the second
    np.testing.assert_array_equal(out["reflect"][0, 0, 1, 3:9], x[0, 0, 1])


def test_builder_instance_norm_and_upsample_match_numpy():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(2, 3, 6, 7)) * 4 + 1).astype(np.float32)
    gamma, beta = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        norm = mb.instance_norm(x=x, gamma=gamma, beta=beta, epsilon=1e-3, name="norm")
        return norm, mb.upsample_nearest_neighbor(x=norm, scale_factor_height=2, scale_factor_width=3, name="up")

    out = run_mil_program(prog, {"x": x})
    mean = x.mean(axis=(2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(2, 3), keepdims=True)  # biased
    expected = gamma[None, :, None, None] * (x - mean) / np.sqrt(var + 1e-3) + beta[None, :, None, None]
    np.testing.assert_allclose(out["norm"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["up"], np.repeat(np.repeat(out["norm"], 2, axis=2), 3, axis=3))


def test_builder_slice_by_size_matches_numpy():
    """The realtime network's border crop: constant begin and size, -1 running to the end of an axis;
    a size past the input is an error, not a silently shorter slice."""
    x = np.arange(2 * 3 * 10 * 12, dtype=np.float32).reshape(2, 3, 10, 12)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.slice_by_size(x=x, begin=[0, 1, 2, 3], size=[-1, 2, 6, -1], name="crop")

    np.testing.assert_array_equal(run_mil_program(prog, {"x": x})["crop"], x[:, 1:3, 2:8, 3:])

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 4, 4))], opset_version=ct.target.iOS16)
    def past(x):
        return mb.slice_by_size(x=x, begin=[0, 0, 2, 0], size=[1, 1, 3, 4], name="past")

    with pytest.raises(ValueError, match="runs past"):
        run_mil_program(past, {"x": np.zeros((1, 1, 4, 4), np.float32)})


def test_builder_elementwise_norm_and_shape_ops_match_numpy():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 3, 4, 5)).astype(np.float32)
    mean, var = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, size=3).astype(np.float32)
    gamma, beta = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    weight, bias = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=6).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        positive = mb.add(x=mb.square(x=x), y=np.float32(0.5))
        flat = mb.reshape(x=x, shape=[3, 20])
        return (
            mb.batch_norm(x=x, mean=mean, variance=var, gamma=gamma, beta=beta, epsilon=1e-3, name="bn"),
            mb.clip(x=x, alpha=np.float32(-0.5), beta=np.float32(0.7), name="clip"),
            mb.relu6(x=mb.mul(x=x, y=np.float32(10.0)), name="relu6"),
            mb.real_div(x=mb.sqrt(x=positive), y=mb.pow(x=positive, y=np.float32(1.5)), name="div"),
            mb.sigmoid(x=mb.mul(x=x, y=np.float32(30.0)), name="sigmoid"),
            mb.transpose(x=x, perm=[0, 2, 3, 1], name="nhwc"),
            mb.concat(values=[flat, mb.mul(x=flat, y=np.float32(2.0))], axis=0, interleave=True, name="interleaved"),
            mb.expand_dims(x=mb.squeeze(x=x, axes=[0]), axes=[1], name="moved_batch"),
            mb.linear(x=x, weight=weight, bias=bias, name="linear"),
            mb.matmul(x=x, y=x, transpose_y=True, name="gram"),
            mb.cast(x=mb.reduce_mean(x=x, axes=[-1], keep_dims=False), dtype="fp16", name="mean_fp16"),
            mb.resize_nearest_neighbor(x=x, target_size_height=8, target_size_width=10, name="resized"),
        )

    out = run_mil_program(prog, {"x": x})
    c = lambda v: v[None, :, None, None]  # noqa: E731
    np.testing.assert_allclose(out["bn"], c(gamma) * (x - c(mean)) / np.sqrt(c(var) + 1e-3) + c(beta), atol=1e-5)
    np.testing.assert_array_equal(out["clip"], np.clip(x, -0.5, 0.7))
    np.testing.assert_array_equal(out["relu6"], np.clip(x * 10, 0, 6))
    p = x * x + 0.5
    np.testing.assert_allclose(out["div"], np.sqrt(p) / p**1.5, rtol=1e-6)
    np.testing.assert_allclose(out["sigmoid"], 1 / (1 + np.exp(-30.0 * x)), atol=1e-6)
    np.testing.assert_array_equal(out["nhwc"], x.transpose(0, 2, 3, 1))
    flat = x.reshape(3, 20)
    np.testing.assert_array_equal(out["interleaved"][0::2], flat)
    np.testing.assert_array_equal(out["interleaved"][1::2], flat * 2)
    np.testing.assert_array_equal(out["moved_batch"], x[0][:, None])
    np.testing.assert_allclose(out["linear"], x @ weight.T + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["gram"], x @ np.swapaxes(x, -1, -2), rtol=1e-5, atol=1e-5)
    assert out["mean_fp16"].dtype == np.float16
    np.testing.assert_array_equal(out["mean_fp16"], x.mean(axis=-1).astype(np.float16))
    np.testing.assert_array_equal(out["resized"], np.repeat(np.repeat(x, 2, axis=2), 2, axis=3))


def naive_conv(x, w, bias, strides, pads, dilations, groups):
    """Direct definition: every output element as a sum over its window (float64)."""
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *pads])
    cout, cin_g, kh, kw = w.shape
    ho = (x.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    wo = (x.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    out = np.zeros((x.shape[0], cout, ho, wo))
    for o in range(cout):
        g = o // (cout // groups)
        for i in range(ho):
            for j in range(wo):
                r, c = i * strides[0], j * strides[1]
                window = x[:, g * cin_g:(g + 1) * cin_g, r:r + (kh - 1) * dilations[0] + 1:dilations[0],
                           c:c + (kw - 1) * dilations[1] + 1:dilations[1]]
                out[:, o, i, j] = (window * w[o]).sum(axis=(1, 2, 3)) + bias[o]
    return out


def test_builder_conv_pad_types_groups_dilations_match_the_definition():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 4, 9, 10)).astype(np.float32)
    w = rng.normal(size=(6, 2, 4, 3)).astype(np.float32)   # groups=2, even kernel height
    bias = rng.normal(size=6).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        common = dict(x=x, weight=w, bias=bias, groups=2)
        return (mb.conv(**common, strides=[2, 2], pad_type="same", name="same"),
                mb.conv(**common, strides=[2, 2], pad_type="same_lower", name="same_lower"),
                mb.conv(**common, pad_type="custom", pad=[1, 0, 2, 3], dilations=[2, 1], name="custom"),
                mb.conv(**common, strides=[1, 3], pad_type="valid", name="valid"))

    out = run_mil_program(prog, {"x": x})
    # same, stride 2: H 9 -> 5 needs 3 rows (1 before, 2 after), W 10 -> 5 needs 1 col (0, 1)
    cases = {"same": ([2, 2], [(1, 2), (0, 1)], [1, 1]), "same_lower": ([2, 2], [(2, 1), (1, 0)], [1, 1]),
             "custom": ([1, 1], [(1, 0), (2, 3)], [2, 1]), "valid": ([1, 3], [(0, 0), (0, 0)], [1, 1])}
    for name, (strides, pads, dilations) in cases.items():
        expected = naive_conv(x, w, bias, strides, pads, dilations, groups=2)
        np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, "SAME"), (3, 2, "SAME"), (4, 2, "SAME"), (1, 2, "SAME"),
                                                     (3, 1, "SAME"), (3, 2, "VALID"), (5, 3, "SAME")])
def test_tf_conv2d_transpose_program_matches_tensorflow(kernel, stride, padding):
    """TF's Conv2DBackpropInput (the realtime network's upsampling is the 2x2 stride-2 one), converted by
    coremltools to `conv_transpose` with its output_shape: odd kernels are cropped as TF crops them."""
    import tensorflow as tf

    rng = np.random.default_rng(kernel * 10 + stride)
    h, w, cin, cout = 6, 7, 5, 4
    filt = tf.constant(rng.normal(size=(kernel, kernel, cout, cin)).astype(np.float32))
    bias = tf.constant(rng.normal(size=cout).astype(np.float32))
    out_hw = (h * stride, w * stride) if padding == "SAME" else ((h - 1) * stride + kernel, (w - 1) * stride + kernel)

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, cin], tf.float32, name="image")])
    def f(x):
        return tf.nn.conv2d_transpose(x, filt, [1, *out_hw, cout], stride, padding) + bias

    mlmodel = ct.convert([f.get_concrete_function()], source="tensorflow", convert_to="mlprogram",
                         inputs=[ct.TensorType(name="image", shape=(1, h, w, cin))],
                         minimum_deployment_target=ct.target.iOS16, compute_precision=ct.precision.FLOAT32)
    assert mil_ops_used(mlmodel)["conv_transpose"] == 1
    x = rng.normal(size=(1, h, w, cin)).astype(np.float32)
    (name, out), = run_mil_program(mlmodel, {"image": x}).items()
    np.testing.assert_allclose(out, f(x).numpy(), rtol=0, atol=1e-5)


def naive_conv_transpose(x, w, bias, strides, dilations, groups):
    """Direct definition, full (uncropped) output: input pixel (i, j) adds x * w[k] at (i s + k d) (float64)."""
    cin_g, cout_g, kh, kw = w.shape[0] // groups, w.shape[1], w.shape[2], w.shape[3]
    ho = (x.shape[2] - 1) * strides[0] + (kh - 1) * dilations[0] + 1
    wo = (x.shape[3] - 1) * strides[1] + (kw - 1) * dilations[1] + 1
    out = np.zeros((x.shape[0], cout_g * groups, ho, wo))
    for c in range(x.shape[1]):
        g = c // cin_g
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                for a in range(kh):
                    for b in range(kw):
                        r, q = i * strides[0] + a * dilations[0], j * strides[1] + b * dilations[1]
                        out[:, g * cout_g:(g + 1) * cout_g, r, q] += x[:, c, i, j, None] * w[c, :, a, b]
    return out + bias[None, :, None, None]


def test_builder_conv_transpose_groups_dilations_and_crops_match_the_definition():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(1, 4, 5, 6)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)  # [C_in, C_out / groups, kh, kw], groups=2: 6 outputs
    bias = rng.normal(size=6).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        common = dict(x=x, weight=w, bias=bias, groups=2)
        return (mb.conv_transpose(**common, strides=[2, 3], dilations=[2, 1], pad_type="valid", name="valid"),
                mb.conv_transpose(**common, strides=[2, 2], pad_type="custom", pad=[1, 2, 0, 1], name="custom"),
                mb.conv_transpose(**common, strides=[2, 2], pad_type="same", name="same"))

    out = run_mil_program(prog, {"x": x})
    full = naive_conv_transpose(x, w, bias, [2, 3], [2, 1], groups=2)  # 4 * 2 + 2 * 2 + 1, 5 * 3 + 2
    assert out["valid"].shape == full.shape == (1, 6, 13, 17)
    np.testing.assert_allclose(out["valid"], full, rtol=1e-5, atol=1e-5)
    full = naive_conv_transpose(x, w, bias, [2, 2], [1, 1], groups=2)  # 11 x 12
    np.testing.assert_allclose(out["custom"], full[:, :, 1:-2, 0:-1], rtol=1e-5, atol=1e-5)
    # same: output = input x stride (10 x 12); the one extra row of the 11-row full result is cut at the end
    np.testing.assert_allclose(out["same"], full[:, :, :10, :12], rtol=1e-5, atol=1e-5)


def test_builder_pools_match_the_definition():
    x = np.random.default_rng(5).normal(size=(1, 3, 7, 8)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        pool = dict(x=x, kernel_sizes=[3, 3], strides=[1, 1], pad_type="same")
        return (mb.avg_pool(**pool, exclude_padding_from_average=True, name="avg_excl"),
                mb.avg_pool(**pool, exclude_padding_from_average=False, name="avg_incl"),
                mb.max_pool(x=x, kernel_sizes=[3, 2], strides=[2, 2], pad_type="valid", name="max"))

    out = run_mil_program(prog, {"x": x})
    padded = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
    ones = np.pad(np.ones((7, 8)), 1)
    excl, incl = np.zeros_like(x), np.zeros_like(x)
    for i in range(7):
        for j in range(8):
            total = padded[:, :, i:i + 3, j:j + 3].sum(axis=(2, 3))
            excl[:, :, i, j] = total / ones[i:i + 3, j:j + 3].sum()
            incl[:, :, i, j] = total / 9
    maxed = np.array([[[x[0, c, 2 * i:2 * i + 3, 2 * j:2 * j + 2].max() for j in range(4)] for i in range(3)]
                      for c in range(3)])[None]
    np.testing.assert_allclose(out["avg_excl"], excl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["avg_incl"], incl, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["max"], maxed)


def test_fp16_tensors_are_rounded_after_every_op_and_overflow_is_reported():
    @mb.program(input_specs=[mb.TensorSpec(shape=(3,), dtype=types.fp16)], opset_version=ct.target.iOS16)
    def prog(x):
        bumped = mb.add(x=x, y=np.float16(1.0), name="bumped")
        return mb.sub(x=bumped, y=np.float16(2048.0), name="back"), mb.mul(x=x, y=x, name="squared")

    x = np.array([2048.0, 1.0, 300.0], np.float16)
    with pytest.warns(MILExecutionWarning, match="squared.*overflow float16"):
        out = run_mil_program(prog, {"x": x})
    assert out["back"].dtype == np.float16
    # 2048 + 1 is stored as fp16 2048 (spacing 2), so subtracting 2048 gives 0, not 1
    np.testing.assert_array_equal(out["back"], (x + np.float16(1.0)) - np.float16(2048.0))
    assert out["back"][0] == 0.0
    assert np.isinf(out["squared"][2]) and out["squared"][1] == 1.0  # 90000 > 65504


def _identity_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 4, 5))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.identity(x=x, name="y")
    return prog


def test_image_input_preprocessing_is_applied_exactly_once():
    image = ct.ImageType(name="x", shape=(1, 3, 4, 5), scale=0.5, bias=[1.0, 2.0, 3.0],
                         color_layout=ct.colorlayout.BGR)
    pixels = np.random.default_rng(6).integers(0, 256, size=(4, 5, 3)).astype(np.uint8)  # RGB, HWC
    expected = np.moveaxis(pixels[..., ::-1].astype(np.float32) * 0.5 + np.array([1, 2, 3], np.float32), -1, 0)[None]

    # mlprogram: scale/bias are ops in the program (`x__scaled__`, `x__biased__`)
    mlmodel = ct.convert(_identity_program(), convert_to="mlprogram", inputs=[image],
                         minimum_deployment_target=ct.target.iOS16, compute_precision=ct.precision.FLOAT32)
    assert mil_ops_used(mlmodel)["mul"] == 1
    np.testing.assert_array_equal(run_mil_program(mlmodel, {"x": pixels})["y"], expected)
    np.testing.assert_array_equal(run_mil_program(mlmodel, {"x": pixels[None].astype(np.float32)})["y"], expected)
    # a program taken before the backend passes has no such ops: the executor applies them
    early = ct.convert(_identity_program(), convert_to="milinternal", inputs=[image],
                       minimum_deployment_target=ct.target.iOS16)
    assert "mul" not in mil_ops_used(early)
    np.testing.assert_array_equal(run_mil_program(early, {"x": pixels})["y"], expected)

    with pytest.raises(ValueError, match="0..255"):
        run_mil_program(mlmodel, {"x": pixels.astype(np.float32) * 2})
    with pytest.raises(ValueError, match="do not fit"):
        run_mil_program(mlmodel, {"x": np.zeros((5, 4, 3), np.uint8)})


def test_inputs_are_checked_by_name_and_shape():
    prog = _identity_program()
    with pytest.raises(KeyError, match="missing \\['x'\\]"):
        run_mil_program(prog, {"z": np.zeros((1, 3, 4, 5), np.float32)})
    with pytest.raises(ValueError, match="expected shape"):
        run_mil_program(prog, {"x": np.zeros((1, 3, 5, 4), np.float32)})


@pytest.mark.parametrize("unknown", ["gelu", "topk"])
def test_unknown_op_is_refused_before_anything_runs(unknown):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 6))], opset_version=ct.target.iOS16)
    def prog(x):
        h = mb.relu(x=x, name="first")  # a supported op that would run first
        if unknown == "gelu":
            return mb.gelu(x=h, name="the_gelu")
        return mb.topk(x=h, k=2, axis=-1, name="the_topk")

    # no inputs at all: a walker that started executing (or checked inputs first) would fail differently
    with pytest.raises(UnsupportedMILOp) as caught:
        run_mil_program(prog, {})
    message = str(caught.value)
    assert caught.value.op_type == unknown and f"'{unknown}'" in message and f"'the_{unknown}'" in message
    assert "supported ops: " in message and "instance_norm" in message and "conv" in message
    assert unknown not in SUPPORTED_OPS
    assert mil_ops_used(prog)[unknown] == 1 and mil_ops_used(prog)["relu"] == 1
