"""A small CNN for tests and the offline MNIST demo: fast on CPU, ~98% on MNIST after one epoch."""

import keras

from tf_metric_robust.models import layers


def small_cnn(num_classes, input_shape, *, embedding_dim=128, weight_decay=0.0):
    """conv3x3-32, pool, conv3x3-64, pool, dense `embedding_dim` (ReLU, the embedding), logits.

    Args:
      num_classes: number of logits.
      input_shape: (H, W, C) of [0, 1] float images, e.g. (28, 28, 1).
      embedding_dim: width D of the penultimate dense layer.
      weight_decay: adds `weight_decay * tf.nn.l2_loss(kernel)` per conv/dense kernel to
        `model.losses` (Madry/TLA convention; see `layers.kernel_regularizer`).

    Returns:
      A functional `keras.Model` mapping images to {'logits': [N, C], 'embedding': [N, D]}.
    """
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
    reg = layers.kernel_regularizer(weight_decay)
    images = keras.Input(shape=input_shape, name="images")
    x = images
    for i, filters in enumerate((32, 64), start=1):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", kernel_regularizer=reg, name=f"conv{i}"
        )(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(embedding_dim, kernel_regularizer=reg, name="fc")(x)
    # The ReLU is the embedding layer so the big matmul keeps the mixed-precision policy.
    embedding = keras.layers.ReLU(dtype="float32", name="embedding")(x)
    outputs = layers.classifier_outputs(embedding, num_classes, regularizer=reg)
    return keras.Model(images, outputs, name="small_cnn")
