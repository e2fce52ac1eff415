"""An exponential moving average (EMA) of a network's weights, evaluated and exported instead of
the raw weights.

Most RobustBench entries since Gowal et al. 2020 ("Uncovering the limits of adversarial training
against norm-bounded adversarial examples", arXiv 2010.03593) evaluate such an average. After
every optimizer step, average <- d * average + (1 - d) * weight with d = min(decay, (1 + n) /
(10 + n)), n the step count: tf.train.ExponentialMovingAverage's `num_updates` rule, so the first
steps do not leave the average near the initial weights. Like timm's ModelEmaV2 (which averages
the whole state_dict) the batch-norm moving statistics are averaged too: every floating-point
weight of the network (run_folder.ema_weights). The averages are variables of a Keras layer, so
they are checkpointed with the run (under run_folder.EMA_CHECKPOINT_KEY, read back by
run_folder.restore_averaged) and a resumed run continues them exactly.
"""

import contextlib
import types

import keras
import tensorflow as tf

from tf_metric_robust.run_folder import EMA_AVERAGE, ema_weights


@keras.saving.register_keras_serializable(package="tf_metric_robust")
class WeightAverage(keras.layers.Layer):
    """Shadow copies of `network`'s floating-point weights, kept as their moving average.

    Args:
      network: the Keras network whose weights are averaged (built).
      decay: the EMA decay d in (0, 1), e.g. 0.999 (Gowal et al. 2020 use 0.995 per step of
        batch 512; larger for smaller batches).
    """

    def __init__(self, network, decay, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        # Lists live in a namespace: Keras would track a list of the network's variables as
        # this layer's own, and tf.train.Checkpoint saves no list of a Keras layer. Each average
        # is an attribute of its own instead (checkpoint key ema/average_<i>, run_folder's layout).
        self._network = types.SimpleNamespace(weights=ema_weights(network), averages=[])
        for i, weight in enumerate(self._network.weights):
            # Each replica keeps its own copy, updated from its own (identical) weights after
            # the step; batch-norm statistics differ per replica as the network's own do.
            average = keras.Variable(
                tf.convert_to_tensor(weight),
                dtype=weight.dtype,
                trainable=False,
                autocast=False,
                name=EMA_AVERAGE.format(i),
            )
            setattr(self, EMA_AVERAGE.format(i), average)
            self._network.averages.append(average)
        self.built = True

    @property
    def averages(self):
        """The averaged values, in the order of the network's floating-point weights."""
        return self._network.averages

    def update(self, step):
        """One EMA update from the current weights; `step` = optimizer steps done (int)."""
        count = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + count) / (10.0 + count))
        for average, weight in zip(self.averages, self._network.weights):
            value = tf.convert_to_tensor(average)
            rate = tf.cast(1.0 - decay, value.dtype)
            average.assign(value - rate * (value - tf.cast(weight, value.dtype)))

    def copy_to(self, network=None):
        """Assigns the averages to `network`'s floating-point weights (default: the averaged
        network; another network must have the same architecture)."""
        weights = self._network.weights if network is None else ema_weights(network)
        for weight, average in zip(weights, self.averages):
            weight.assign(tf.convert_to_tensor(average))

    @contextlib.contextmanager
    def swapped_in(self):
        """The averaged weights in the network for the block (evaluation, export, selection);
        the raw training weights come back exactly at the end."""
        saved = [tf.identity(w) for w in self._network.weights]
        self.copy_to()
        try:
            yield
        finally:
            for weight, value in zip(self._network.weights, saved):
                weight.assign(value)

    def get_config(self):
        return {**super().get_config(), "decay": self.decay}


def maybe_swapped_in(average):
    """`average.swapped_in()`, or a no-op context when `average` is None (EMA off)."""
    return average.swapped_in() if average is not None else contextlib.nullcontext()
