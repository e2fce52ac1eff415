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
def env_without_tensorflow(tmp_path_factory):
    """os.environ for a bin/ subprocess in which `import tensorflow` raises: an error it prints
    as one line proves the check ran before TensorFlow was imported (no timing involved)."""
    folder = tmp_path_factory.mktemp("no_tensorflow")
    os.makedirs(folder / "tensorflow")
    (folder / "tensorflow" / "__init__.py").write_text(
        'raise ImportError("tensorflow was imported before the check")\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def mnist5k_arrays():
    """(images float32 [5000,28,28,1] in [0,1], labels int64 [5000]) of real MNIST digits."""
    from tf_metric_robust import data

    images, labels = data.read_mnist5k()
    return images.astype(np.float32) / 255.0, labels


@pytest.fixture
def mock_tfds():
    """Factory of contexts where every tfds dataset yields `num_examples` fake examples.

    `tfds.testing.mock_data` fakes the reads but not the is-prepared check (`data` runs
    `data.preparation.is_prepared` to fail fast offline), so that check is patched too:
    `with mock_tfds(num_examples=64): ...`.
    """
    import contextlib
    from unittest import mock

    import tensorflow_datasets as tfds

    from tf_metric_robust.data import preparation as dataset_preparation

    @contextlib.contextmanager
    def mocked(num_examples):
        with (
            tfds.testing.mock_data(num_examples=num_examples),
            mock.patch.object(dataset_preparation, "is_prepared", return_value=True),
        ):
            yield

    return mocked


@pytest.fixture(scope="session")
def mnist5k_data_dir(tmp_path_factory):
    """A tfds data_dir with the real 'mnist5k' dataset prepared (about 2 s, once per session)."""
    from tf_metric_robust import data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.load_split("mnist5k", "test", data_dir=data_dir)  # auto-prepares: local file, no network
    return data_dir


@pytest.fixture
def mnist5k_run_config(tmp_path, mnist5k_data_dir):
    """Factory of the TrainConfig of a few training.train steps on the real MNIST-5k digits into
    tmp_path/'run': the probe and the final evaluation see the same `examples`, and `attack` also
    attacks the evaluation unless `eval_attack` is given; other TrainConfig fields pass through."""
    from tf_metric_robust.config import TrainConfig

    def make(*, batch_size, train_steps, examples, attack, mode="pgd", **fields):
        fields.setdefault("eval_attack", attack)
        return TrainConfig(
            model_dir=str(tmp_path / "run"),
            dataset="mnist5k",
            data_dir=mnist5k_data_dir,
            mode=mode,
            batch_size=batch_size,
            train_steps=train_steps,
            eval_examples=examples,
            final_eval_examples=examples,
            attack=attack,
            **fields,
        )

    return make


@pytest.fixture(scope="session")
def trained_small_cnn(mnist5k_arrays):
    """(network, x [200], y [200]): small_cnn after 150 natural Adam steps, trained once a session.

    x, y are every 25th digit (20 per class), held out of training; the network returns
    {'logits', 'embedding'}. Shared by the attack, suite and evaluation tests.
    """
    import keras

    from tf_metric_robust import models

    images, labels = mnist5k_arrays
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1))
    classifier = keras.Model(network.input, network.output["logits"])
    classifier.compile(
        keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    held_out = np.arange(len(labels)) % 25 == 0
    classifier.fit(
        images[~held_out],
        labels[~held_out],
        batch_size=32,
        epochs=1,
        steps_per_epoch=150,
        shuffle=True,
        verbose=0,
    )
    return network, images[held_out], labels[held_out]
