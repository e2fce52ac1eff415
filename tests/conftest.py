"""Shared test set-up: two logical CPU devices (for 2-replica tests) and the real MNIST-5k digits."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

# Must run before anything initialises the CPU device: one physical CPU seen as two replicas.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture(scope="session")
def mnist5k_arrays():
    """(images float32 [5000,28,28,1] in [0,1], labels int64 [5000]) of real MNIST digits."""
    from tf_metric_robust import data

    images, labels = data.read_mnist5k()
    return images.astype(np.float32) / 255.0, labels
