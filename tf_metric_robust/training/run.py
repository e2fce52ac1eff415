"""A training run in a model_dir: the trainer of a TrainConfig and the checkpoint of its state,
resume, fit with evaluations and best-checkpoint selection, then the end (finish.py).

model_dir holds recipe.json, flags.txt, checkpoints/ (run_folder.py), tensorboard/, saved_model/
and metrics.json; running the same command again resumes from the last checkpoint.

Resuming is exact. A checkpoint holds the network, the optimizer with its step counter, the
TLA memory bank and the weight EMA; the step fixes everything else a step draws: the input position
(data.train_dataset(start_step) equals the stream skipped by that many batches) and the stateless
seeds of the attack's random starts. So a run killed at any point, even by SIGKILL, and re-run
with the same command ends with the weights of an uninterrupted run (bit for bit on the same
hardware; --deterministic also pins TF's op choice). How it stops early: see stopping.py.
Progress goes to absl logging and to the caller's `progress` callable (bin/train prints it).

--select_best keeps the checkpoint with the best PGD accuracy on examples held out of the
TRAINING split (data.validation_split). The TLA authors selected on the first 500 TEST images
(train_update_fast_triplet.py:776-789 with learning/eval_within_train.py:46-49); we never select
on the test set and report test accuracy of the selected network only.
"""

import functools
import json
import os
import shutil
import sys
import tempfile
import time

import keras
import tensorflow as tf
from absl import logging

from tf_metric_robust import atomic_io, data, distribute, run_folder
from tf_metric_robust.config import UserError
from tf_metric_robust.training import ema, finish, inputs, overfit_guard, stopping, summaries
from tf_metric_robust.training.optimizer import make_optimizer
from tf_metric_robust.training.trainer import AdversarialTrainer

BEST_DIR = "best_checkpoint"  # --select_best's checkpoint and its record, in the run's folder
BEST_RECORD = "best.json"


def build_trainer(config):
    """Network + AdversarialTrainer + optimizer, compiled; call inside strategy.scope()."""
    network = run_folder.build_network(config.recipe(), config.optimizer.weight_decay)
    trainer = AdversarialTrainer.from_config(network, config)
    optimizer = make_optimizer(config.optimizer, config.train_steps)
    trainer.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    # Slots built up front: else the first traced step would create variables.
    optimizer.build(network.trainable_variables)
    return trainer


def make_checkpoint(trainer):
    """tf.train.Checkpoint of everything a resume needs: network, optimizer with its step
    (+ TLA memory bank, + weight EMA)."""
    parts = dict(network=trainer.network, optimizer=trainer.optimizer)
    if trainer.bank is not None:
        parts["bank"] = trainer.bank
    if trainer.ema is not None:
        parts[run_folder.EMA_CHECKPOINT_KEY] = trainer.ema
    return tf.train.Checkpoint(**parts)


def state_variables(trainer):
    """Every variable a checkpoint of the trainer holds (stopping.Saver checks them)."""
    parts = [trainer.network.variables, trainer.optimizer.variables]
    for extra in (trainer.bank, trainer.ema):
        if extra is not None:
            parts.append(extra.variables)
    return [v for part in parts for v in part]


class BestCheckpoint:
    """Keeps, beside the latest checkpoints, the network with the highest validation PGD accuracy.

    Args:
      directory: where the best checkpoint and best.json go (model_dir/best_checkpoint).
      network: the Keras network whose weights are saved.
      validation_data: evaluation batches of the held-out validation split.
    """

    def __init__(self, directory, network, validation_data):
        self.directory = directory
        self.validation_data = validation_data
        self.manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(network=network), directory, max_to_keep=1
        )
        self.record = read_record(directory)

    def consider(self, trainer, step):
        """Evaluates the trainer's eval attack on the validation split; saves if best so far.

        Returns the record {'step', 'validation_pgd_accuracy', 'validation_clean_accuracy',
        'validation_examples'} of the best checkpoint, plus 'last_pgd_accuracy' (this one's).
        """
        results = trainer.evaluate(self.validation_data, return_dict=True, verbose=0)
        accuracy = float(results["pgd_accuracy"])
        best = self.record["validation_pgd_accuracy"] if self.record else -1.0
        if accuracy > best:
            self.manager.save(checkpoint_number=step)
            self.record = {
                "step": int(step),
                "validation_pgd_accuracy": accuracy,
                "validation_clean_accuracy": float(results["clean_accuracy"]),
                "validation_examples": int(trainer.trackers["clean_accuracy"].count.numpy()),
            }
            atomic_io.write_json_atomic(os.path.join(self.directory, BEST_RECORD), self.record)
        return {**self.record, "last_pgd_accuracy": accuracy}

    def restore(self, network):
        """Loads the selected weights into `network`; returns their record, or None if none
        was saved."""
        latest = tf.train.latest_checkpoint(self.directory)
        record = read_record(self.directory)
        if latest is None or record is None:
            return None
        tf.train.Checkpoint(network=network).restore(latest).expect_partial()
        return record


