"""Your own Keras model: models.with_embedding and the README's example.

The example is read from README.md's "Your own Keras model" section and executed as written,
with only its MODE and STEPS constants replaced, so the README and this test cannot drift.
"""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import models

pytestmark = pytest.mark.slow  # end to end: bin/ subprocesses or full runs (make test-fast skips)

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def readme_example():
    """The first ```python block under '## Your own Keras model' in README.md."""
    with open(README) as f:
        text = f.read()
    section = text.split("## Your own Keras model", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no python block in 'Your own Keras model'"
    return match.group(1)


def _set_constant(code, name, value):
    pattern = rf"^{name} = .*$"
    assert len(re.findall(pattern, code, re.M)) == 1, f"README example lost its {name} line"
    return re.sub(pattern, f"{name} = {value!r}", code, flags=re.M)


@pytest.mark.parametrize("mode", ["tla", "trades"])
def test_readme_example_runs(mode, capsys):
    """The example trains its Sequential with fit for a few steps, evaluates, checkpoints and
    exports; the served outputs are the contract's."""
    code = _set_constant(_set_constant(readme_example(), "MODE", mode), "STEPS", 3)
    scope = {"__name__": "readme_example"}
    exec(compile(code, "README.md:Your own Keras model", "exec"), scope)
    trainer, network = scope["trainer"], scope["network"]
    assert trainer.mode == mode and int(trainer.optimizer.iterations.numpy()) == 3
    # The wrapper shares the Sequential's weights: training the network trained the classifier.
    images = scope["test_images"][:4]
    np.testing.assert_allclose(
        network(images)["logits"], scope["classifier"](images), rtol=1e-5, atol=1e-5
    )
    out = capsys.readouterr().out
    assert "['classes', 'embedding', 'logits', 'probabilities']" in out
    assert os.path.isdir(os.path.join(scope["run_dir"], "checkpoints"))


def _sequential(last_activation=None):
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation=last_activation, name="out"),
        ]
    )


def test_with_embedding_default_and_named_layer():
    classifier = _sequential()
    x = tf.random.uniform((5, 6, 6, 1))
    out = models.with_embedding(classifier)(x)
    assert out["embedding"].shape == (5, 8) and out["logits"].dtype == tf.float32
    np.testing.assert_allclose(out["logits"], classifier(x), rtol=1e-6)
    hidden = keras.Model(classifier.inputs, classifier.get_layer("hidden").output)(x)
    np.testing.assert_allclose(out["embedding"], hidden, rtol=1e-6)
    named = models.with_embedding(classifier, embedding_layer="flat")
    assert named(x)["embedding"].shape == (5, 36)
    assert models.embedding_dim(named) == 36 and named.get_layer("logits").units == 3
    # Functional classifiers too; a network of ours comes back unchanged.
    inputs = keras.Input((4,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(5)(inputs)))
    assert models.with_embedding(functional)(tf.ones((1, 4)))["embedding"].shape == (1, 5)
    ours = models.build("small_cnn", 10, (28, 28, 1))
    assert models.with_embedding(ours) is ours


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: _sequential("softmax"), "softmax"),
        (lambda: keras.Sequential([keras.layers.Dense(3)]), "keras.Input"),
        (lambda: _Subclassed(), "subclassed"),
        (lambda: keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")]), "Dense"),
    ],
)
def test_with_embedding_refuses_what_it_cannot_wrap(build, message):
    model = build()
    if isinstance(model, _Subclassed):
        model(tf.ones((1, 4)))
    with pytest.raises(ValueError, match=message):
        models.with_embedding(model)


def test_with_embedding_names_a_missing_layer():
    with pytest.raises(ValueError, match="no layer 'penultimate'.*flat, hidden, out"):
        models.with_embedding(_sequential(), embedding_layer="penultimate")
    with pytest.raises(ValueError, match=r"embedding must be \[N, D\]"):
        conv = keras.Sequential(
            [
                keras.Input((6, 6, 1)),
                keras.layers.Conv2D(2, 3, name="conv"),
                keras.layers.Flatten(),
                keras.layers.Dense(3),
            ]
        )
        models.with_embedding(conv, embedding_layer="conv")
