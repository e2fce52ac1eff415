"""The serving graph: checked inputs, the contract's outputs and the detection score."""

import tensorflow as tf

GRADIENT_SIGNATURE = "logits_and_embedding"
SIGNATURES = ("serving_default", "serving_uint8", GRADIENT_SIGNATURE)


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
        # images [None, H, W, C], so saved_model_cli and TF Serving's metadata show the shape. A
        # restored signature still runs the checks below on any input; only a wrong rank, whose
        # check the graph optimiser may drop given this shape, gets TF's own shape error instead.
        self.serve = tf.function(self._serve_float, input_signature=[self.images_spec(tf.float32)])
        self.serve_uint8 = tf.function(
            self._serve_uint8, input_signature=[self.images_spec(tf.uint8)]
        )
        self.logits_and_embedding = tf.function(
            self._logits_and_embedding, input_signature=[self.images_spec(tf.float32)]
        )
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

    def images_spec(self, dtype):
        """The signatures' input: a batch of images [None, H, W, C] of `dtype`."""
        return tf.TensorSpec([None, *self.image_shape], dtype, name="images")

    def signatures(self):
        return {
            "serving_default": self.serve,
            "serving_uint8": self.serve_uint8,
            GRADIENT_SIGNATURE: self.logits_and_embedding,
        }

    def _checked_float(self, images):
        """images float32 [N,H,W,C] in [0,1], else an InvalidArgumentError naming the problem."""
        images = _check_shape(images, self.image_shape, "float32 in [0, 1]")
        images = _require(
            tf.reduce_all(tf.math.is_finite(images)),
            images,
            ["images contain NaN or Inf; expected finite float32 values in [0, 1]"],
        )
        low, high = tf.reduce_min(images), tf.reduce_max(images)
        return _require(
            tf.logical_and(low >= 0.0, high <= 1.0),
            images,
            [
                "images must be float32 in [0, 1] (raw 0-255 pixels go to signature serving_uint8);"
                " got min",
                low,
                "max",
                high,
            ],
        )

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
            return {
                "logits": tf.zeros([0, self.num_classes]),
                "embedding": tf.zeros([0, self.embedding_dim]),
            }

        return tf.cond(tf.shape(images)[0] > 0, run, empty)

    def _outputs(self, images):
        outputs = self._network_outputs(images)
        return serving_outputs(outputs["logits"], outputs["embedding"], self.detector)


def serving_outputs(logits, embedding, detector=None):
    """The serving outputs of float32 logits and embedding: logits, probabilities, classes,
    embedding and, with a detector, detection_score (the SavedModel's and the ONNX graph's)."""
    classes = tf.argmax(logits, axis=-1)
    result = {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits),
        "classes": classes,
        "embedding": embedding,
    }
    if detector is not None:
        result["detection_score"] = detector.score(embedding, classes)
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
    images = _require(
        valid,
        images,
        [f"images must be a batch of shape {expected} (NHWC) of {kind}; got shape", shape],
    )
    return tf.ensure_shape(images, [None, *image_shape])
