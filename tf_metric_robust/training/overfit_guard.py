"""Catastrophic-overfitting guard for fast (single-step) adversarial training.

FGSM training can suddenly lose all robustness to PGD within a few hundred steps while its
accuracy against FGSM climbs ("catastrophic overfitting", Wong et al., "Fast is better than free",
ICLR 2020, Sec. 5; de Jorge et al., NeurIPS 2022). Wong et al. probe each epoch with PGD-5
(step eps/4) on a fixed batch and stop when PGD accuracy falls by more than 0.2, keeping the
previous weights (locuslab/fast_adversarial CIFAR10/train_fgsm.py:130-140). This guard probes
every `check_every` steps, also runs FGSM on the same batch to tell overfitting (FGSM accuracy
climbs) from plain divergence, warns, and with action 'restore' returns to the weights of the last
good probe and continues with the training attack's step size times STEP_FACTOR.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_metric_robust import attacks, data, seeds

DROP = 0.2  # PGD-accuracy fall that counts as a collapse (train_fgsm.py:137)
# Wong et al. find FGSM training robust up to step ~1.25 eps (Fig. 3; 10/255 at eps 8/255) and
# overfitting at 2 eps; x0.8 takes 1.25 eps back to eps, N-FGSM's step (de Jorge et al.).
STEP_FACTOR = 0.8
PROBE_STEPS = 5  # PGD-5 with step eps/4, 1 start: Wong's probe (train_fgsm.py:70, 133)
PROBE_EXAMPLES = 256
RECORD = "overfit_guard.jsonl"  # one line per probe in the run's folder
ACTIONS = ("warn", "restore")


@dataclasses.dataclass(frozen=True)
class Check:
    """One probe's verdict. `good`: weights worth returning to; `overfit`: collapse detected."""

    step: int
    pgd_accuracy: float
    fgsm_accuracy: float
    best_pgd_accuracy: float
    good: bool
    overfit: bool


class CollapseDetector:
    """Decides from probe accuracies whether catastrophic overfitting happened (no TF).

    Overfitting: PGD accuracy more than `drop` below its best AND FGSM accuracy above its value at
    that best probe. A fall without the FGSM climb is divergence, not overfitting: neither good
    nor flagged (the NaN guard and the learning rate are the remedies there).
    """

    def __init__(self, drop=DROP):
        if not 0 < drop <= 1:
            raise ValueError(f"drop must be in (0, 1], got {drop}")
        self.drop = float(drop)
        self.best_pgd = None
        self.fgsm_at_best = None

    def update(self, step, pgd_accuracy, fgsm_accuracy):
        """Records one probe; returns its Check."""
        pgd_accuracy, fgsm_accuracy = float(pgd_accuracy), float(fgsm_accuracy)
        if self.best_pgd is None or pgd_accuracy >= self.best_pgd:
            self.best_pgd, self.fgsm_at_best = pgd_accuracy, fgsm_accuracy
        collapsed = self.best_pgd - pgd_accuracy > self.drop
        climbing = fgsm_accuracy > self.fgsm_at_best
        return Check(
            step=int(step),
            pgd_accuracy=pgd_accuracy,
            fgsm_accuracy=fgsm_accuracy,
            best_pgd_accuracy=self.best_pgd,
            good=not collapsed,
            overfit=collapsed and climbing,
        )


def probe_accuracies(logits_fn, images, labels, *, eps, norm, seed):
    """(PGD-5 accuracy, FGSM accuracy) of `logits_fn` on one batch, as Python floats."""
    pgd_images = attacks.pgd(
        logits_fn,
        images,
        labels,
        eps=eps,
        step_size=eps / 4,
        steps=PROBE_STEPS,
        norm=norm,
        seed=seed,
    )
    fgsm_images = attacks.fgsm(logits_fn, images, labels, eps=eps, norm=norm)
    return tuple(
        float(tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits_fn(x), -1), labels), tf.float32)))
        for x in (pgd_images, fgsm_images)
    )


