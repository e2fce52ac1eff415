"""Madry et al.'s CIFAR-10 WideResNet (cifar10_challenge `model.py`), as used by TLA (Mao et al. 2019).

A pre-activation WRN-d-k (Zagoruyko & Komodakis 2016) with Madry's details, kept exactly:
per-image standardisation at the input; a 3x3 16-filter stem; three stages of (d-4)/6 residual
units with 16k, 32k, 64k filters and strides 1, 2, 2; every unit BN -> leaky ReLU(0.1) -> conv3x3
-> BN -> leaky ReLU(0.1) -> conv3x3, the first unit of stage 1 sharing its pre-activation with the
shortcut; parameter-free shortcuts (average pool by the stride, then zero-padded channels); convs
without bias, initialised N(0, 2 / (3*3*out_channels)); BN decay 0.9, eps 1e-3; final BN -> leaky
ReLU(0.1) -> global average pool, which is the embedding (TLA's 'x4'); a dense logits layer
initialised uniform(+-sqrt(3 / fan_in)).

WRN-34-10 has 45,901,914 trainable parameters. The often quoted 46.16M (46,160,474) is the PyTorch
WRN-34-10 (Zagoruyko's / TRADES') whose shortcuts are 1x1 convs: exactly 258,560 parameters more.
"""

import keras

from tf_metric_robust.models import layers

_LEAK = 0.1


def _residual_unit(x, in_filters, out_filters, stride, activate_before_residual, reg, name):
    """Madry's `_residual`: pre-activation unit with an avg-pool + zero-pad shortcut."""
    pre = layers.batch_norm(f"{name}_bn1")(x)
    pre = keras.layers.LeakyReLU(_LEAK, name=f"{name}_act1")(pre)
    shortcut = pre if activate_before_residual else x
    y = layers.conv(out_filters, 3, stride, reg, f"{name}_conv1")(pre)
    y = layers.batch_norm(f"{name}_bn2")(y)
    y = keras.layers.LeakyReLU(_LEAK, name=f"{name}_act2")(y)
    y = layers.conv(out_filters, 3, 1, reg, f"{name}_conv2")(y)
    if in_filters != out_filters:
        if stride > 1:
            shortcut = keras.layers.AveragePooling2D(
                stride, stride, padding="valid", name=f"{name}_pool"
            )(shortcut)
        extra = out_filters - in_filters
        shortcut = layers.ChannelZeroPad(extra // 2, extra - extra // 2, name=f"{name}_pad")(
            shortcut
        )
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def wide_resnet(
    num_classes, input_shape, *, depth=34, width=10, weight_decay=0.0, standardization="per_image"
):
    """Builds Madry's WRN-`depth`-`width` (default WRN-34-10, TLA's CIFAR-10 model).

    Args:
      num_classes: number of logits.
      input_shape: (H, W, C) of [0, 1] float images, (32, 32, 3) for CIFAR-10.
      depth: total depth d, with (d - 4) % 6 == 0; (d - 4) / 6 units per stage.
      width: widening factor k; stage filters are 16k, 32k, 64k and the embedding is 64k-d.
      weight_decay: adds `weight_decay * tf.nn.l2_loss(kernel)` per conv/dense kernel to
        `model.losses` (Madry/TLA CIFAR: 2e-4).
      standardization: 'per_image' (Madry) or 'none'.

    Returns:
      A functional `keras.Model` mapping images to {'logits': [N, C], 'embedding': [N, 64k]}.
    """
    units, filters = layers.wide_resnet_stages(depth, width)
    reg = layers.kernel_regularizer(weight_decay)

    images = keras.Input(shape=input_shape, name="images")
    x = layers.input_standardization(images, standardization)
    x = layers.conv(filters[0], 3, 1, reg, "init_conv")(x)
    for stage, stride in enumerate((1, 2, 2), start=1):
        x = _residual_unit(
            x, filters[stage - 1], filters[stage], stride, stage == 1, reg, f"unit_{stage}_0"
        )
        for i in range(1, units):
            x = _residual_unit(
                x, filters[stage], filters[stage], 1, False, reg, f"unit_{stage}_{i}"
            )
    x = layers.batch_norm("final_bn")(x)
    x = keras.layers.LeakyReLU(_LEAK, name="final_act")(x)
    return keras.Model(
        images, layers.pooled_outputs(x, num_classes, reg), name=f"wide_resnet_{depth}_{width}"
    )
