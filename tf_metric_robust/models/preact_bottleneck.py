"""TLA's Tiny ImageNet network: a pre-activation bottleneck ResNet for 64x64 images (Mao et al.).

As in the authors' `model_imagenet_res50.py`: per-image standardisation; a 7x7 stride-1 stem conv
-> BN -> ReLU and no max-pool (64x64 stays 64x64); four stages of [2, 3, 5, 2] bottleneck units
with hidden widths 64, 128, 256, 512, outputs 4x that, strides 1, 2, 2, 2 (64 -> 64, 32, 16, 8 px).
A unit is BN -> ReLU -> conv1x1 (with the stride) -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1
(He et al., ECCV 2016 pre-activation), added to the input itself, or in each stage's first unit to
a 1x1 strided conv of the input (before its BN/ReLU, as the authors' code). Convs have no bias and
N(0, 2 / (k*k*out)) weights; BN decay 0.9, eps 1e-3; final BN -> ReLU -> global average pool is the
2048-d embedding (their 'x4'); the logits layer is initialised uniform(+-sqrt(3 / fan_in)).
At 200 classes: 18,014,088 parameters (17,980,040 trainable; the rest are BN statistics).
"""

import keras

from tf_metric_robust.models import layers

BLOCKS = (2, 3, 5, 2)


def _bn_relu(x, name):
    x = layers.batch_norm(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _bottleneck(x, hidden, stride, project, reg, name):
    """Pre-activation bottleneck unit; `project` uses a strided 1x1 conv shortcut."""
    out = 4 * hidden
    shortcut = layers.conv(out, 1, stride, reg, f"{name}_shortcut")(x) if project else x
    y = _bn_relu(x, f"{name}_pre")
    y = layers.conv(hidden, 1, stride, reg, f"{name}_conv1")(y)
    y = _bn_relu(y, f"{name}_mid1")
    y = layers.conv(hidden, 3, 1, reg, f"{name}_conv2")(y)
    y = _bn_relu(y, f"{name}_mid2")
    y = layers.conv(out, 1, 1, reg, f"{name}_conv3")(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def preact_resnet_tiny(
    num_classes,
    input_shape,
    *,
    width=64,
    blocks=BLOCKS,
    weight_decay=0.0,
    standardization="per_image",
):
    """Builds the authors' Tiny ImageNet ResNet (defaults) or a narrower/shallower variant.

    Args:
      num_classes: number of logits (200 for Tiny ImageNet).
      input_shape: (H, W, C) of [0, 1] float images, (64, 64, 3) for Tiny ImageNet.
      width: stem filters and first-stage hidden width w; stages use w, 2w, 4w, 8w hidden and 4x
        that out, so the embedding is 32w-d (2048 at the authors' 64). Small w for tests.
      blocks: bottleneck units per stage (authors: 2, 3, 5, 2).
      weight_decay: adds `weight_decay * tf.nn.l2_loss(kernel)` per conv/dense kernel to
        `model.losses` (authors: 2e-4).
      standardization: 'per_image' (authors) or 'none'.

    Returns:
      A functional `keras.Model` mapping images to {'logits': [N, C], 'embedding': [N, 32w]}.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"blocks must be 4 positive unit counts, got {blocks}")
    reg = layers.kernel_regularizer(weight_decay)
    images = keras.Input(shape=input_shape, name="images")
    x = layers.input_standardization(images, standardization)
    x = layers.conv(width, 7, 1, reg, "stem_conv")(x)
    x = _bn_relu(x, "stem")
    for stage, (units, stride) in enumerate(zip(blocks, (1, 2, 2, 2)), start=1):
        hidden = width * 2 ** (stage - 1)
        for unit in range(units):
            x = _bottleneck(
                x, hidden, stride if unit == 0 else 1, unit == 0, reg, f"unit_{stage}_{unit}"
            )
    x = _bn_relu(x, "final")
    return keras.Model(
        images, layers.pooled_outputs(x, num_classes, reg), name="preact_resnet_tiny"
    )
