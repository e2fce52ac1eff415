"""The Swish WideResNet of the generated-data recipes (Gowal et al. 2020, arXiv 2010.03593; Rebuffi
et al. 2021; Wang et al. 2023, "Better Diffusion Models Further Improve Adversarial Training").

Layer for layer the reference DM-Improves-AT core/models/wideresnetwithswish.py (from DeepMind's
model_zoo.py): per-channel (x - mean) / std at the input (:120-121, 159-161; CIFAR-10's constants
:12-13); a 3x3 16-filter stem without bias (:128-129); three groups of (d - 4) / 6 blocks with 16k,
32k, 64k filters and strides 1, 2, 2 (:125-136); every block BN -> SiLU -> conv3x3 (stride) -> BN
-> SiLU -> conv3x3 (:53-69), where a block that changes the width takes both its residual path and
its 1x1-conv shortcut from the activated input and any other block adds its raw input (:54-58,
68); a final BN -> SiLU -> average pool, the embedding (the pooled features the last linear layer
reads, :165-168), and a linear layer with bias.

Details kept exactly: BN momentum 0.01 in PyTorch's convention (:36, 41, 137), Keras momentum 0.99,
and PyTorch's eps 1e-5; convs initialised N(0, 2 / (3*3*out_channels)) (:144-145), BN gamma 1 and
beta 0 (:146-148), the linear layer PyTorch's default U(+-1 / sqrt(fan_in)) with bias 0 (:149-150).
The reference pads stride-2 convs by (0, 1) on each spatial axis (:59-62): TensorFlow's 'same'
padding of a 3x3 stride-2 conv on an even size, which every stride-2 input here has (32 -> 16 -> 8;
on odd sizes the reference's shortcut and residual shapes disagree). Its average pool over the 8x8
map (:166) is the global average pool on 32x32 images.

Trainable parameters, which equal PyTorch's `sum(p.numel() for p in model.parameters())`
(`parameter_count`): WRN-28-10 36,479,194; WRN-70-16 266,796,506 (10 classes).
"""

import keras

from tf_metric_robust.models import layers

# Per-channel mean and std of the reference (wideresnetwithswish.py:12-17), chosen by dataset
# (:191-197).
NORMALIZATIONS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
_BN_MOMENTUM = 0.99  # PyTorch BatchNorm2d(momentum=0.01), wideresnetwithswish.py:36, 41, 137
_BN_EPSILON = 1e-5  # PyTorch's default eps


def _conv(filters, kernel_size, stride, reg, name):
    # Default initializer of layers.conv: N(0, 2 / (k*k*out)), the reference's :144-145.
    return layers.conv(filters, kernel_size, stride, reg, name)


def _bn_swish(x, name):
    x = layers.batch_norm(f"{name}_bn", _BN_EPSILON, _BN_MOMENTUM)(x)
    return keras.layers.Activation("silu", name=f"{name}_swish")(x)


def _block(x, in_filters, out_filters, stride, reg, name):
    """The reference's `_Block` (wideresnetwithswish.py:25-69)."""
    pre = _bn_swish(x, f"{name}_0")
    y = _conv(out_filters, 3, stride, reg, f"{name}_conv0")(pre)
    y = _bn_swish(y, f"{name}_1")
    y = _conv(out_filters, 3, 1, reg, f"{name}_conv1")(y)
    if in_filters != out_filters:
        shortcut = _conv(out_filters, 1, stride, reg, f"{name}_shortcut")(pre)
    else:
        shortcut = x
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def parameter_count(depth, width, num_classes=10, channels=3):
    """Trainable parameters of WRN-`depth`-`width`, from the reference's layer shapes.

    Stem 3*3*channels*16; per block BN0 2*in, conv0 9*in*out, BN1 2*out, conv1 9*out*out, and
    in*out for the 1x1 shortcut when in != out (the first block of a group, unless width is 1 in
    group 1); final BN 2*64k; linear 64k*num_classes + num_classes. BN moving statistics are not
    parameters (PyTorch buffers, Keras non-trainable weights).
    """
    units, filters = layers.wide_resnet_stages(depth, width)
    total = 9 * channels * filters[0]
    for group in range(3):
        for i in range(units):
            cin = filters[group] if i == 0 else filters[group + 1]
            cout = filters[group + 1]
            total += 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout
            total += cin * cout if cin != cout else 0
    return total + 2 * filters[3] + filters[3] * num_classes + num_classes


def wide_resnet_swish(
    num_classes, input_shape, *, depth=28, width=10, weight_decay=0.0, normalization="cifar10"
):
    """Builds the Swish WRN-`depth`-`width` of DM-Improves-AT (default WRN-28-10).

    Args:
      num_classes: number of logits.
      input_shape: (H, W, C) of [0, 1] float images, (32, 32, 3) for CIFAR-10.
      depth: total depth d, with (d - 4) % 6 == 0; (d - 4) / 6 blocks per group (28, 70, ...).
      width: widening factor k; group filters 16k, 32k, 64k; the embedding is 64k-d.
      weight_decay: adds `weight_decay * tf.nn.l2_loss(kernel)` per conv/dense kernel to
        `model.losses`, i.e. PyTorch SGD's weight_decay on them (the reference: 5e-4, parser.py:40;
        it also decays the linear bias, watrain.py:58-67, which this leaves out).
      normalization: 'cifar10', 'cifar100' or 'svhn' (the reference's constants, per dataset), or
        'none'.

    Returns:
      A functional `keras.Model` mapping images to {'logits': [N, C], 'embedding': [N, 64k]}.
    """
    units, filters = layers.wide_resnet_stages(depth, width)
    if normalization not in (*NORMALIZATIONS, "none"):
        raise ValueError(
            f"normalization must be one of {', '.join(NORMALIZATIONS)} or none, got "
            f"{normalization!r}"
        )
    reg = layers.kernel_regularizer(weight_decay)

    images = keras.Input(shape=input_shape, name="images")
    x = images
    if normalization != "none":
        mean, std = NORMALIZATIONS[normalization]
        if input_shape[-1] != len(mean):
            raise ValueError(
                f"normalization {normalization!r} is for RGB images, got {input_shape[-1]} "
                "channels: pass normalization='none'"
            )
        x = layers.ChannelStandardization(mean, std, name="standardize")(x)
    x = _conv(filters[0], 3, 1, reg, "init_conv")(x)
    for group, stride in enumerate((1, 2, 2)):
        for i in range(units):
            cin = filters[group] if i == 0 else filters[group + 1]
            x = _block(
                x, cin, filters[group + 1], stride if i == 0 else 1, reg, f"group{group}_block{i}"
            )
    x = _bn_swish(x, "final")
    outputs = layers.pooled_outputs(
        x,
        num_classes,
        reg,
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
    )
    return keras.Model(images, outputs, name=f"wide_resnet_swish_{depth}_{width}")
