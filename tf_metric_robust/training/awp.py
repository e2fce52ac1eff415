"""Adversarial weight perturbation (AWP; Wu, Xia, Wang, NeurIPS 2020, arXiv 2004.05884).

Before each descent step AWP moves the weights to a nearby point of higher training loss and takes
the gradient there. The reference (csdongxian/AWP, `AT_AWP/utils_awp.py`, the same in
`trades_AWP/utils_awp.py`) copies the model into a proxy, takes one plain-SGD step on the proxy
that *raises* the mode's loss (utils_awp.py:38-45, the proxy in train mode), keeps for every
weight tensor of rank > 1 (conv and dense kernels; biases and batch norm are skipped,
utils_awp.py:13-15) the difference rescaled to the weight's norm, `||w|| / (||d|| + 1e-20) * d`
(utils_awp.py:16-17), adds gamma times it to the model (perturb), steps the optimizer, and
subtracts it again (restore; train_cifar10.py:340-363, train_trades_cifar.py:179-206).

Here the proxy step is computed in place: the proxy's plain SGD step is d = lr * grad(loss), so
the rescaled difference is ||w|| * g / ||g|| whatever lr is (up to the 1e-20 guard). The gradient
is all-reduced over replicas first, so under a `tf.distribute` strategy every replica adds the
same perturbation. The proxy pass runs in training mode but its side effects (batch-norm moving
statistics, the TLA memory bank) are undone: the reference's proxy is a separate model "which
does not affect the statistics of BN" (train_trades_cifar.py:277). The optimizer's update is
computed at w + v and applied to w after an exact restore from a copy; that equals the
reference's perturb -> step -> restore because our weight decay is a loss term (computed at
w + v, as PyTorch's SGD decays the perturbed weights) and the optimizer state does not depend on
the weights' values.
"""

import contextlib

import tensorflow as tf

EPS = 1e-20  # utils_awp.py:5


def perturbed_variables(network):
    """The weights AWP perturbs: trainable tensors of rank > 1 (kernels; utils_awp.py:13-15)."""
    return [v for v in network.trainable_variables if len(v.shape) > 1]


def relative_perturbation(weights, gradients, gamma):
    """Per tensor gamma * ||w|| / (||g|| + 1e-20) * g: norm gamma * ||w||, direction g.

    utils_awp.py:16-17 (diff_in_weights) times gamma (perturb, line 52). A tensor whose gradient
    is None or not finite (float16 overflow) gets no perturbation.
    """
    perturbations = []
    for weight, gradient in zip(weights, gradients):
        weight = tf.convert_to_tensor(weight)
        if gradient is None:
            perturbations.append(tf.zeros_like(weight))
            continue
        gradient = tf.cast(gradient, weight.dtype)
        norm = tf.norm(gradient)
        scale = gamma * tf.norm(weight) / (norm + EPS)
        perturbations.append(tf.where(tf.math.is_finite(norm), scale * gradient, 0.0))
    return perturbations


@contextlib.contextmanager
def state_kept(variables):
    """Restores `variables` to their values at entry when the block ends (each replica its own
    copy): the proxy pass leaves batch-norm statistics and memory banks as it found them."""
    saved = [tf.identity(v) for v in variables]
    yield
    for variable, value in zip(variables, saved):
        variable.assign(value)


@contextlib.contextmanager
def perturbed(variables, perturbations):
    """Adds `perturbations` to `variables` for the block, then restores the exact values at
    entry (from a copy, not by subtracting: w + v - v is not always w in floating point)."""
    saved = [tf.identity(v) for v in variables]
    for variable, perturbation in zip(variables, perturbations):
        variable.assign_add(perturbation)
    yield
    for variable, value in zip(variables, saved):
        variable.assign(value)


class WeightPerturbation:
    """AWP's ascent step: the perturbation of `variables` from one proxy step on a loss.

    Args:
      gamma: relative size of the perturbation (reference: 5e-3 for TRADES-AWP on CIFAR-10,
        train_trades_cifar.py:60; 1e-2 default of AT-AWP, train_cifar10.py:162); > 0.
      warmup_steps: training steps before AWP starts (the reference counts epochs:
        `epoch >= awp_warmup`, train_trades_cifar.py:62, 179; AT_AWP: 0).
    """

    def __init__(self, gamma, warmup_steps=0):
        if not gamma > 0:
            raise ValueError(f"AWP gamma must be > 0 (0 turns AWP off: pass None), got {gamma}")
        if warmup_steps < 0:
            raise ValueError(f"AWP warmup_steps must be >= 0, got {warmup_steps}")
        self.gamma = float(gamma)
        self.warmup_steps = int(warmup_steps)

    def compute(self, loss_fn, variables, step, keep=()):
        """Perturbations (one per variable) from the gradient of `loss_fn()` at the current
        weights; zeros before the warm-up ends.

        Args:
          loss_fn: () -> scalar loss of this replica, already divided by the global batch
            (tf.nn.compute_average_loss), without weight decay (the proxy's SGD has none).
          variables: the perturbed weights (`perturbed_variables`).
          step: int tensor, the optimizer's step count (AWP runs when step >= warmup_steps).
          keep: variables the proxy pass may change that must keep their values (BN statistics,
            memory banks).
        """

        def gradients():
            with state_kept(list(keep)):
                with tf.GradientTape() as tape:
                    loss = tf.cast(loss_fn(), tf.float32)
                grads = tape.gradient(loss, variables)
            return [
                tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                for v, g in zip(variables, grads)
            ]

        if self.warmup_steps > 0:
            active = tf.cast(step, tf.int64) >= self.warmup_steps
            grads = tf.cond(active, gradients, lambda: [tf.zeros_like(v) for v in variables])
        else:
            grads = gradients()
        # Sum of the replicas' shares = the global-batch gradient, the same on every replica.
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return relative_perturbation(variables, grads, self.gamma)
