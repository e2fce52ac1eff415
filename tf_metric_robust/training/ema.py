"""An exponential moving average (EMA) of a network's weights, evaluated and exported instead of
the raw weights.

Most RobustBench entries since Gowal et al. 2020 ("Uncovering the limits of adversarial training
against norm-bounded adversarial examples", arXiv 2010.03593) evaluate such an average. After
every optimizer step, average <- d * average + (1 - d) * weight with d = min(decay, (1 + n) /
(10 + n)), n the step count: tf.train.ExponentialMovingAverage's `num_updates` rule, so the first
steps do not leave the average near the initial weights.

With `warmup_steps` W > 0 the average follows DM-Improves-AT's `ema_update` (gowal21uncovering/
utils/watrain.py:244-258, called with the 1-based step at :131-133, W = 2.5% of the steps at :51):
d = 0 (the average is the weights) while n < W, then d = min(decay, (1 + n - W) / (10 + n - W)).
W = 0 is the rule above.

Batch-norm moving statistics: 'average' averages them like every other floating-point weight
(run_folder.ema_weights), as timm's ModelEmaV2 averages the whole state_dict; 'copy' gives the
average the network's own statistics, as DM-Improves-AT's `update_bn` (watrain.py:139, 261-272,
at the end of each epoch; here after every step, so they are the network's whenever the average
is evaluated). The averages are variables of a Keras layer, so they are checkpointed with the run
(under run_folder.EMA_CHECKPOINT_KEY, read back by run_folder.restore_averaged) and a resumed run
continues them exactly.
"""

import contextlib
import types

import keras
import tensorflow as tf

from tf_metric_robust.config.run import EMA_BATCH_NORM
from tf_metric_robust.run_folder import EMA_AVERAGE, ema_weights


@keras.saving.register_keras_serializable(package="tf_metric_robust")
class WeightAverage(keras.layers.Layer):
    """Shadow copies of `network`'s floating-point weights, kept as their moving average.

    Args:
      network: the Keras network whose weights are averaged (built).
      decay: the EMA decay d in (0, 1), e.g. 0.999 (Gowal et al. 2020 use 0.995 per step of
        batch 512, as DM-Improves-AT's --tau, train-wa.py:29; larger for smaller batches).
      warmup_steps: optimizer steps W during which the average is the weights (d = 0); 0: none.
      batch_norm: 'average' or 'copy' the network's batch-norm moving statistics.
    """

    def __init__(self, network, decay, warmup_steps=0, batch_norm="average", **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if warmup_steps < 0:
            raise ValueError(f"EMA warmup_steps must be >= 0, got {warmup_steps}")
        if batch_norm not in EMA_BATCH_NORM:
            raise ValueError(f"EMA batch_norm must be one of {EMA_BATCH_NORM}, got {batch_norm!r}")
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.batch_norm = batch_norm
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

    def decay_at(self, step):
        """The decay d of the update after `step` optimizer steps (int, 1 for the first update):
        0 before the warm-up ends, then min(decay, (1 + n) / (10 + n)) with n = step - W."""
        count = tf.cast(step, tf.float32) - float(self.warmup_steps)
        decay = tf.minimum(self.decay, (1.0 + count) / (10.0 + count))
        return tf.where(count >= 0.0, decay, 0.0)

    def update(self, step):
        """One EMA update from the current weights; `step` = optimizer steps done (int)."""
        decay = self.decay_at(step)
        copy_bn = self.batch_norm == "copy"
        for average, weight in zip(self.averages, self._network.weights):
            value = tf.convert_to_tensor(average)
            if copy_bn and not weight.trainable:  # BN moving statistics (update_bn)
                average.assign(tf.cast(weight, value.dtype))
                continue
            # watrain.py:257-258's form: exactly the weights when d = 0 (warm-up).
            kept = tf.cast(decay, value.dtype)
            average.assign(kept * value + (1.0 - kept) * tf.cast(weight, value.dtype))

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
        return {
            **super().get_config(),
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
            "batch_norm": self.batch_norm,
        }


def maybe_swapped_in(average):
    """`average.swapped_in()`, or a no-op context when `average` is None (EMA off)."""
    return average.swapped_in() if average is not None else contextlib.nullcontext()
