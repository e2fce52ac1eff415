"""Small serialisable layers and the shared embedding -> logits head of every model.

All models take float images in [0, 1]; any input standardisation lives in the model (these layers)
so that attacks, which work in [0, 1] pixel space, never need to know about it.
"""

import keras
from keras import ops

_PACKAGE = "tf_metric_robust"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PerImageStandardization(keras.layers.Layer):
    """(x - mean) / max(std, 1/sqrt(H*W*C)) per image, as `tf.image.per_image_standardization`.

    Madry et al.'s CIFAR model (and TLA's) standardise each image this way at the input. The result
    does not depend on the pixel scale (Madry feeds [0, 255], we feed [0, 1]) except for nearly
    constant images, where the 1/sqrt(N) floor on the std takes over. Computed in float32.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, x):
        num_elements = ops.cast(ops.prod(ops.shape(x)[1:]), x.dtype)
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2, 3), keepdims=True))
        return (x - mean) / ops.maximum(std, ops.rsqrt(num_elements))

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChannelZeroPad(keras.layers.Layer):
    """Appends zero channels (NHWC): the parameter-free shortcut of Madry's WideResNet.

    Args:
      before: zero channels added in front of the input channels.
      after: zero channels added after them.
    """

    def __init__(self, before, after, **kwargs):
        super().__init__(**kwargs)
        if before < 0 or after < 0:
            raise ValueError(f"ChannelZeroPad needs before, after >= 0, got {before}, {after}")
        self.before = int(before)
        self.after = int(after)

    def call(self, x):
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.before, self.after]])

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        if channels is not None:
            channels += self.before + self.after
        return tuple(input_shape[:-1]) + (channels,)

    def get_config(self):
        return {**super().get_config(), "before": self.before, "after": self.after}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChannelStandardization(keras.layers.Layer):
    """(x - mean) / std per channel with fixed dataset constants (NHWC), computed in float32.

    The input normalisation of the PyTorch robust-training models (e.g. DM-Improves-AT
    core/models/wideresnetwithswish.py:120-121, 159-161): `mean` and `std` are per-channel
    statistics of the training set on the [0, 1] scale. No weights: nothing to train or save.

    Args:
      mean: one float per channel.
      std: one positive float per channel.
    """

    def __init__(self, mean, std, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel, std > 0: {mean}, {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, x):
        mean = ops.convert_to_tensor(self.mean, dtype=x.dtype)
        std = ops.convert_to_tensor(self.std, dtype=x.dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean), "std": list(self.std)}


def kernel_regularizer(weight_decay):
    """L2 regulariser equal to Madry/TLA's `weight_decay * tf.nn.l2_loss(w)`, or None if 0.

    `tf.nn.l2_loss(w) = sum(w**2) / 2` while `keras.regularizers.L2(c)(w) = c * sum(w**2)`, so
    `L2(weight_decay / 2)` adds exactly `weight_decay * l2_loss(w)` per kernel to `model.losses`.
    Only conv and dense kernels get it (Madry's `_decay` sums the 'DW' variables: no biases, no BN).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if weight_decay == 0:
        return None
    return keras.regularizers.L2(weight_decay / 2.0)


def conv(filters, kernel_size, strides, regularizer, name, initializer=None):
    """The ResNets' bias-free 'same' Conv2D; `initializer` None is Madry's N(0, 2 / (k*k*out))
    (cifar10_challenge model.py `_conv`), a fresh instance per layer."""
    if initializer is None:
        initializer = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides,
        "same",
        use_bias=False,
        kernel_initializer=initializer,
        kernel_regularizer=regularizer,
        name=name,
    )


def wide_resnet_stages(depth, width):
    """(units per stage, filters [stem, stage 1, 2, 3]) of a WRN-depth-width (Zagoruyko &
    Komodakis 2016): depth 6n + 4 gives n units a stage, widths 16, 16k, 32k, 64k."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n + 4 with n >= 1, got {depth}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]


def batch_norm(name, epsilon=1e-3, momentum=0.9):
    """BatchNormalization with decay 0.9 and eps 1e-3 (tf.contrib batch_norm as Madry and the TLA
    authors configure it); the PyTorch-style ResNets pass their eps 1e-5, and a PyTorch BN
    momentum m is Keras momentum 1 - m (moving = momentum * moving + (1 - momentum) * batch)."""
    return keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)


def truncated_normal_init():
    """Keras keywords for weights truncated-normal(stddev 0.1) and biases 0.1, as Madry's MNIST
    CNN and the TLA authors' MNIST network (model_mnist_large.py:213-222) initialise them."""
    return dict(
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.1),
        bias_initializer=keras.initializers.Constant(0.1),
    )


def classifier_outputs(
    embedding,
    num_classes,
    *,
    regularizer=None,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
):
    """Final float32 dense layer 'logits' on the embedding; returns the model's output dict.

    The dense layer runs in float32 so mixed precision (mixed_float16 / mixed_bfloat16) still gives
    float32 logits, as the Keras mixed-precision guide recommends for the softmax input.

    Args:
      embedding: symbolic [N, D] tensor, the output of the layer named 'embedding'.
      num_classes: number of logits C.
      regularizer: kernel regulariser (see `kernel_regularizer`) or None.
      kernel_initializer, bias_initializer: Keras initialisers of the logits layer.

    Returns:
      {'logits': [N, C] float32, 'embedding': [N, D]}.
    """
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        kernel_regularizer=regularizer,
        dtype="float32",
        name="logits",
    )(embedding)
    return {"logits": logits, "embedding": embedding}


def pooled_outputs(features, num_classes, regularizer, kernel_initializer=None):
    """Global average pool of the last feature map as the float32 'embedding', then the logits;
    `kernel_initializer` None is Madry's uniform(+-sqrt(3 / fan_in)) (`_fully_connected`)."""
    embedding = keras.layers.GlobalAveragePooling2D(dtype="float32", name="embedding")(features)
    if kernel_initializer is None:
        kernel_initializer = keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")
    return classifier_outputs(
        embedding, num_classes, regularizer=regularizer, kernel_initializer=kernel_initializer
    )


def input_standardization(x, standardization):
    """Applies 'per_image' standardisation (Madry) or none ('none') to [0, 1] images."""
    if standardization == "per_image":
        return PerImageStandardization(name="standardize")(x)
    if standardization == "none":
        return x
    raise ValueError(f"standardization must be 'per_image' or 'none', got {standardization!r}")
