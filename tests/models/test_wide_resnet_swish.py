"""Tests for models/wide_resnet_swish.py: the Swish WideResNet of DM-Improves-AT
(core/models/wideresnetwithswish.py), its parameter counts, outputs and layer order."""

import keras
import numpy as np
import pytest

from tf_metric_robust import models
from tf_metric_robust.models.wide_resnet_swish import NORMALIZATIONS, parameter_count

# The reference's counts, derived by hand from its layer shapes (10 classes, 3 input channels).
# WRN-28-10: 4 blocks per group, filters 16, 160, 320, 640.
#   stem 3*3*3*16 = 432
#   group 1 first block (16 -> 160): BN 2*16 + conv 9*16*160 + BN 2*160 + conv 9*160*160
#     + 1x1 shortcut 16*160 = 32 + 23,040 + 320 + 230,400 + 2,560 = 256,352
#   group 1 other blocks: 3 * (2*160 + 9*160*160 + 2*160 + 9*160*160) = 3 * 461,440 = 1,384,320
#   group 2 first block (160 -> 320): 320 + 460,800 + 640 + 921,600 + 51,200 = 1,434,560
#   group 2 others: 3 * (640 + 921,600 + 640 + 921,600) = 3 * 1,844,480 = 5,533,440
#   group 3 first block (320 -> 640): 640 + 1,843,200 + 1,280 + 3,686,400 + 204,800 = 5,736,320
#   group 3 others: 3 * (1,280 + 3,686,400 + 1,280 + 3,686,400) = 3 * 7,375,360 = 22,126,080
#   final BN 2*640 = 1,280; linear 640*10 + 10 = 6,410
#   total 36,479,194
WRN_28_10 = (
    432 + 256_352 + 1_384_320 + 1_434_560 + 5_533_440 + 5_736_320 + 22_126_080 + 1_280 + 6_410
)
# WRN-70-16: 11 blocks per group, filters 16, 256, 512, 1024.
#   group 1 first (16 -> 256): 32 + 36,864 + 512 + 589,824 + 4,096 = 631,328
#   group 1 others: 10 * (512 + 589,824 + 512 + 589,824) = 11,806,720
#   group 2 first (256 -> 512): 512 + 1,179,648 + 1,024 + 2,359,296 + 131,072 = 3,671,552
#   group 2 others: 10 * (1,024 + 2,359,296) * 2 = 47,206,400
#   group 3 first (512 -> 1024): 1,024 + 4,718,592 + 2,048 + 9,437,184 + 524,288 = 14,683,136
#   group 3 others: 10 * (2,048 + 9,437,184) * 2 = 188,784,640
#   stem 432, final BN 2,048, linear 10,250: total 266,796,506
WRN_70_16 = (
    432 + 631_328 + 11_806_720 + 3_671_552 + 47_206_400 + 14_683_136 + 188_784_640 + 2_048 + 10_250
)


def _trainable(model):
    return sum(int(v.shape.num_elements()) for v in model.trainable_variables)


def test_hand_derived_counts_are_the_known_sizes_and_the_formula():
    assert WRN_28_10 == 36_479_194  # "36.5M" (Gowal et al. 2020, Table 1)
    assert WRN_70_16 == 266_796_506  # "267M"
    assert parameter_count(28, 10) == WRN_28_10
    assert parameter_count(70, 16) == WRN_70_16


@pytest.fixture(scope="module")
def wrn_28_10():
    return models.build("wide_resnet_swish", 10, (32, 32, 3))


def test_wrn_28_10_has_the_reference_parameter_count_and_outputs(wrn_28_10):
    assert wrn_28_10.name == "wide_resnet_swish_28_10"
    assert _trainable(wrn_28_10) == WRN_28_10
    # The only other weights are BN moving mean and variance (PyTorch buffers, not parameters):
    # as many as BN's gamma and beta.
    bn_affine = sum(
        int(v.shape.num_elements())
        for layer in wrn_28_10.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.gamma, layer.beta)
    )
    non_trainable = sum(int(v.shape.num_elements()) for v in wrn_28_10.non_trainable_variables)
    # BN channels per group: the first block's input + 7 x the group's width; + the final BN.
    assert non_trainable == bn_affine == 2 * (16 + 7 * 160 + 160 + 7 * 320 + 320 + 7 * 640 + 640)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    out = wrn_28_10(x, training=False)
    assert out["logits"].shape == (2, 10) and out["embedding"].shape == (2, 640)
    assert models.embedding_dim(wrn_28_10) == 640


