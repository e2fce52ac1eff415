"""SavedModel export for serving: classify, embed and flag adversarial inputs in one folder.

The detector works in the embedding space of TLA (Mao et al., "Metric Learning for Adversarial
Robustness", NeurIPS 2019, arXiv 1909.00900; see detection.py): the paper's class-conditional
Gaussians (default) or kNN, fitted on the same clean training examples as `bin/evaluate
--detection` (reference_examples) and stored in the SavedModel, so `detection_score` needs nothing
but the exported folder. bin/export also records the detector, its reference and the threshold
flagging 5% of clean test images (assets.extra/detector.json and the saved detector variables
`threshold`, `description`). The layout is the one TF Serving watches:

    export_dir/<version>/saved_model.pb, variables/, assets.extra/tf_serving_warmup_requests

A version is written to a hidden temporary folder next to it and renamed into place, so a crash
never leaves a half-written version where TF Serving (or `latest_version`) would pick it up.
"""

import json
import os
import shutil
import uuid

import numpy as np
import tensorflow as tf

from tf_metric_robust import data, detection, run_files
from tf_metric_robust.config import DEFAULT_DETECTION_K, DEFAULT_REFERENCE_SIZE, UserError

GRADIENT_SIGNATURE = "logits_and_embedding"
SIGNATURES = ("serving_default", "serving_uint8", GRADIENT_SIGNATURE)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DETECTOR_FILE = os.path.join("assets.extra", "detector.json")  # bin/export's detector record
_TEMPORARY_PREFIX = ".tmp-export-"
# bin/evaluate's detection defaults (5000 clean training references, k = 50), so the served score
# is the one whose ROC AUC `bin/evaluate --detection` reports.


class ServingModule(tf.Module):
    """The serving graph of a network: input checks, outputs of the contract, detection score.

    `serve` takes float32 images [N,H,W,C] in [0,1]; `serve_uint8` takes uint8 pixels [0,255]
    (converted like the training pipeline, i.e. x / 255). Both return logits [N,C],
    probabilities [N,C], classes int64 [N], embedding [N,D] and, with a detector,
    detection_score float32 [N] (higher = more likely adversarial). `logits_and_embedding`
    (float32 input, same checks) returns only logits and embedding: the detector's batched loop
    makes gradients through a restored serving_default fail under persistent tapes and inside
    tf.function ("variable without handle data"), so attacks on the export use this one.

    Every check's output is the tensor the next step consumes (a tf.cond that passes the
    images through or fails), so the network cannot run on unchecked input.
    """

    def __init__(self, network, detector=None):
        super().__init__()
        # The network is deliberately not an attribute (not a saved object); see below.
        self._call_network = lambda images: network(images, training=False)
        self.detector = detector
        self.image_shape = tuple(int(d) for d in network.input_shape[1:])
        self.num_classes = int(network.get_layer("logits").units)
        self.embedding_dim = int(network.get_layer("embedding").output.shape[-1])
        # Unknown rank on purpose: every shape mistake reaches the checks below and gets their
        # message, instead of a binding error or a shape error deep inside a convolution.
        self.serve = tf.function(
            self._serve_float, input_signature=[tf.TensorSpec(None, tf.float32, name="images")])
        self.serve_uint8 = tf.function(
            self._serve_uint8, input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
        self.logits_and_embedding = tf.function(
            self._logits_and_embedding,
            input_signature=[tf.TensorSpec(None, tf.float32, name="images")])
        # Keras 3 variables wrap tf.Variables, and the traced graphs capture the inner ones. The
        # graph-mode loader of TF Serving and saved_model_cli restores only variables that are
        # saved objects themselves ("Could not find variable conv2/kernel" otherwise: keras-team/
        # keras#19274, tensorflow/tensorflow#72963), so exactly the captured ones are tracked;
        # tracking the network too would store every weight twice (keras-team/keras#23553).
        captured = {}
        for function in self.signatures().values():
            for variable in function.get_concrete_function().variables:
                captured.setdefault(id(variable), variable)
        self.serving_variables = list(captured.values())

    def signatures(self):
        return {"serving_default": self.serve, "serving_uint8": self.serve_uint8,
                GRADIENT_SIGNATURE: self.logits_and_embedding}

    def _checked_float(self, images):
        """images float32 [N,H,W,C] in [0,1], else an InvalidArgumentError naming the problem."""
        images = _check_shape(images, self.image_shape, "float32 in [0, 1]")
        images = _require(tf.reduce_all(tf.math.is_finite(images)), images, [
            "images contain NaN or Inf; expected finite float32 values in [0, 1]"])
        low, high = tf.reduce_min(images), tf.reduce_max(images)
        return _require(tf.logical_and(low >= 0.0, high <= 1.0), images, [
            "images must be float32 in [0, 1] (raw 0-255 pixels go to signature serving_uint8);"
            " got min", low, "max", high])

    def _serve_float(self, images):
        return self._outputs(self._checked_float(images))

    def _serve_uint8(self, images):
        images = _check_shape(images, self.image_shape, "uint8 in [0, 255]")
        # The same conversion as data.py's training pipeline (x / 255, to within one ulp).
        return self._outputs(tf.image.convert_image_dtype(images, tf.float32))

    def _logits_and_embedding(self, images):
        """The differentiable part of serving_default, for attacks on the exported model."""
        return self._network_outputs(self._checked_float(images))

    def _network_outputs(self, images):
        """{'logits', 'embedding'} float32; an empty batch gets empty outputs without running the
        network (oneDNN's convolution rejects a zero-size batch: "input depth must be evenly
        divisible by filter depth")."""

        def run():
            outputs = self._call_network(images)
            return {name: tf.cast(outputs[name], tf.float32) for name in ("logits", "embedding")}

        def empty():
            return {"logits": tf.zeros([0, self.num_classes]),
                    "embedding": tf.zeros([0, self.embedding_dim])}

        return tf.cond(tf.shape(images)[0] > 0, run, empty)

    def _outputs(self, images):
        outputs = self._network_outputs(images)
        logits, embedding = outputs["logits"], outputs["embedding"]
        classes = tf.argmax(logits, axis=-1)
        result = {"logits": logits, "probabilities": tf.nn.softmax(logits), "classes": classes,
                  "embedding": embedding}
        if self.detector is not None:
            result["detection_score"] = self.detector.score(embedding, classes)
        return result


def _require(condition, tensor, message):
    """`tensor` if `condition` holds, else an InvalidArgumentError "assertion failed: [message]".

    A tf.cond rather than a control dependency: later ops consume its output, so none of them
    can run before the check (the graph optimiser may drop or reorder control-only edges).
    """

    def fail():
        with tf.control_dependencies([tf.debugging.Assert(condition, message, summarize=8)]):
            return tf.identity(tensor)

    return tf.cond(condition, lambda: tf.identity(tensor), fail)


def _check_shape(images, image_shape, kind):
    """Checks rank 4 and [N, H, W, C] = image_shape; returns images with that static shape."""
    expected = "[N, {}, {}, {}]".format(*image_shape)
    shape = tf.shape(images)
    # Padding makes the slice 3 long at any rank (even 0), so the comparison cannot fail.
    sizes = tf.concat([shape, [-1, -1, -1, -1]], axis=0)[1:4]
    valid = tf.logical_and(tf.equal(tf.size(shape), 4), tf.reduce_all(tf.equal(sizes, image_shape)))
    images = _require(valid, images, [
        f"images must be a batch of shape {expected} (NHWC) of {kind}; got shape", shape])
    return tf.ensure_shape(images, [None, *image_shape])


def reference_examples(dataset, *, size=DEFAULT_REFERENCE_SIZE, data_dir=None, download=False,
                       batch_size=500):
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


def make_detector(network, images, labels, *, k=DEFAULT_DETECTION_K, score_type="agreement",
                  detector="gaussian", covariance="per_class", batch_size=256):
    """The `detector` ('gaussian' or 'knn', detection.build) fitted on the network's embeddings
    of clean `images` [M,H,W,C] with `labels` [M]."""
    embeddings = [network(images[i:i + batch_size], training=False)["embedding"].numpy()
                  for i in range(0, len(images), batch_size)]
    num_classes = int(network.get_layer("logits").units)
    return detection.build(detector, np.concatenate(embeddings).astype(np.float32), labels,
                           num_classes=num_classes, k=k, score_type=score_type,
                           covariance=covariance)


def calibrate_detector(network, detector, images, *, batch_size=256):
    """The score threshold flagging 5% of clean `images` (detection.threshold_at_fpr), which
    is also stored on the detector as tf.Variable `threshold` (saved with the export)."""
    scores = []
    for i in range(0, len(images), batch_size):
        out = network(images[i:i + batch_size], training=False)
        scores.append(detector.score(out["embedding"], tf.argmax(out["logits"], -1)).numpy())
    threshold = detection.threshold_at_fpr(np.concatenate(scores))
    detector.threshold = tf.Variable(threshold, dtype=tf.float32, trainable=False,
                                     name="threshold")
    return threshold


def versions(export_dir):
    """Sorted integer versions under export_dir (children named by digits, as TF Serving reads)."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(export_dir, name)))


def latest_version(export_dir):
    """Path of the newest loadable version folder in export_dir, export_dir itself if it is an
    unversioned SavedModel, or None."""
    if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    for version in reversed(versions(export_dir)):
        path = os.path.join(export_dir, str(version))
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            return path
    return None


def export_saved_model(network, export_dir, *, reference_images=None, reference_labels=None,
                       detection_k=DEFAULT_DETECTION_K, detection_score="agreement",
                       version=None, warmup=True, detector=None):
    """Writes `network` as export_dir/<version>/ atomically; returns that version folder's path.

    `reference_images` [M,H,W,C] in [0,1] with `reference_labels` [M] (clean training examples,
    e.g. from `reference_examples`) add the `detection_score` output; without them the
    signatures carry the contract outputs only. `version` defaults to the largest existing one
    plus 1; an existing version is never overwritten. `warmup` writes TF Serving's warm-up file.
    `detector`: an already fitted detector (make_detector) instead of the reference.
    """
    if "://" in str(export_dir):
        raise UserError(f"export_dir {export_dir} must be a local folder (the version is renamed "
                        "into place atomically); export locally and copy the version folder")
    if (reference_images is None) != (reference_labels is None):
        raise ValueError("pass both reference_images and reference_labels, or neither")
    if version is not None and (int(version) != version or version < 1):
        raise UserError(f"version must be an integer >= 1, got {version}")
    if detector is None and reference_images is not None:
        detector = make_detector(network, reference_images, reference_labels, k=detection_k,
                                 score_type=detection_score)
    module = ServingModule(network, detector)
    os.makedirs(export_dir, exist_ok=True)
    if version is not None:
        _refuse_existing(export_dir, int(version))
    temporary = os.path.join(export_dir, f"{_TEMPORARY_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
    try:
        tf.saved_model.save(module, temporary, signatures=module.signatures())
        if warmup:
            write_warmup_requests(os.path.join(temporary, WARMUP_FILE), module.image_shape)
        _sync_tree(temporary)
        final = _publish(temporary, export_dir, version)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _sync_directory(export_dir)
    return final


def _refuse_existing(export_dir, version):
    if os.path.exists(os.path.join(export_dir, str(version))):
        raise UserError(f"version {version} already exists in {export_dir}; versions are never "
                        "overwritten (TF Serving may be serving it): pick another --version")


def _publish(temporary, export_dir, version, attempts=5):
    """Renames the finished temporary folder to export_dir/<version> (atomic on POSIX); without
    a version, takes the next free one, retrying if a concurrent export takes it first."""
    for _ in range(attempts):
        chosen = int(version) if version is not None else (versions(export_dir) or [0])[-1] + 1
        _refuse_existing(export_dir, chosen)
        final = os.path.join(export_dir, str(chosen))
        try:
            os.rename(temporary, final)  # fails if a concurrent export created `final` meanwhile
            return final
        except OSError:
            if not os.path.exists(final):
                raise  # a real file-system error; a taken version is refused or skipped above
    raise UserError(f"{export_dir}: concurrent exports kept taking the next version; retry")


def _sync_tree(root):
    """fsyncs every file and folder under root, so the rename publishes complete files only."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        _sync_directory(folder)


def _sync_directory(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# TF Serving warm-up requests -------------------------------------------------------------------
# tensorflow_serving's Python protos are not a dependency, so the few messages a warm-up record
# needs are written in protobuf wire format here (field numbers from tensorflow_serving/apis:
# PredictionLog.predict_log = 6, PredictLog.request = 1, PredictRequest.model_spec = 1 and
# inputs = 2 (map<string, TensorProto>), ModelSpec.signature_name = 3); the tensors themselves
# are real TensorProtos from tf.make_tensor_proto.


def _varint(value):
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number, payload):
    """A length-delimited field (wire type 2): strings, bytes, sub-messages, map entries."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def predict_log_record(signature_name, inputs):
    """A serialized tensorflow.serving.PredictionLog holding a PredictRequest for one signature.

    `inputs` maps input names to NumPy arrays; returns bytes for one TFRecord.
    """
    model_spec = _field(3, signature_name.encode())
    request = _field(1, model_spec) + b"".join(
        _field(2, _field(1, name.encode()) + _field(2, tf.make_tensor_proto(value)
                                                   .SerializeToString()))
        for name, value in sorted(inputs.items()))
    return _field(6, _field(1, request))


def write_warmup_requests(path, image_shape, batch_size=1):
    """Writes TF Serving's assets.extra/tf_serving_warmup_requests: one request per signature of
    SIGNATURES (a batch of black images), so the first client request does not pay for graph warm-up."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shape = (batch_size, *image_shape)
    requests = {"serving_default": np.zeros(shape, np.float32),
                "serving_uint8": np.zeros(shape, np.uint8),
                GRADIENT_SIGNATURE: np.zeros(shape, np.float32)}
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, images in requests.items():
            writer.write(predict_log_record(signature_name, {"images": images}))


# bin/export ------------------------------------------------------------------------------------


def export_run(config):
    """Exports a training run (ExportConfig); returns (version folder, checkpoint path)."""
    if not os.path.isdir(config.model_dir):
        raise UserError(f"--model_dir {config.model_dir} does not exist")
    if config.version is not None:  # refuse before the slow part
        _refuse_existing(config.resolved_export_dir, config.version)
    from tf_metric_robust.config.evaluation import default_detection_covariance

    network, recipe, checkpoint = run_files.load_network(config.model_dir)
    dataset = recipe["dataset"]
    images, labels = reference_examples(dataset, size=config.detection_reference,
                                        data_dir=config.data_dir, download=config.download)
    covariance = config.detection_covariance or default_detection_covariance(dataset)
    info = data.dataset_info(dataset)
    clean = np.concatenate([x for x, _ in data.eval_dataset(
        dataset, batch_size=500, split=info.test_split, num_examples=config.threshold_examples,
        data_dir=config.data_dir, download=config.download).as_numpy_iterator()])
    try:
        detector = make_detector(network, images, labels, k=config.detection_k,
                                 score_type=config.detection_score, detector=config.detector,
                                 covariance=covariance)
        threshold = calibrate_detector(network, detector, clean)
        description = {
            **detector.describe(), "checkpoint": checkpoint,
            "reference": {"function": "export.reference_examples", "dataset": dataset,
                          "split": info.train_split, "examples": int(len(labels)),
                          "per_class": np.bincount(labels).tolist()},
            "threshold": threshold, "flag_when": "detection_score > threshold",
            "threshold_false_positive_rate": detection.FALSE_POSITIVE_RATE,
            "threshold_images": {"split": info.test_split, "examples": int(len(clean))}}
        detector.description = tf.Variable(json.dumps(description, sort_keys=True),
                                           trainable=False, name="description")
        path = export_saved_model(network, config.resolved_export_dir, detector=detector,
                                  version=config.version, warmup=config.warmup)
    except ValueError as error:  # e.g. detection_k larger than the reference allows
        raise UserError(str(error)) from None
    # The same record beside the model for servers that do not load it in Python; the saved
    # `detector.description` and `detector.threshold` variables are the atomic copy.
    os.makedirs(os.path.join(path, os.path.dirname(DETECTOR_FILE)), exist_ok=True)
    run_files.write_json_atomic(os.path.join(path, DETECTOR_FILE), description)
    return path, checkpoint
