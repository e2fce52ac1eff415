"""Input data: the dataset catalog, the training/evaluation pipelines and the dataset builders.

catalog: names -> DatasetSpec, tfds preparation (preparation.py: lock, offline checks), raw splits.
pipelines: the resumable training stream and ordered evaluation batches, [0,1] float32 images.
mnist5k_builder, tiny_imagenet_builder: tfds builders; image_folder: `image_folder:<path>` sets;
fake: `fake:<name>` random data of a real dataset's shape.
"""

from tf_metric_robust.data.catalog import (
    AUTOTUNE,
    PAD,
    DatasetNotFoundError,
    DatasetSpec,
    dataset_info,
    dataset_names,
    eval_size,
    load_split,
    mnist5k_csv_path,
    read_mnist5k,
    validation_split,
)
from tf_metric_robust.data.pipelines import augment_batch, eval_dataset, train_dataset

__all__ = [
    "AUTOTUNE",
    "PAD",
    "DatasetNotFoundError",
    "DatasetSpec",
    "augment_batch",
    "dataset_info",
    "dataset_names",
    "eval_dataset",
    "eval_size",
    "load_split",
    "mnist5k_csv_path",
    "read_mnist5k",
    "train_dataset",
    "validation_split",
]
