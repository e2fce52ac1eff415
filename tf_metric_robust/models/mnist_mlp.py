"""The TLA authors' MNIST MLP: the network their shipped config trains.

columbia/Metric_Learning_Adversarial_Robustness, learning/model_mnist_mlp.py:81-130, chosen by
config_mnist.json:65 ("model_type": "MLP") at train_update_fast_triplet.py:210-212: flatten,
then three times fc1024, BN, ReLU (lines 87-110); the third ReLU is the embedding 'x4' (lines
124, 169); fc logits (line 130). Weights truncated-normal(stddev 0.1), biases 0.1 (lines
200-209); BN decay 0.9 and epsilon 0.001 of tf.contrib.layers.batch_norm (lines 184-194); weight
decay on every weight matrix 'DW' (lines 219-225). The third BN repeats the name scope 'bn12'
(lines 102, 109): a name scope only, contrib's batch_norm makes its variables in its own
variable scope, so each BN has its own parameters.
"""

import keras

from tf_metric_robust.models import layers

WIDTH = 1024  # every hidden layer (model_mnist_mlp.py:90, 98, 106)


def mnist_mlp(num_classes, input_shape, *, weight_decay=0.0):
    """Builds the authors' MNIST MLP (1024-d embedding; 2.9M parameters on 28x28x1).

    Arguments and outputs as `madry_mnist`'s; config_mnist.json:27 sets weight_decay 2e-4.
    """
    reg = layers.kernel_regularizer(weight_decay)
    init = layers.truncated_normal_init()
    images = keras.Input(shape=input_shape, name="images")
    x = keras.layers.Flatten(name="flatten")(images)
    for i in range(1, 4):
        x = keras.layers.Dense(WIDTH, kernel_regularizer=reg, name=f"fc{i}", **init)(x)
        x = layers.batch_norm(f"bn{i}")(x)
        if i < 3:
            x = keras.layers.ReLU(name=f"relu{i}")(x)
    # The last ReLU is the embedding layer so the fc3 matmul keeps the mixed-precision policy.
    embedding = keras.layers.ReLU(dtype="float32", name="embedding")(x)
    outputs = layers.classifier_outputs(embedding, num_classes, regularizer=reg, **init)
    return keras.Model(images, outputs, name="mnist_mlp")
