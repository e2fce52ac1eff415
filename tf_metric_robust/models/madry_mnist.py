"""The MNIST CNN of Madry et al. (ICLR 2018, mnist_challenge), also TLA's MNIST model.

conv5x5-32 ReLU, maxpool 2, conv5x5-64 ReLU, maxpool 2, fc1024 ReLU, fc logits; 'SAME' padding;
weights truncated-normal(stddev 0.1) and biases 0.1 as in both authors' code. TLA's embedding
('x4' in their code) is the fc1024 output after ReLU.
"""

import keras

from tf_metric_robust.models import layers


def madry_mnist(num_classes, input_shape, *, weight_decay=0.0):
    """Builds Madry's MNIST CNN (3.27M parameters on 28x28x1, 1024-d embedding).

    Args:
      num_classes: number of logits.
      input_shape: (H, W, C) of [0, 1] float images, (28, 28, 1) for MNIST.
      weight_decay: adds `weight_decay * tf.nn.l2_loss(kernel)` per conv/dense kernel to
        `model.losses` (TLA's MNIST config uses 2e-4; Madry's MNIST code none).

    Returns:
      A functional `keras.Model` mapping images to {'logits': [N, C], 'embedding': [N, 1024]}.
    """
    reg = layers.kernel_regularizer(weight_decay)
    init = layers.truncated_normal_init()
    images = keras.Input(shape=input_shape, name="images")
    x = images
    for i, filters in enumerate((32, 64), start=1):
        x = keras.layers.Conv2D(
            filters,
            5,
            padding="same",
            activation="relu",
            kernel_regularizer=reg,
            name=f"conv{i}",
            **init,
        )(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(1024, kernel_regularizer=reg, name="fc1", **init)(x)
    # The ReLU is the embedding layer so the fc1 matmul keeps the mixed-precision policy.
    embedding = keras.layers.ReLU(dtype="float32", name="embedding")(x)
    outputs = layers.classifier_outputs(embedding, num_classes, regularizer=reg, **init)
    return keras.Model(images, outputs, name="madry_mnist")