@pytest.mark.parametrize("depth,width", [(10, 1), (16, 2), (22, 3)])
def test_reduced_builds_match_the_formula(depth, width):
    # Width 1 has no shortcut conv in group 1 (16 -> 16 filters): the formula's edge case.
    model = models.build("wide_resnet_swish", 7, (32, 32, 3), depth=depth, width=width)
    assert _trainable(model) == parameter_count(depth, width, num_classes=7)
    shortcuts = [layer.name for layer in model.layers if layer.name.endswith("_shortcut")]
    expected = ["group1_block0_shortcut", "group2_block0_shortcut"]
    if width > 1:
        expected.insert(0, "group0_block0_shortcut")
    assert shortcuts == expected


def test_layers_follow_the_reference(wrn_28_10):
    bns = [
        layer for layer in wrn_28_10.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    # 2 per block, 12 blocks, and the final one; PyTorch momentum 0.01 = Keras 0.99, eps 1e-5.
    assert len(bns) == 25
    assert all(bn.momentum == 0.99 and bn.epsilon == 1e-5 for bn in bns)
    acts = [layer for layer in wrn_28_10.layers if isinstance(layer, keras.layers.Activation)]
    assert len(acts) == 25 and all(a.activation is keras.activations.silu for a in acts)
    convs = [layer for layer in wrn_28_10.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(not c.use_bias for c in convs)
    head = wrn_28_10.get_layer("logits")
    assert head.use_bias and head.input is wrn_28_10.get_layer("embedding").output
    mean, std = NORMALIZATIONS["cifar10"]
    assert wrn_28_10.get_layer("standardize").mean == mean
    assert wrn_28_10.get_layer("standardize").std == std


def _conv_nchw(x, kernel_hwio, stride, pad):
    """PyTorch's Conv2d (no bias) on NHWC arrays after F.pad(x, (left, right, top, bottom))."""
    left, right, top, bottom = pad
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    k = kernel_hwio.shape[0]
    n, h, w, _ = x.shape
    out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.zeros((n, out_h, out_w, kernel_hwio.shape[-1]), np.float64)
    for i in range(k):
        for j in range(k):
            patch = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            out += patch @ kernel_hwio[i, j]
    return out


def _reference_forward(model, x, depth, width):
    """wideresnetwithswish.py's WideResNet.forward in eval mode, in NumPy, on `model`'s weights:
    an independent statement of the layer order, the pads (:59-62) and the shortcut (:54-58, 68)."""

    def bn(name, v):
        gamma, beta, mean, var = (np.asarray(w) for w in model.get_layer(f"{name}_bn").weights)
        return (v - mean) / np.sqrt(var + 1e-5) * gamma + beta

    def swish(v):
        return v / (1.0 + np.exp(-v))

    def kernel(name):
        return np.asarray(model.get_layer(name).kernel, np.float64)

    mean, std = NORMALIZATIONS["cifar10"]
    out = (x.astype(np.float64) - np.array(mean)) / np.array(std)
    out = _conv_nchw(out, kernel("init_conv"), 1, (1, 1, 1, 1))
    filters = [16, 16 * width, 32 * width, 64 * width]
    for group, stride in enumerate((1, 2, 2)):
        for i in range((depth - 4) // 6):
            name = f"group{group}_block{i}"
            cin = filters[group] if i == 0 else filters[group + 1]
            has_shortcut = cin != filters[group + 1]
            s = stride if i == 0 else 1
            act = swish(bn(f"{name}_0", out))
            v = act
            pad = (1, 1, 1, 1) if s == 1 else (0, 1, 0, 1)
            y = _conv_nchw(v, kernel(f"{name}_conv0"), s, pad)
            y = swish(bn(f"{name}_1", y))
            y = _conv_nchw(y, kernel(f"{name}_conv1"), 1, (1, 1, 1, 1))
            skip = (
                _conv_nchw(act, kernel(f"{name}_shortcut"), s, (0, 0, 0, 0))
                if has_shortcut
                else out
            )
            out = skip + y
    out = swish(bn("final", out))
    embedding = out.mean(axis=(1, 2))  # F.avg_pool2d(out, 8) on the 8x8 map
    head = model.get_layer("logits")
    return embedding, embedding @ np.asarray(head.kernel) + np.asarray(head.bias)


@pytest.mark.parametrize("width", [1, 2])
def test_forward_equals_the_reference_computation(width):
    depth = 10
    model = models.build("wide_resnet_swish", 10, (32, 32, 3), depth=depth, width=width)
    rng = np.random.default_rng(1)
    # Non-trivial BN statistics and affine parameters, so a wrong BN placement shows.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            layer.beta.assign(rng.normal(0, 0.2, c))
            layer.moving_mean.assign(rng.normal(0, 0.2, c))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))
    x = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    out = model(x, training=False)
    embedding, logits = _reference_forward(model, x, depth, width)
    np.testing.assert_allclose(out["embedding"], embedding, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-4)


def test_initialisation_is_the_references():
    model = models.build("wide_resnet_swish", 10, (32, 32, 3), depth=16, width=4)
    conv = np.asarray(model.get_layer("group2_block1_conv1").kernel)  # 3x3, 256 -> 256
    assert abs(conv.std() - np.sqrt(2.0 / (9 * 256))) < 0.02 * np.sqrt(2.0 / (9 * 256))
    head = model.get_layer("logits")
    limit = 1.0 / np.sqrt(256)  # PyTorch Linear: U(+-1/sqrt(fan_in)), bias zeroed (:149-150)
    assert np.abs(np.asarray(head.kernel)).max() <= limit
    assert np.abs(np.asarray(head.kernel)).max() > 0.9 * limit
    assert not np.asarray(head.bias).any()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        models.build("wide_resnet_swish", 10, (32, 32, 3), depth=27)
    with pytest.raises(ValueError, match="normalization"):
        models.build("wide_resnet_swish", 10, (32, 32, 3), depth=10, normalization="imagenet")
    with pytest.raises(ValueError, match="RGB"):
        models.build("wide_resnet_swish", 10, (28, 28, 1), depth=10, width=1)
    grey = models.build(
        "wide_resnet_swish", 10, (28, 28, 1), depth=10, width=1, normalization="none"
    )
    assert grey(np.zeros((1, 28, 28, 1), np.float32))["embedding"].shape == (1, 64)


def test_keras_save_load_and_bfloat16(tmp_path):
    model = models.build("wide_resnet_swish", 10, (32, 32, 3), depth=10, width=1)
    x = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    path = str(tmp_path / "wrn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("standardize").std == model.get_layer("standardize").std
    for key in ("logits", "embedding"):
        np.testing.assert_array_equal(model(x)[key], loaded(x)[key])
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = models.build("wide_resnet_swish", 10, (32, 32, 3), depth=10, width=1)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    out = mixed(x, training=True)
    assert out["logits"].dtype == "float32" and out["embedding"].dtype == "float32"
    assert mixed.get_layer("group0_block0_conv0").compute_dtype == "bfloat16"


@pytest.mark.slow
def test_wrn_70_16_builds_with_the_reference_count():
    # 266,796,506 float32 parameters = 1,067,186,024 bytes (+ 78,880 BN statistics); the build
    # took 14 s and 2.1 GB peak memory here.
    model = models.build("wide_resnet_swish", 10, (32, 32, 3), depth=70, width=16)
    assert _trainable(model) == WRN_70_16
    assert models.embedding_dim(model) == 1024
