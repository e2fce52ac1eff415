"""SavedModel export with the `serving_default` signature of the contract (DESIGN.md)."""

import tensorflow as tf


class ServingModule(tf.Module):
    """Wraps a network: float32 images [N,H,W,C] in [0,1] -> logits, probabilities, classes,
    embedding."""

    def __init__(self, network):
        super().__init__()
        self.network = network
        height, width, channels = network.input_shape[1:]
        spec = tf.TensorSpec([None, height, width, channels], tf.float32, name="images")
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _serve(self, images):
        outputs = self.network(images, training=False)
        logits = tf.cast(outputs["logits"], tf.float32)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1),
            "embedding": tf.cast(outputs["embedding"], tf.float32),
        }


def export_saved_model(network, export_dir):
    """Writes a SavedModel whose `serving_default` follows the contract; returns export_dir."""
    module = ServingModule(network)
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir
