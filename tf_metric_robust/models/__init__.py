"""Model builders: every model maps [0, 1] images to {'logits', 'embedding'} (TLA, Mao et al. 2019).

The 'embedding' is the penultimate representation h(x) on which TLA's triplet loss acts: the output
of the layer named 'embedding', which is the input of the final dense layer named 'logits'.

    model = models.build('wide_resnet', 10, (32, 32, 3), depth=34, width=10, weight_decay=2e-4)
    out = model(images, training=False)   # {'logits': [N, 10] float32, 'embedding': [N, 640]}
"""

from tf_metric_robust.models.layers import (
    ChannelStandardization,
    ChannelZeroPad,
    PerImageStandardization,
)
from tf_metric_robust.models.madry_mnist import madry_mnist
from tf_metric_robust.models.mnist_large import mnist_large
from tf_metric_robust.models.mnist_mlp import mnist_mlp
from tf_metric_robust.models.preact_bottleneck import preact_resnet_tiny
from tf_metric_robust.models.preact_resnet import preact_resnet18
from tf_metric_robust.models.small_cnn import small_cnn
from tf_metric_robust.models.wide_resnet import wide_resnet
from tf_metric_robust.models.wide_resnet_swish import wide_resnet_swish
from tf_metric_robust.models.wrap import with_embedding  # noqa: F401 (your own Keras model)

# Name -> builder(num_classes, input_shape, **kwargs); backs the --model flag.
MODELS = {
    "small_cnn": small_cnn,
    "madry_mnist": madry_mnist,
    "mnist_large": mnist_large,
    "mnist_mlp": mnist_mlp,
    "wide_resnet": wide_resnet,
    "wide_resnet_swish": wide_resnet_swish,
    "preact_resnet18": preact_resnet18,
    "preact_resnet_tiny": preact_resnet_tiny,
}


def build(name, num_classes, input_shape, **kwargs):
    """Builds model `name` for `num_classes` classes and [0, 1] images of `input_shape` (H, W, C).

    Args:
      name: a key of `MODELS`.
      num_classes: number of logits C (>= 2).
      input_shape: (H, W, C) of one image.
      **kwargs: model options, e.g. `weight_decay` (all models), `depth`/`width` (wide_resnet,
        wide_resnet_swish).

    Returns:
      A functional `keras.Model`; `model(x, training=...)` returns {'logits': [N, C] float32,
      'embedding': [N, D] float32}.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(int(d) != d or d < 1 for d in input_shape):
        raise ValueError(f"input_shape must be (H, W, C) positive integers, got {input_shape!r}")
    return MODELS[name](int(num_classes), tuple(int(d) for d in input_shape), **kwargs)


def embedding_dim(model):
    """Width D of the model's embedding (the output of its layer named 'embedding')."""
    return int(model.get_layer("embedding").output.shape[-1])


__all__ = [
    "MODELS",
    "build",
    "embedding_dim",
    "small_cnn",
    "madry_mnist",
    "mnist_large",
    "mnist_mlp",
    "wide_resnet",
    "wide_resnet_swish",
    "preact_resnet_tiny",
    "preact_resnet18",
    "PerImageStandardization",
    "ChannelStandardization",
    "ChannelZeroPad",
]
