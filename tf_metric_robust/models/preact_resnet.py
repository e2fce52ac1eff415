"""Pre-activation ResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016).

The 32x32 variant common in adversarial-training work (e.g. Rice et al. 2020): a 3x3 64-filter stem
without pooling; four stages of two pre-activation basic blocks (BN -> ReLU -> conv3x3 -> BN ->
ReLU -> conv3x3) with 64, 128, 256, 512 filters and strides 1, 2, 2, 2; a 1x1 projection shortcut
taken from the pre-activation when the shape changes; a final BN -> ReLU (as in He et al.) and
global average pooling, which is the 512-d embedding. BN momentum 0.9 / eps 1e-5 (PyTorch's).
"""

import keras

from tf_metric_robust.models import layers

_EPSILON = 1e-5  # PyTorch's BN eps


def _conv(filters, kernel_size, strides, reg, name):
    return layers.conv(filters, kernel_size, strides, reg, name, initializer="he_normal")


def _preact_block(x, filters, stride, reg, name):
    """Basic pre-activation block; the projection shortcut sees the activated input (He et al.)."""
    pre = layers.batch_norm(f"{name}_bn1", _EPSILON)(x)
    pre = keras.layers.ReLU(name=f"{name}_relu1")(pre)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, stride, reg, f"{name}_shortcut")(pre)
    else:
        shortcut = x
    y = _conv(filters, 3, stride, reg, f"{name}_conv1")(pre)
    y = layers.batch_norm(f"{name}_bn2", _EPSILON)(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(filters, 3, 1, reg, f"{name}_conv2")(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def preact_resnet18(num_classes, input_shape, *, weight_decay=0.0, standardization="per_image"):
    """Builds PreAct ResNet-18 (11.17M parameters at 10 classes, 512-d embedding).

    Args:
      num_classes: number of logits.
      input_shape: (H, W, C) of [0, 1] float images, (32, 32, 3) for CIFAR-10.
      weight_decay: adds `weight_decay * tf.nn.l2_loss(kernel)` per conv/dense kernel to
        `model.losses` (Madry/TLA convention; equals PyTorch SGD `weight_decay` on the kernels).
      standardization: 'per_image' (as the WideResNet) or 'none'.

    Returns:
      A functional `keras.Model` mapping images to {'logits': [N, C], 'embedding': [N, 512]}.
    """
    reg = layers.kernel_regularizer(weight_decay)
    images = keras.Input(shape=input_shape, name="images")
    x = layers.input_standardization(images, standardization)
    x = _conv(64, 3, 1, reg, "stem_conv")(x)
    for stage, (filters, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        x = _preact_block(x, filters, stride, reg, f"stage{stage}_block1")
        x = _preact_block(x, filters, 1, reg, f"stage{stage}_block2")
    x = layers.batch_norm("final_bn", _EPSILON)(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    outputs = layers.pooled_outputs(x, num_classes, reg, kernel_initializer="glorot_uniform")
    return keras.Model(images, outputs, name="preact_resnet18")