def read_record(directory):
    """best.json of a best-checkpoint folder, or None."""
    path = os.path.join(directory, BEST_RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _best_checkpoint(config, output_dir, trainer):
    """The BestCheckpoint on the held-out validation split for --select_best, else None."""
    if config.select_best == "none":
        return None
    if config.select_best != "pgd":
        raise UserError(f"select_best must be 'none' or 'pgd', got {config.select_best!r}")
    return BestCheckpoint(
        os.path.join(output_dir, BEST_DIR), trainer.network, inputs.validation_input(config)
    )


def _report(progress, message):
    """A progress line: absl logging, and `progress(message)` when the caller gave one."""
    logging.info(message)
    if progress is not None:
        progress(message)


def train(config, flags_text=None, progress=None):
    """Runs (or resumes) training; returns the final metrics dict also written to metrics.json.

    `progress`: optional callable taking each progress line (resumed from, steps, evaluations);
    bin/train passes print. With an EMA (--ema_decay) every evaluation, the selection and the
    export use the averaged weights.

    Raises stopping.Interrupted after SIGTERM/SIGINT (the current step is checkpointed first),
    stopping.TrainingDiverged on a non-finite loss, UserError on settings or files it cannot use.
    With --strategy=multi_worker every worker runs this with the same config: all of them run
    the same steps, evaluations and saves (collectives must match); only the chief writes into
    model_dir, the others into a scratch folder deleted at the end.

    Nothing is written into model_dir before every check passed (dataset, sizes, model,
    checkpoint, recipe): a failed start leaves the folder as it was.
    """
    try:
        data.dataset_info(config.dataset)
    except ValueError as error:
        raise UserError(str(error)) from None
    chief = distribute.is_chief()
    start = None
    if chief:
        run_folder.check_writable(config.model_dir)
        check = run_folder.check_recipe(config.model_dir, config.recipe(), config.allow_changes)
        start = functools.partial(
            run_folder.record_start, config.model_dir, config.recipe(), check, flags_text=flags_text
        )
    output_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="tf_metric_robust-")
    # --mixed_precision sets Keras' process-wide dtype policy; a caller of the Python API keeps
    # building float32 models after this run.
    policy = keras.mixed_precision.global_policy()
    try:
        return _train(config, output_dir, chief, start, functools.partial(_report, progress))
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if not chief:
            shutil.rmtree(output_dir, ignore_errors=True)


def _train(config, output_dir, chief, start, report):
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs anything (it configures the
    # collective runtime), so the strategy comes before any data or model work.
    strategy = distribute.make_strategy(config.strategy, config.tpu)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    distribute.check_batch_size(config.batch_size, strategy)
    eval_data = inputs.eval_input(config, config.eval_examples)
    inputs.check_train_input(config)
    # Seeded after the input: preparing a tfds dataset draws from Python's random, which Keras'
    # default initializer seeds come from, so a run that prepares its data would start from
    # other weights than one that finds it prepared.
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        trainer = build_trainer(config)
        checkpoint = make_checkpoint(trainer)
    finish.check_export(config, trainer.network, report)  # before training, not after
    restored = run_folder.restore_run(checkpoint, config, repair=chief, report=report)
    step = first_step = int(trainer.optimizer.iterations.numpy())
    if start is not None:
        start(step)  # every check passed: recipe.json, flags.txt / history.jsonl
    manager = tf.train.CheckpointManager(
        checkpoint, run_folder.checkpoint_dir(output_dir), max_to_keep=config.keep_checkpoints
    )
    saver = stopping.Saver(
        manager,
        state_variables(trainer),
        step if restored else None,
        run_folder.checkpoint_dir(config.model_dir),
    )
    writer = summaries.Writer(os.path.join(output_dir, "tensorboard"))
    best = _best_checkpoint(config, output_dir, trainer)
    started = time.time()
    with stopping.StopSignals(enabled=config.strategy != "multi_worker") as signals:
        guard = stopping.StepGuard(saver, config.checkpoint_every, signals)
        run = finish.RunParts(config, trainer, writer, guard, output_dir, report)
        callbacks = [
            guard,
            summaries.TrainScalars(writer, every=min(50, config.eval_every), attack=config.attack),
        ]
        callbacks += overfit_guard.callbacks(config, trainer, output_dir)  # fast AT
        # A terminal gets Keras' progress bar; a log file (stdout redirected) one line per segment.
        verbose = 1 if sys.stdout.isatty() else 2
        if step >= config.train_steps:
            report(f"Training already finished at step {step} in {config.model_dir}.")
        while step < config.train_steps:
            guard.check()
            segment = min(config.eval_every - step % config.eval_every, config.train_steps - step)
            report(f"Steps {step + 1}-{step + segment} of {config.train_steps}")
            trainer.fit(
                inputs.train_input(config, step, strategy.num_replicas_in_sync),
                steps_per_epoch=segment,
                epochs=1,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,
            )
            step = int(trainer.optimizer.iterations.numpy())
            saver.save(step)  # no-op when the guard just saved this step
            guard.check()
            with ema.maybe_swapped_in(trainer.ema):
                results, count = finish.evaluate_on(run, eval_data, config.eval_examples)
                results = summaries.name_accuracies(results, config.eval_attack)
                writer.scalars("eval", results, step)
                if best is not None:
                    record = best.consider(trainer, step)
                    writer.scalars(
                        "validation", {"best_pgd_accuracy": record["validation_pgd_accuracy"]}, step
                    )
                    report(
                        f"validation: pgd_accuracy {record['last_pgd_accuracy']:.4f} (best "
                        f"{record['validation_pgd_accuracy']:.4f} at step {record['step']})"
                    )
                summaries.log_adversarial_grid(writer, trainer, eval_data, step)
            report(
                "eval: "
                + ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items()))
                + f" ({count} examples)"
            )
        seconds = time.time() - started
        return finish.finish(run, step, trained=step > first_step, seconds=seconds, best=best)
