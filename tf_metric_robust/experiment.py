"""A training run in a model_dir: resume, fit with evaluations, then the end (final_evaluation).

The contract (DESIGN.md): model_dir holds checkpoints/, tensorboard/, saved_model/, flags.txt and
metrics.json; running the same command again resumes from the last checkpoint.

Resuming is exact. A checkpoint holds the network, the optimizer with its step counter, the
TLA memory bank and the weight EMA; the step fixes everything else a step draws: the input position
(data.train_dataset(start_step) equals the stream skipped by that many batches) and the stateless
seeds of the attack's random starts. So a run killed at any point, even by SIGKILL, and re-run
with the same command ends with the weights of an uninterrupted run (bit for bit on the same
hardware; --deterministic also pins TF's op choice). How it stops early: see stopping.py.
Progress goes to absl logging and to the caller's `progress` callable (bin/train prints it).
"""

import functools
import os
import shutil
import sys
import tempfile
import time

import keras
import tensorflow as tf
from absl import logging

from tf_metric_robust import (
    checkpoint_files,
    data,
    distribute,
    final_evaluation,
    overfit_guard,
    run_files,
    selection,
    stopping,
    summaries,
    train_inputs,
    weight_averaging,
)
from tf_metric_robust.config import UserError
from tf_metric_robust.final_evaluation import RunParts
from tf_metric_robust.stopping import Interrupted, TrainingDiverged  # noqa: F401 (re-exported)
from tf_metric_robust.trainer_setup import build_trainer, make_checkpoint, state_variables


def _best_checkpoint(config, output_dir, trainer):
    """selection.BestCheckpoint on the held-out validation split for --select_best, else None."""
    if config.select_best == "none":
        return None
    if config.select_best != "pgd":
        raise UserError(f"select_best must be 'none' or 'pgd', got {config.select_best!r}")
    return selection.BestCheckpoint(
        os.path.join(output_dir, selection.BEST_DIR),
        trainer.network,
        train_inputs.validation_input(config),
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
        run_files.check_writable(config.model_dir)
        check = run_files.check_recipe(config.model_dir, config.recipe(), config.allow_changes)
        start = functools.partial(
            run_files.record_start, config.model_dir, config.recipe(), check, flags_text=flags_text
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
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    distribute.check_batch_size(config.batch_size, strategy)
    eval_data = train_inputs.eval_input(config, config.eval_examples)
    train_inputs.check_train_input(config)
    with strategy.scope():
        trainer = build_trainer(config)
        checkpoint = make_checkpoint(trainer)
    final_evaluation.check_export(config, trainer.network, report)  # before training, not after
    restored = checkpoint_files.restore_run(checkpoint, config, repair=chief, report=report)
    step = first_step = int(trainer.optimizer.iterations.numpy())
    if start is not None:
        start(step)  # every check passed: recipe.json, flags.txt / history.jsonl
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_files.checkpoint_dir(output_dir), max_to_keep=config.keep_checkpoints
    )
    saver = stopping.Saver(
        manager,
        state_variables(trainer),
        step if restored else None,
        checkpoint_files.checkpoint_dir(config.model_dir),
    )
    writer = summaries.Writer(os.path.join(output_dir, "tensorboard"))
    best = _best_checkpoint(config, output_dir, trainer)
    started = time.time()
    with stopping.StopSignals(enabled=config.strategy != "multi_worker") as signals:
        guard = stopping.StepGuard(saver, config.checkpoint_every, signals)
        run = RunParts(config, trainer, writer, guard, output_dir, report)
        callbacks = [
            guard,
            summaries.TrainScalars(writer, every=min(50, config.eval_every), attack=config.attack),
        ]
        callbacks += overfit_guard.callbacks(config, trainer, output_dir)  # fast AT (issue 18)
        # A terminal gets Keras' progress bar; a log file (stdout redirected) one line per segment.
        verbose = 1 if sys.stdout.isatty() else 2
        if step >= config.train_steps:
            report(f"Training already finished at step {step} in {config.model_dir}.")
        while step < config.train_steps:
            guard.check()
            segment = min(config.eval_every - step % config.eval_every, config.train_steps - step)
            report(f"Steps {step + 1}-{step + segment} of {config.train_steps}")
            trainer.fit(
                train_inputs.train_input(config, step, strategy.num_replicas_in_sync),
                steps_per_epoch=segment,
                epochs=1,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,
            )
            step = int(trainer.optimizer.iterations.numpy())
            saver.save(step)  # no-op when the guard just saved this step
            guard.check()
            with weight_averaging.maybe_swapped_in(trainer.ema):
                results, count = final_evaluation.evaluate_on(run, eval_data, config.eval_examples)
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
        return final_evaluation.finish(run, step, trained=step > first_step, seconds=seconds)
