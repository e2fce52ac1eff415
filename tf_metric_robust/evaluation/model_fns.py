"""ModelFns: one interface (logits; logits and embedding) over Keras networks, callables and
SavedModel signatures, so every attack and detector of an evaluation sees the same model."""

import keras
import tensorflow as tf

from tf_metric_robust.config import UserError


class ModelFns:
    """Logits and (logits, embedding) of any model: a Keras network returning {'logits',
    'embedding'}, a Keras model or callable returning logits or a (logits, embedding) pair, or a
    SavedModel's `serving_default` signature (`from_saved_model`).

    `logits` is what attacks differentiate (inference mode); keep one ModelFns per model so the
    attacks' compiled functions (cached per model_fn owner) are reused across batches.
    """

    def __init__(self, model):
        if isinstance(model, ModelFns):
            model = model._model
        self._model = model
        self._keras = isinstance(model, keras.Layer)
        self.outputs = tf.function(self._outputs, reduce_retracing=True)

    @classmethod
    def from_saved_model(cls, path):
        """Wraps a SavedModel: images [N,H,W,C] in [0,1] -> logits[, embedding].

        Uses the `logits_and_embedding` signature of our exports (differentiable under any
        tape), else `serving_default`. The signature must take one input (ours: 'images') and
        return 'logits' (and optionally 'embedding') or a single output, taken as the logits
        (what `keras.Model.export` writes).
        """
        loaded = tf.saved_model.load(path)
        name = next(
            (n for n in ("logits_and_embedding", "serving_default") if n in loaded.signatures), None
        )
        if name is None:
            raise UserError(
                f"{path}: no serving_default signature (signatures: "
                f"{', '.join(loaded.signatures) or 'none'})"
            )
        signature = loaded.signatures[name]
        inputs = list(signature.structured_input_signature[1])
        outputs = list(signature.structured_outputs)
        if len(inputs) != 1 or ("logits" not in outputs and len(outputs) != 1):
            raise UserError(
                f"{path}: signature {name} must take one image tensor and return "
                f"'logits' (or one output); it takes {inputs} and returns {outputs}"
            )
        (input_name,) = inputs
        logits_name = "logits" if "logits" in outputs else outputs[0]

        def call(images):
            out = signature(**{input_name: images})
            return {"logits": out[logits_name], "embedding": out.get("embedding")}

        fns = cls(call)
        fns._loaded = loaded  # keeps the restored variables alive
        return fns

    def _call(self, x):
        out = self._model(x, training=False) if self._keras else self._model(x)
        if isinstance(out, dict):
            return out["logits"], out.get("embedding")
        if isinstance(out, (tuple, list)) and len(out) == 2:
            return tuple(out)
        return out, None

    def _outputs(self, x):
        logits, embedding = self._call(x)
        return tf.cast(logits, tf.float32), (
            None if embedding is None else tf.cast(embedding, tf.float32)
        )

    def logits(self, x):
        return self._call(x)[0]


__all__ = ["ModelFns"]
