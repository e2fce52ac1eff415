"""TF Serving warm-up records (assets.extra/tf_serving_warmup_requests), one per signature."""

import os

import numpy as np
import tensorflow as tf

from tf_metric_robust.export.serving import GRADIENT_SIGNATURE

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

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
        _field(
            2, _field(1, name.encode()) + _field(2, tf.make_tensor_proto(value).SerializeToString())
        )
        for name, value in sorted(inputs.items())
    )
    return _field(6, _field(1, request))


def write_warmup_requests(path, image_shape, batch_size=1):
    """Writes TF Serving's assets.extra/tf_serving_warmup_requests: one request per signature of
    SIGNATURES (a batch of black images), so the first client request does not pay for graph warm-up."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shape = (batch_size, *image_shape)
    requests = {
        "serving_default": np.zeros(shape, np.float32),
        "serving_uint8": np.zeros(shape, np.uint8),
        GRADIENT_SIGNATURE: np.zeros(shape, np.float32),
    }
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, images in requests.items():
            writer.write(predict_log_record(signature_name, {"images": images}))
