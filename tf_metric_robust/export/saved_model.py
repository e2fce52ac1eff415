"""SavedModel export for serving: classify, embed and flag adversarial inputs in one folder.

The detector works in the embedding space of TLA (Mao et al., "Metric Learning for Adversarial
Robustness", NeurIPS 2019, arXiv 1909.00900; see detection.py): the paper's class-conditional
Gaussians (default) or kNN, fitted on the same clean training examples as `bin/evaluate
--detection` (reference_examples) and stored in the SavedModel, so `detection_score` needs nothing
but the exported folder. bin/export and the export at the end of bin/train (export_with_detector)
also record the detector, its reference and the threshold flagging 5% of clean test images
(assets.extra/detector.json and the saved detector variables `threshold`, `description`). The
layout is the one TF Serving watches:

    export_dir/<version>/saved_model.pb, variables/, assets.extra/tf_serving_warmup_requests

A version is written to a hidden temporary folder next to it and renamed into place, so a crash
never leaves a half-written version where TF Serving (or `latest_version`) would pick it up.
"""

import os

import tensorflow as tf
from absl import logging

from tf_metric_robust import atomic_io, run_folder
from tf_metric_robust.config import UserError
from tf_metric_robust.export.detector import export_detector, make_detector
from tf_metric_robust.export.folders import check_destination, refuse_existing, write_version
from tf_metric_robust.export.serving import ServingModule
from tf_metric_robust.export.warmup import WARMUP_FILE, write_warmup_requests

DETECTOR_FILE = os.path.join("assets.extra", "detector.json")  # the detector's record


def export_saved_model(
    network,
    export_dir,
    *,
    reference_images=None,
    reference_labels=None,
    version=None,
    warmup=True,
    detector=None,
    **detector_options,
):
    """Writes `network` as export_dir/<version>/ atomically; returns that version folder's path.

    `reference_images` [M,H,W,C] in [0,1] with `reference_labels` [M] (clean training examples,
    e.g. from `reference_examples`) add the `detection_score` output, from
    `make_detector(network, reference_images, reference_labels, **detector_options)`; without
    them the signatures carry the contract outputs only. `version` defaults to the largest
    existing one plus 1; an existing version is never overwritten. `warmup` writes TF Serving's
    warm-up file. `detector`: an already fitted detector (make_detector) instead of the reference.
    """
    check_destination(export_dir, version)
    if (reference_images is None) != (reference_labels is None):
        raise ValueError("pass both reference_images and reference_labels, or neither")
    if detector is None and reference_images is not None:
        detector = make_detector(network, reference_images, reference_labels, **detector_options)
    module = ServingModule(network, detector)

    def write(folder):
        tf.saved_model.save(module, folder, signatures=module.signatures())
        if warmup:
            write_warmup_requests(os.path.join(folder, WARMUP_FILE), module.image_shape)

    return write_version(export_dir, version, write)


def export_with_detector(
    network,
    dataset,
    config,
    *,
    checkpoint,
    export_dir=None,
    detector_required=True,
    report=logging.warning,
):
    """Exports `network` with the detector of ExportConfig `config` (export_detector: reference,
    threshold, record) and writes the record to assets.extra/detector.json; returns (version
    folder, record or None). The one path of bin/export and of the export ending bin/train.

    `export_dir` defaults to config.resolved_export_dir. A detector that cannot be fitted is a
    UserError if `detector_required`, else the export goes without it (no detection_score) and
    `report` says so in one line: a finished training run keeps its SavedModel.
    """
    detector, record = None, None
    try:
        detector, record = export_detector(network, dataset, config, checkpoint=checkpoint)
    except (ValueError, MemoryError) as error:  # e.g. one reference per class, detection_k
        if detector_required:
            raise UserError(str(error)) from None
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        report(
            "Exporting without a detector (no detection_score; bin/export can add one, e.g. "
            f"--detector=knn): {reason}"
        )
    path = export_saved_model(
        network,
        export_dir or config.resolved_export_dir,
        detector=detector,
        version=config.version,
        warmup=config.warmup,
    )
    if record is not None:
        # The same record beside the model for servers that do not load it in Python; the saved
        # `detector.description` and `detector.threshold` variables are the atomic copy.
        os.makedirs(os.path.join(path, os.path.dirname(DETECTOR_FILE)), exist_ok=True)
        atomic_io.write_json_atomic(os.path.join(path, DETECTOR_FILE), record)
    return path, record


def export_run(config):
    """bin/export: exports the latest checkpoint of a training run (ExportConfig) with its
    detector; returns (version folder, checkpoint path)."""
    if not os.path.isdir(config.model_dir):
        raise UserError(f"--model_dir {config.model_dir} does not exist")
    if config.version is not None:  # refuse before the slow part
        refuse_existing(config.resolved_export_dir, config.version)
    network, recipe, checkpoint = run_folder.load_network(config.model_dir)
    path, _ = export_with_detector(network, recipe["dataset"], config, checkpoint=checkpoint)
    return path, checkpoint
