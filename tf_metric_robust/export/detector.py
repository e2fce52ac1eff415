"""The exported detector: its clean reference examples, fitting, the 5%-FPR threshold and its
record.

bin/evaluate's detection defaults (5000 clean training references, k = 50) are the export's, and
both take the covariance from config.detector_settings, so the served score is the one whose ROC
AUC `bin/evaluate --detection` reports.
"""

import json

import numpy as np
import tensorflow as tf

from tf_metric_robust import data, detection, models
from tf_metric_robust.config import (
    DEFAULT_DETECTION_K,
    DEFAULT_REFERENCE_SIZE,
    UserError,
    detector_settings,
)


def reference_examples(
    dataset, *, size=DEFAULT_REFERENCE_SIZE, data_dir=None, download=False, batch_size=500
):
    """About `size` clean training examples, split evenly over the classes, that detectors are
    fitted on: the one selection bin/export and bin/evaluate --detection both use.

    Takes the first size // num_classes examples (at least 1) of every class of `dataset`'s
    training split in file order (tfds stores examples shuffled) and stops reading as soon as
    every class is full. Returns (images float32 [M,H,W,C] in [0,1], labels int64 [M]).
    """
    if size < 1:
        raise UserError(f"detection_reference must be >= 1, got {size}")
    info = data.dataset_info(dataset)
    per_class = max(1, size // info.num_classes)
    split = data.load_split(dataset, info.train_split, data_dir=data_dir, download=download)
    kept_images, kept_labels = [], []
    counts = np.zeros(info.num_classes, np.int64)
    for images, labels in split.batch(batch_size).as_numpy_iterator():
        for image, label in zip(images, labels):
            if counts[label] < per_class:
                counts[label] += 1
                kept_images.append(image)
                kept_labels.append(label)
        if counts.min() >= per_class:
            break
    if not kept_labels:
        raise UserError(f"{dataset}: the training split is empty")
    return np.stack(kept_images).astype(np.float32), np.asarray(kept_labels, np.int64)


def make_detector(
    network,
    images,
    labels,
    *,
    k=DEFAULT_DETECTION_K,
    score_type="agreement",
    detector="gaussian",
    covariance="per_class",
    batch_size=256,
):
    """The `detector` ('gaussian' or 'knn', detection.build) fitted on the network's embeddings
    of clean `images` [M,H,W,C] with `labels` [M]."""
    embeddings = [
        network(images[i : i + batch_size], training=False)["embedding"].numpy()
        for i in range(0, len(images), batch_size)
    ]
    num_classes = int(network.get_layer("logits").units)
    return detection.build(
        detector,
        np.concatenate(embeddings).astype(np.float32),
        labels,
        num_classes=num_classes,
        k=k,
        score_type=score_type,
        covariance=covariance,
    )


def calibrate_detector(network, detector, images, *, batch_size=256):
    """The score threshold flagging 5% of clean `images` (detection.threshold_at_fpr), which
    is also stored on the detector as tf.Variable `threshold` (saved with the export)."""
    scores = []
    for i in range(0, len(images), batch_size):
        out = network(images[i : i + batch_size], training=False)
        scores.append(detector.score(out["embedding"], tf.argmax(out["logits"], -1)).numpy())
    threshold = detection.threshold_at_fpr(np.concatenate(scores))
    detector.threshold = tf.Variable(threshold, dtype=tf.float32, trainable=False, name="threshold")
    return threshold


def export_detector(network, dataset, config, *, checkpoint):
    """(detector, record) of an export: the detector of ExportConfig `config` fitted on
    `dataset`'s reference examples with config.detector_settings' options, and its 5%-FPR
    threshold on up to config.threshold_examples clean test images. The record (what
    assets.extra/detector.json holds) is also stored on the detector as tf.Variable
    `description`; `checkpoint` names the exported weights in it. Raises ValueError when the
    detector cannot be fitted (e.g. one reference per class)."""
    info = data.dataset_info(dataset)
    images, labels = reference_examples(
        dataset, size=config.detection_reference, data_dir=config.data_dir, download=config.download
    )
    num_classes = int(network.get_layer("logits").units)
    options = detector_settings(
        config,
        dataset,
        num_classes=num_classes,
        embedding_dim=models.embedding_dim(network),
        counts=np.bincount(labels, minlength=num_classes),
    )
    detector = make_detector(network, images, labels, **options)
    clean = np.concatenate(
        [
            x
            for x, _ in data.eval_dataset(
                dataset,
                batch_size=500,
                split=info.test_split,
                num_examples=config.threshold_examples,
                data_dir=config.data_dir,
                download=config.download,
            ).as_numpy_iterator()
        ]
    )
    threshold = calibrate_detector(network, detector, clean)
    record = {
        **detector.describe(),
        "checkpoint": checkpoint,
        "reference": {
            "function": "export.reference_examples",
            "dataset": dataset,
            "split": info.train_split,
            "examples": int(len(labels)),
            "per_class": np.bincount(labels).tolist(),
        },
        "threshold": threshold,
        "flag_when": "detection_score > threshold",
        "threshold_false_positive_rate": detection.FALSE_POSITIVE_RATE,
        "threshold_images": {"split": info.test_split, "examples": int(len(clean))},
    }
    detector.description = tf.Variable(
        json.dumps(record, sort_keys=True), trainable=False, name="description"
    )
    return detector, record
