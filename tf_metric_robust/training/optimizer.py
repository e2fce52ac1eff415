"""A run's optimizer and its schedules: SGD (momentum, Nesterov, or PyTorch OneCycleLR's cycled
momentum) or Adam, with a piecewise-constant or a one-cycle learning rate.

'piecewise': the recipe's constant rates between boundaries (Madry's and the TLA authors' CIFAR
schedule). 'one_cycle': PyTorch's OneCycleLR with its defaults (two phases, cosine annealing,
div_factor 25, final_div_factor 1e4; torch/optim/lr_scheduler.py, class OneCycleLR), which is
DM-Improves-AT's `--scheduler cosinew` (core/utils/train.py:92-94: pct_start 0.025, stepped once
per epoch, gowal21uncovering/utils/watrain.py:136-137): over the schedule's U units (units of
`update_every` steps; the reference: U = epochs), with W = warmup_fraction * U - 1,

    lr(u) = cos_anneal(lr_max / 25, lr_max, u / W)                  for u <= W
    lr(u) = cos_anneal(lr_max, lr_max / 25 / 1e4, (u - W) / (U - 1 - W))   after,
    cos_anneal(a, b, t) = b + (a - b) / 2 * (1 + cos(pi t)),

u = floor(step / update_every), clamped to U - 1 past the end (PyTorch raises there). With
cycled momentum, OneCycleLR's default cycle_momentum (which the reference leaves on, so its SGD
momentum 0.9 is overridden): momentum cos_anneal(0.95, 0.85, .) while the rate rises and
cos_anneal(0.85, 0.95, .) while it falls.

Keras' SGD keeps the learning rate inside its velocity (v <- mu v - lr g; w <- w + v, Nesterov
w <- w + mu v - lr g), PyTorch's outside it (b <- mu b + g; w <- w - lr b, Nesterov w <- w - lr
(g + mu b)): the two agree while the rate is constant and differ slightly across a change of it.
"""

import math

import keras
import tensorflow as tf

# torch.optim.lr_scheduler.OneCycleLR defaults (div_factor, final_div_factor, base_momentum,
# max_momentum), which DM-Improves-AT keeps (core/utils/train.py:93-94).
DIV_FACTOR = 25.0
FINAL_DIV_FACTOR = 1e4
BASE_MOMENTUM = 0.85
MAX_MOMENTUM = 0.95


def cos_anneal(start, end, fraction):
    """OneCycleLR's `_annealing_cos`: from `start` at fraction 0 to `end` at fraction 1."""
    return end + (start - end) / 2.0 * (1.0 + tf.cos(math.pi * fraction))


def one_cycle(step, *, total_steps, warmup_fraction, start, peak, end, update_every=1):
    """OneCycleLR's two-phase cosine value at optimizer step `step` (see the module docstring).

    Args:
      step: int scalar (tensor or Python), optimizer steps done.
      total_steps: the schedule's length in steps.
      warmup_fraction: OneCycleLR's pct_start.
      start, peak, end: the value at step 0, at the end of the warm-up, at the last unit.
      update_every: steps per schedule unit (1: per step; an epoch's steps: per epoch).

    Returns:
      float32 scalar.
    """
    units = math.ceil(total_steps / update_every)
    warm_end = warmup_fraction * units - 1.0
    unit = tf.minimum(tf.cast(step // update_every, tf.float32), float(units - 1))
    # The denominators are PyTorch's; at most 0 only in schedules of one unit or without warm-up
    # units, where PyTorch divides by zero.
    rising = cos_anneal(start, peak, unit / max(warm_end, 1e-12))
    falling = cos_anneal(peak, end, (unit - warm_end) / max(units - 1.0 - warm_end, 1e-12))
    return tf.where(unit <= warm_end, rising, falling)


@keras.saving.register_keras_serializable(package="tf_metric_robust")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """PyTorch's OneCycleLR learning rate (two phases, cosine) as a Keras schedule.

    Args:
      max_learning_rate: the peak rate (OneCycleLR's max_lr; the reference: --lr 0.2 at batch 512).
      total_steps: the schedule's length in optimizer steps (the run's --train_steps).
      warmup_fraction: share of the units spent rising (pct_start; the reference: 0.025).
      update_every: steps per unit (the reference steps its schedule once per epoch).
    """

    def __init__(self, max_learning_rate, total_steps, warmup_fraction, update_every=1):
        self.max_learning_rate = float(max_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_fraction = float(warmup_fraction)
        self.update_every = int(update_every)

    def __call__(self, step):
        start = self.max_learning_rate / DIV_FACTOR
        return one_cycle(
            step,
            total_steps=self.total_steps,
            warmup_fraction=self.warmup_fraction,
            start=start,
            peak=self.max_learning_rate,
            end=start / FINAL_DIV_FACTOR,
            update_every=self.update_every,
        )

    def get_config(self):
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
            "update_every": self.update_every,
        }


class CycledMomentumSGD(keras.optimizers.SGD):
    """Keras SGD whose momentum follows OneCycleLR's cycle (0.95 -> 0.85 -> 0.95), inversely to
    the learning rate, on the same units; Keras' update rule otherwise (keras SGD.update_step).

    Args:
      learning_rate: a OneCycle schedule (its length, warm-up and units set the momentum's).
      nesterov: Nesterov momentum.
    """

    def __init__(self, learning_rate, nesterov=False, **kwargs):
        if not isinstance(learning_rate, OneCycle):
            raise ValueError("CycledMomentumSGD follows a OneCycle learning-rate schedule")
        # A non-zero momentum makes SGD.build create the velocity slots.
        super().__init__(learning_rate, momentum=MAX_MOMENTUM, nesterov=nesterov, **kwargs)
        self.cycle = learning_rate

    def current_momentum(self):
        """The momentum of the next update (OneCycleLR's, at the optimizer's step)."""
        return one_cycle(
            self.iterations,
            total_steps=self.cycle.total_steps,
            warmup_fraction=self.cycle.warmup_fraction,
            start=MAX_MOMENTUM,
            peak=BASE_MOMENTUM,
            end=MAX_MOMENTUM,
            update_every=self.cycle.update_every,
        )

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        momentum = tf.cast(self.current_momentum(), variable.dtype)
        velocity = self.momentums[self._get_variable_index(variable)]
        self.assign(velocity, velocity * momentum - gradient * learning_rate)
        if self.nesterov:
            self.assign_add(variable, velocity * momentum - gradient * learning_rate)
        else:
            self.assign_add(variable, velocity)

    def get_config(self):
        config = super().get_config()
        del config["momentum"]  # follows the schedule
        return config


def learning_rate(config, train_steps):
    """The learning rate (a float or a Keras schedule) of a config.OptimizerConfig."""
    if config.lr_schedule == "one_cycle":
        return OneCycle(
            config.learning_rate, train_steps, config.lr_warmup_fraction, config.lr_update_every
        )
    if config.lr_boundaries:
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            list(config.lr_boundaries), list(config.lr_values)
        )
    return config.learning_rate


def make_optimizer(config, train_steps):
    """The optimizer of a config.OptimizerConfig for a run of `train_steps` optimizer steps."""
    rate = learning_rate(config, train_steps)
    if config.name == "adam":
        return keras.optimizers.Adam(rate)
    if config.cycle_momentum:
        return CycledMomentumSGD(rate, nesterov=config.nesterov)
    return keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=config.nesterov)
