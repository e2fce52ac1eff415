"""Adversarial training: the trainer (natural, PGD-AT, TLA, TRADES, MART; AWP and a weight EMA)
and a training run in a model_dir.

trainer: AdversarialTrainer, one Keras model whose train_step does every mode; mode_losses: the
mode's loss; triplet: TLA's term; run: a run (resume, evaluations, selection); finish: its end.
"""

from tf_metric_robust.training.run import train
from tf_metric_robust.training.trainer import AdversarialTrainer

__all__ = ["AdversarialTrainer", "train"]
