"""Fake datasets, `--dataset=fake:<name>`: smoke-test any recipe on any machine, offline.

Examples come from `tfds.testing.mock_data` on the real tfds builder, so they have its image
shape, dtype and number of classes (random pixels and labels, the same in every process): a
recipe runs end to end without its data, e.g. `bin/train --flagfile=configs/cifar.flags
--dataset=fake:cifar10 --train_steps=2`. Its accuracies mean nothing.
"""

import functools
import re
import types

import numpy as np
from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

PREFIX = "fake:"
# Enough for every recipe: mnist.flags holds 5000 training examples out for validation, then
# needs a batch of 50; cifar.flags 1000, then 50 + a pool of 500.
TRAIN_EXAMPLES = 6000
TEST_EXAMPLES = 200


def base_name(name):
    """'fake:cifar10' -> 'cifar10'."""
    return name[len(PREFIX) :]


def size(spec, split):
    """Examples in a fake split (before any [a:b] slice)."""
    return TRAIN_EXAMPLES if split.split("[")[0] == spec.train_split else TEST_EXAMPLES


@functools.lru_cache(maxsize=None)
def _arrays(tfds_name, num_classes, split, count):
    """(images uint8 [N,H,W,C], labels int64 [N]) from mock_data, generated once per process."""
    # mock_data's internals trip tfds and tf.data deprecation warnings: not the user's concern.
    verbosity, tf_level = logging.get_verbosity(), tf.get_logger().level
    logging.set_verbosity(logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    try:
        return _mock_arrays(tfds_name, num_classes, split, count)
    finally:
        logging.set_verbosity(verbosity)
        tf.get_logger().setLevel(tf_level)


def _mock_arrays(tfds_name, num_classes, split, count):
    with tfds.testing.mock_data(num_examples=count):
        builder = tfds.builder(tfds_name, try_gcs=False)
        label = builder.info.features["label"]
        if label.num_classes is None:  # names read at preparation (tiny_imagenet's wnids.txt)
            label.names = [str(i) for i in range(num_classes)]
        dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        images, labels = next(dataset.batch(count).as_numpy_iterator())
    return images, labels.astype(np.int64)


def load_split(spec, split):
    """(dataset of (image uint8 [H,W,C], label int64), number of examples) of a fake split.

    `split` may carry a tfds slice ('train[100:]', 'train[:10%]').
    """
    if not re.fullmatch(r"\w+(\[.*\])?", split):
        raise ValueError(f"{spec.name}: unknown split {split!r}")
    base = split.split("[")[0]
    images, labels = _arrays(spec.tfds_name, spec.num_classes, base, size(spec, base))
    if base != split:
        (instruction,) = tfds.core.ReadInstruction.from_spec(split).to_absolute(
            {base: types.SimpleNamespace(num_examples=len(labels))}
        )
        rows = slice(instruction.from_, instruction.to)
        images, labels = images[rows], labels[rows]
    return tf.data.Dataset.from_tensor_slices((images, labels)), len(labels)
