"""Fake datasets, `--dataset=fake:<name>`: smoke-test any recipe on any machine, offline.

Examples come from `tfds.testing.mock_data` on the real tfds builder, so they have its image
shape, dtype and number of classes (random pixels and labels, the same in every process): a
recipe runs end to end without its data, e.g. `bin/train --flagfile=configs/cifar.flags
--dataset=fake:cifar10 --train_steps=2`. Its accuracies mean nothing. For the builders that read
files (Tiny ImageNet), `tiny_imagenet_files` writes a miniature of the real archive instead.
"""

import functools
import os
import re
import types
import zipfile

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


def smooth_jpeg(rng, channels=3, shape=(64, 64)):
    """A JPEG of upsampled 8x8 noise: it compresses and decodes like a natural image."""
    coarse = rng.uniform(0, 255, size=(1, 8, 8, channels)).astype(np.float32)
    image = tf.image.resize(coarse, shape, method="bicubic")[0]
    return tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90).numpy()


def tiny_imagenet_files(wnids, train_per_class, val_per_class, seed=0):
    """{path inside tiny-imagenet-200/: bytes}, a miniature Tiny ImageNet in the real layout:
    wnids.txt and words.txt, train/<wnid>/images/ with one grayscale JPEG (the first), boxes,
    val/images/ labelled by val_annotations.txt out of class order, one unlabelled test/ image."""
    rng = np.random.default_rng(seed)
    files = {
        "wnids.txt": ("\n".join(wnids) + "\n").encode(),
        "words.txt": "".join(f"{w}\tname of {w}\n" for w in wnids).encode(),
    }
    for wnid in wnids:
        for i in range(train_per_class):
            gray = wnid == wnids[0] and i == 0
            files[f"train/{wnid}/images/{wnid}_{i}.JPEG"] = smooth_jpeg(rng, 1 if gray else 3)
        files[f"train/{wnid}/{wnid}_boxes.txt"] = f"{wnid}_0.JPEG\t0\t0\t63\t63\n".encode()
    annotations = []
    for i in range(val_per_class * len(wnids)):
        files[f"val/images/val_{i}.JPEG"] = smooth_jpeg(rng)
        annotations.append(f"val_{i}.JPEG\t{wnids[(1 - i) % len(wnids)]}\t1\t2\t60\t61")
    files["val/val_annotations.txt"] = ("\n".join(annotations) + "\n").encode()
    files["test/images/test_0.JPEG"] = smooth_jpeg(rng)
    return files


def write_tiny_imagenet(manual_dir, files, as_zip=True):
    """Writes `files` (tiny_imagenet_files) as manual_dir/tiny-imagenet-200.zip, or extracted."""
    os.makedirs(manual_dir, exist_ok=True)
    if as_zip:
        with zipfile.ZipFile(os.path.join(manual_dir, "tiny-imagenet-200.zip"), "w") as archive:
            for name, content in files.items():
                archive.writestr(f"tiny-imagenet-200/{name}", content)
        return
    for name, content in files.items():
        path = os.path.join(manual_dir, "tiny-imagenet-200", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