class OverfitGuard(keras.callbacks.Callback):
    """Probes the trainer every `check_every` steps; warns, or restores and shrinks the step.

    Args:
      trainer: a training.AdversarialTrainer (reads its network, optimizer, attack, logits_fn).
      images, labels: the fixed probe batch ([0, 1] images, int labels).
      check_every: steps between probes.
      action: 'warn' or 'restore'.
      drop: see CollapseDetector. step_factor: the training step size multiplier per restore.
      record_dir: folder of the RECORD file (None: no record); on a resumed run the recorded
        step size is applied again, so the run continues as it would have.
    """

    def __init__(
        self,
        trainer,
        images,
        labels,
        *,
        check_every,
        action="warn",
        drop=DROP,
        step_factor=STEP_FACTOR,
        record_dir=None,
        seed=0,
    ):
        super().__init__()
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        if not 0 < step_factor < 1:
            raise ValueError(f"step_factor must be in (0, 1), got {step_factor}")
        self.trainer = trainer
        self.images = tf.convert_to_tensor(images, tf.float32)
        self.labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
        self.check_every, self.action, self.step_factor = int(check_every), action, step_factor
        self.detector = CollapseDetector(drop)
        self.record_path = os.path.join(record_dir, RECORD) if record_dir else None
        self.seed = seeds.key(seed, "training.probe")
        self.checks, self.restores = [], 0
        self._snapshot = None
        self._last_step = None
        self._replay_record()

    def _state(self):
        """Network, optimizer (not its step counter: data and seeds follow it), the TLA bank and
        the weight EMA (it averaged the collapsed weights too)."""
        trainer = self.trainer
        variables = list(trainer.network.variables) + [
            v for v in trainer.optimizer.variables if v is not trainer.optimizer.iterations
        ]
        for part in ("bank", "ema"):
            if getattr(trainer, part, None) is not None:
                variables += list(getattr(trainer, part).variables)
        return variables

    def _set_step_size(self, step_size):
        trainer = self.trainer
        trainer.attack = dataclasses.replace(trainer.attack, step_size=float(step_size))
        trainer.make_train_function(force=True)  # the step size is a constant of the traced step

    def _replay_record(self):
        """On resume: the detector's best and the last recorded training step size."""
        if not self.record_path or not os.path.exists(self.record_path):
            return
        with open(self.record_path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        for line in lines:
            self.detector.update(line["step"], line["pgd_accuracy"], line["fgsm_accuracy"])
        if lines and lines[-1]["step_size"] != self.trainer.attack.step_size:
            self._set_step_size(lines[-1]["step_size"])
            logging.info(
                "overfit guard: training step size %g from %s",
                lines[-1]["step_size"],
                self.record_path,
            )

    def check(self, step):
        """Probes now; acts on the verdict; returns the Check."""
        trainer = self.trainer
        pgd, fgsm = probe_accuracies(
            trainer.logits_fn,
            self.images,
            self.labels,
            eps=trainer.attack.eps,
            norm=trainer.attack.norm,
            seed=self.seed,
        )
        verdict = self.detector.update(step, pgd, fgsm)
        self.checks.append(verdict)
        if verdict.good:
            self._snapshot = [np.array(v.numpy()) for v in self._state()]
        if verdict.overfit:
            logging.warning(
                "catastrophic overfitting at step %d: PGD-%d accuracy %.3f (best %.3f) while "
                "FGSM accuracy rose to %.3f on the probe batch",
                step,
                PROBE_STEPS,
                pgd,
                verdict.best_pgd_accuracy,
                fgsm,
            )
            if self.action == "restore" and self._snapshot is not None:
                for variable, value in zip(self._state(), self._snapshot):
                    variable.assign(value)
                self.restores += 1
                self._set_step_size(trainer.attack.step_size * self.step_factor)
                logging.warning(
                    "overfit guard: restored the weights of the last good probe; "
                    "training attack step size now %g",
                    trainer.attack.step_size,
                )
        self._write(verdict)
        return verdict

    def _write(self, verdict):
        if not self.record_path:
            return
        line = {
            **dataclasses.asdict(verdict),
            "step_size": self.trainer.attack.step_size,
            "restores": self.restores,
        }
        with open(self.record_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def on_train_begin(self, logs=None):
        self._last_step = int(self.trainer.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        # Steps, not batch indices: fit() runs in segments, and steps_per_execution may skip.
        step = int(self.trainer.optimizer.iterations.numpy())
        if step // self.check_every > self._last_step // self.check_every:
            self._last_step = step
            self.check(step)


def probe_batch(config):
    """The fixed probe batch: the first PROBE_EXAMPLES of the validation split held out of
    training (--validation_examples), else the run's first training batch, unaugmented (Wong et
    al.'s choice, train_fgsm.py:103-104); never the test split."""
    source = dict(batch_size=PROBE_EXAMPLES, data_dir=config.data_dir, download=config.download)
    if config.validation_examples > 0:
        split = data.validation_split(config.dataset, config.validation_examples)
        batches = data.eval_dataset(config.dataset, split=split, **source)
    else:
        batches = data.train_dataset(config.dataset, seed=config.seed, augment=False, **source)
    images, labels = next(iter(batches))
    return images, labels


def callbacks(config, trainer, output_dir):
    """[OverfitGuard] for a run with --overfit_check_every > 0, else []; run.py's hook."""
    guard = config.overfit
    if guard.check_every == 0:
        return []
    images, labels = probe_batch(config)
    # OverfitConfig's fields (check_every, action, drop) are OverfitGuard's keywords.
    options = dataclasses.asdict(guard)
    return [
        OverfitGuard(trainer, images, labels, record_dir=output_dir, seed=config.seed, **options)
    ]
