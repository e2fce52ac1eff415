"""The TLA authors' MNIST network (Mao et al., NeurIPS 2019, arXiv 1909.00900, Table 5).

columbia/Metric_Learning_Adversarial_Robustness, learning/model_mnist_large.py:80-143:
conv3x3-32, BN, ReLU; conv3x3-64, BN, ReLU; max-pool 2; conv3x3-128, BN, ReLU; conv3x3-256, BN,
ReLU; max-pool 2; fc1024, BN, ReLU (= the embedding 'x4'); fc logits. 'SAME' padding; weights
truncated-normal(stddev 0.1), biases 0.1 (lines 213-222); BN decay 0.9 and epsilon 0.001 of
tf.contrib.layers.batch_norm (lines 197-207); weight decay on every kernel (lines 232-238).
"""

import keras

from tf_metric_robust.models import layers


def mnist_large(num_classes, input_shape, *, weight_decay=0.0):
    """Builds the authors' MNIST BN network (1024-d embedding; 13.3M parameters on 28x28x1).

    Arguments and outputs as `madry_mnist`'s; the authors' config_mnist.json:27 sets the
    weight_decay to 2e-4.
    """
    reg = layers.kernel_regularizer(weight_decay)
    init = layers.truncated_normal_init()
    images = keras.Input(shape=input_shape, name="images")
    x = images
    for block, widths in enumerate(((32, 64), (128, 256)), start=1):
        for i, filters in enumerate(widths, start=1):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", kernel_regularizer=reg, name=f"conv{block}_{i}", **init
            )(x)
            x = layers.batch_norm(f"bn{block}_{i}")(x)
            x = keras.layers.ReLU(name=f"relu{block}_{i}")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{block}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(1024, kernel_regularizer=reg, name="fc1", **init)(x)
    x = layers.batch_norm("bn_fc1")(x)
    # The ReLU is the embedding layer so the fc1 matmul keeps the mixed-precision policy.
    embedding = keras.layers.ReLU(dtype="float32", name="embedding")(x)
    outputs = layers.classifier_outputs(embedding, num_classes, regularizer=reg, **init)
    return keras.Model(images, outputs, name="mnist_large")
