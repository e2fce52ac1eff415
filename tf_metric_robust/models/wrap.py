"""Your own Keras classifier as our {'logits', 'embedding'} network.

TLA (Mao et al. 2019) needs the penultimate representation h(x) beside the logits; every tool here
(trainer, attacks, export, detection) reads the layers named 'logits' and 'embedding'.
`with_embedding` adds both names to a functional or Sequential classifier without copying it: the
result shares the user's layers and weights.
"""

import keras


class NamedOutput(keras.layers.Layer):
    """Identity that names an output ('logits' / 'embedding') and casts it to float32.

    float32 logits keep softmax and losses exact under mixed precision, as our builders' float32
    'logits' layer does (models/layers.py:classifier_outputs). `units` is the width, the attribute
    export.py reads from the 'logits' layer of our own builders (a Dense).
    """

    def __init__(self, units, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.units = int(units)

    def call(self, inputs):
        return keras.ops.cast(inputs, "float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _graph_of(model):
    """(inputs, single output tensor) of a functional/Sequential model; ValueError otherwise."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"with_embedding takes a keras.Model, got {type(model).__name__}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except AttributeError:
        inputs = outputs = None
    if not inputs or not outputs:
        if isinstance(model, keras.Sequential):
            raise ValueError(
                f"Sequential model {model.name!r} has no input shape yet: start it "
                "with keras.Input(shape=(H, W, C)) (or call it on a batch once)"
            )
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) is a subclassed "
            "keras.Model: its layer graph is unknown, so no layer can be tapped. "
            "Return {'logits': ..., 'embedding': ...} from its call(), or build it "
            "with the functional API or keras.Sequential"
        )
    if len(outputs) != 1:
        raise ValueError(
            f"model {model.name!r} has {len(outputs)} outputs; with_embedding "
            "needs a classifier with one output, its logits [N, C]"
        )
    return inputs, outputs[0]


def _producer(tensor):
    """The layer that computed a symbolic Keras tensor."""
    return tensor._keras_history[0]  # Keras 3 records (operation, node, index) on every tensor


def _refuse_probabilities(layer):
    """ValueError when the classifier ends in a softmax: our losses and attacks need logits."""
    activation = getattr(layer, "activation", None)
    softmax = (
        isinstance(layer, keras.layers.Softmax)
        or activation in (keras.activations.softmax, "softmax")
        or getattr(activation, "__name__", "") == "softmax"
    )
    if softmax:
        raise ValueError(
            f"the output layer {layer.name!r} applies a softmax; cross-entropy, "
            "TRADES' KL and the attacks need logits: build it with "
            "activation=None (Keras' from_logits=True convention)"
        )


def _embedding_tensor(model, embedding_layer):
    """The embedding tensor: `embedding_layer`'s output, or the input of the last Dense layer."""
    if embedding_layer is not None:
        names = [layer.name for layer in model.layers]
        if embedding_layer not in names:
            raise ValueError(
                f"model {model.name!r} has no layer {embedding_layer!r}; its layers: "
                f"{', '.join(names)}"
            )
        return model.get_layer(embedding_layer).output
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(
            f"model {model.name!r} has no Dense layer, so no default embedding (the "
            "input of the last Dense layer): pass embedding_layer='<layer name>'"
        )
    return dense[-1].input


def with_embedding(model, embedding_layer=None):
    """A keras.Model mapping the same inputs to {'logits': [N, C], 'embedding': [N, D]}.

    Args:
      model: a functional or Sequential Keras classifier with one output, its logits (no final
        softmax), and an input shape.
      embedding_layer: name of the layer whose output is the embedding h(x); default the input of
        the last Dense layer (the penultimate representation TLA regularises: Mao et al. 2019, section 3).

    Returns:
      A functional model sharing `model`'s layers and weights (training one trains the other).
      A model that already returns {'logits', 'embedding'} is returned unchanged.

    Raises:
      ValueError: subclassed or unbuilt models, several outputs, a softmax output, a missing
        layer, or an embedding that is not [N, D].
    """
    output = getattr(model, "output", None) if isinstance(model, keras.Model) else None
    if isinstance(output, dict) and {"logits", "embedding"} <= set(output):
        return model
    inputs, logits = _graph_of(model)
    _refuse_probabilities(_producer(logits))
    embedding = _embedding_tensor(model, embedding_layer)
    for name, tensor in (("logits", logits), ("embedding", embedding)):
        if len(tensor.shape) != 2:
            raise ValueError(
                f"the {name} must be [N, {'C' if name == 'logits' else 'D'}], got "
                f"shape {tuple(tensor.shape)}: flatten or pool first, or name "
                "another layer"
            )
    taken = {layer.name for layer in model.layers}
    for name in ("logits", "embedding"):
        if name in taken:
            raise ValueError(
                f"model {model.name!r} already has a layer named {name!r}; our tools "
                "read the wrapper's layers by that name: rename yours"
            )
    outputs = {
        "logits": NamedOutput(logits.shape[-1], name="logits")(logits),
        "embedding": NamedOutput(embedding.shape[-1], name="embedding")(embedding),
    }
    # One input is passed as a tensor, not a list (else Keras warns on every call).
    inputs = inputs[0] if len(inputs) == 1 else inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_with_embedding")
