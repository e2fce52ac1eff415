"""A run's trainer from its TrainConfig: network, AdversarialTrainer, optimizer, and the
checkpoint of everything a resume needs (network, optimizer with its step, TLA memory bank, EMA).
"""

import keras
import tensorflow as tf

from tf_metric_robust import run_files, weight_averaging
from tf_metric_robust.training import AdversarialTrainer


def make_optimizer(config):
    """SGD/Adam with the piecewise-constant schedule of the recipe (Madry / TLA authors)."""
    learning_rate = config.learning_rate
    if config.lr_boundaries:
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            list(config.lr_boundaries), list(config.lr_values)
        )
    if config.name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=config.momentum)
    return keras.optimizers.Adam(learning_rate)


def build_trainer(config):
    """Network + AdversarialTrainer + optimizer, compiled; call inside strategy.scope()."""
    network = run_files.build_network(config.recipe(), config.optimizer.weight_decay)
    trainer = AdversarialTrainer.from_config(network, config)
    optimizer = make_optimizer(config.optimizer)
    trainer.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    # Slots built up front: else the first traced step would create variables.
    optimizer.build(network.trainable_variables)
    return trainer


def make_checkpoint(trainer):
    """tf.train.Checkpoint of the trainer's state: network, optimizer (+ bank, + EMA)."""
    parts = dict(network=trainer.network, optimizer=trainer.optimizer)
    if trainer.bank is not None:
        parts["bank"] = trainer.bank
    if trainer.ema is not None:
        parts[weight_averaging.CHECKPOINT_KEY] = trainer.ema
    return tf.train.Checkpoint(**parts)


def state_variables(trainer):
    """Every variable a checkpoint of the trainer holds (stopping.Saver checks them)."""
    parts = [trainer.network.variables, trainer.optimizer.variables]
    for extra in (trainer.bank, trainer.ema):
        if extra is not None:
            parts.append(extra.variables)
    return [v for part in parts for v in part]
