"""A training run in a model_dir: build, resume, fit with evaluation, write results, export.

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

import dataclasses
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

from tf_metric_robust import (
    checkpoint_files,
    data,
    distribute,
    export,
    overfit_guard,
    run_files,
    selection,
    stopping,
    summaries,
    train_inputs,
    weight_averaging,
)
from tf_metric_robust.config import UserError
from tf_metric_robust.stopping import Interrupted, TrainingDiverged  # noqa: F401 (re-exported)
from tf_metric_robust.train_inputs import replica_major  # noqa: F401 (re-exported)
from tf_metric_robust.training import AdversarialTrainer, make_optimizer


def build_trainer(config):
    """Network + AdversarialTrainer + optimizer, compiled; call inside strategy.scope()."""
    network = run_files.build_network(config.recipe(), config.optimizer.weight_decay)
    trainer = AdversarialTrainer(
        network,
        mode=config.mode,
        attack=config.attack,
        eval_attack=config.eval_attack,
        triplet=config.triplet,
        label_smoothing=config.label_smoothing,
        seed=config.seed,
        eps_warmup_steps=config.eps_warmup_steps,
        attack_bn_mode=config.attack_bn_mode,
        eval_round_to_grid=config.eval_round_to_grid,
        beta=config.beta,
        base=config.base,
        awp_gamma=config.awp_gamma,
        awp_warmup_steps=config.awp_warmup_steps,
        ema_decay=config.ema_decay,
    )
    optimizer = make_optimizer(config.optimizer)
    trainer.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    optimizer.build(network.trainable_variables)
    return trainer


def make_checkpoint(trainer):
    parts = dict(network=trainer.network, optimizer=trainer.optimizer)
    if trainer.bank is not None:
        parts["bank"] = trainer.bank
    if trainer.ema is not None:
        parts[weight_averaging.CHECKPOINT_KEY] = trainer.ema
    return tf.train.Checkpoint(**parts)


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


def _state_variables(trainer):
    parts = [trainer.network.variables, trainer.optimizer.variables]
    for extra in (trainer.bank, trainer.ema):
        if extra is not None:
            parts.append(extra.variables)
    return [v for part in parts for v in part]


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
    restored = _restore(checkpoint, config, repair=chief, report=report)
    step = first_step = int(trainer.optimizer.iterations.numpy())
    if start is not None:
        start(step)  # every check passed: recipe.json, flags.txt / history.jsonl
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_files.checkpoint_dir(output_dir), max_to_keep=config.keep_checkpoints
    )
    saver = stopping.Saver(
        manager,
        _state_variables(trainer),
        step if restored else None,
        checkpoint_files.checkpoint_dir(config.model_dir),
    )
    writer = summaries.Writer(os.path.join(output_dir, "tensorboard"))
    best = _best_checkpoint(config, output_dir, trainer)
    started = time.time()
    with stopping.StopSignals(enabled=config.strategy != "multi_worker") as signals:
        guard = stopping.StepGuard(saver, config.checkpoint_every, signals)
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
                results, count = _evaluate(trainer, eval_data, guard, config, config.eval_examples)
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
        return _finish(
            config,
            trainer,
            writer,
            guard,
            output_dir,
            step,
            report,
            trained=step > first_step,
            seconds=time.time() - started,
        )


def _evaluate(trainer, dataset, guard, config, num_examples):
    """(Keras evaluate results, number of examples they average), warning on a short count.

    The count is the clean-accuracy tracker's: every accuracy in a report says what it is over.
    """
    results = trainer.evaluate(dataset, return_dict=True, verbose=0, callbacks=[guard])
    count = int(trainer.trackers["clean_accuracy"].count.numpy())
    expected = data.eval_size(
        config.dataset,
        num_examples=num_examples,
        data_dir=config.data_dir,
        download=config.download,
    )
    if count != expected:
        logging.warning(
            f"the evaluation scored {count} of {expected} test examples; its "
            "accuracies average those only"
        )
    return results, count


def _restore(checkpoint, config, repair, report=logging.info):
    """Restores the newest readable checkpoint of the run (True), else --init_checkpoint's
    network weights if given (False)."""
    latest = checkpoint_files.restore_newest_readable(
        checkpoint, checkpoint_files.checkpoint_dir(config.model_dir), repair=repair
    )
    if latest:
        report(f"Resumed from {latest}")
        return True
    if config.init_checkpoint:
        source, network_only = (
            config.init_checkpoint,
            tf.train.Checkpoint(network=checkpoint.network),
        )
        if os.path.isdir(source):
            found = None
            for folder in (checkpoint_files.checkpoint_dir(source), source):
                if checkpoint_files.checkpoint_paths(folder):
                    found = checkpoint_files.restore_newest_readable(network_only, folder)
                    break
            if not found:
                raise UserError(f"--init_checkpoint {source}: no checkpoint found")
            source = found
        else:
            try:
                network_only.restore(source).assert_existing_objects_matched().expect_partial()
            except (tf.errors.OpError, AssertionError, ValueError) as error:
                raise UserError(
                    f"--init_checkpoint {source}: cannot restore the network "
                    f"({type(error).__name__}: {error})"
                ) from None
        report(f"Initialised network weights from {source}")
    return False


def _export_is_stale(model_dir):
    """True without a SavedModel version newer than metrics.json (e.g. killed during export)."""
    latest = export.latest_version(os.path.join(model_dir, "saved_model"))
    metrics_path = os.path.join(model_dir, "metrics.json")
    return latest is None or (
        os.path.exists(metrics_path) and os.path.getmtime(latest) < os.path.getmtime(metrics_path)
    )


def _finish(config, trainer, writer, guard, output_dir, step, report, *, trained, seconds):
    """Final evaluation on the test split -> projector data, metrics.json, SavedModel.

    metrics.json is written after the projector data and before the export: its presence marks
    a finished evaluation. A run that trained exports a new version (export.py never overwrites
    one); a run killed during export exports when re-run.
    """
    metrics_path = os.path.join(config.model_dir, "metrics.json")
    # Decided before any collective, from the (shared) model_dir: every worker takes the same path.
    reuse_metrics = os.path.exists(metrics_path) and not trained
    needs_export = config.export and (trained or _export_is_stale(config.model_dir))
    # --select_best: the final evaluation and the export use the selected weights (the EMA's,
    # if on: the selection evaluated those); else the EMA's, if on.
    selected = (
        selection.restore_best(output_dir, trainer.network)
        if config.select_best != "none"
        else None
    )
    if selected:
        report(
            f"Selected the checkpoint of step {selected['step']} (validation PGD accuracy "
            f"{selected['validation_pgd_accuracy']:.4f})"
        )
    with weight_averaging.maybe_swapped_in(None if selected else trainer.ema):
        return _final_results(
            config,
            trainer,
            writer,
            guard,
            output_dir,
            step,
            selected,
            reuse_metrics,
            needs_export,
            seconds,
        )


def _final_results(
    config, trainer, writer, guard, output_dir, step, selected, reuse_metrics, needs_export, seconds
):
    """metrics.json (evaluated, or read when a finished run is re-run) and the export."""
    metrics_path = os.path.join(config.model_dir, "metrics.json")
    final_data = train_inputs.eval_input(config, config.final_eval_examples)
    if reuse_metrics:
        with open(metrics_path) as f:
            metrics = json.load(f)
    else:
        results, count = _evaluate(trainer, final_data, guard, config, config.final_eval_examples)
        robust = f"eval/{summaries.attack_label(config.eval_attack)}_accuracy"
        attack = dataclasses.asdict(config.eval_attack)
        metrics = {
            "step": step,
            "dataset": config.dataset,
            "model": config.model,
            "mode": config.mode,
            "eval/clean_accuracy": float(results["clean_accuracy"]),
            robust: float(results["pgd_accuracy"]),
            "eval_attack": attack,
            "num_examples": count,
            # What each number is: the attack behind it and how many test examples it averages.
            "accuracies": {
                "eval/clean_accuracy": {
                    "attack": None,
                    "num_examples": count,
                    "split": data.dataset_info(config.dataset).test_split,
                },
                robust: {
                    "attack": {"name": "pgd", **attack},
                    "num_examples": count,
                    "split": data.dataset_info(config.dataset).test_split,
                },
            },
            "train_seconds_this_run": round(seconds, 1),
            "weights": "ema" if config.ema_decay else "trained",  # which weights scored
        }
        if selected:
            metrics["selected_checkpoint"] = selected
        summaries.log_projector(writer.logdir, trainer.network, final_data, step=step)
        guard.check()
        run_files.write_json_atomic(os.path.join(output_dir, "metrics.json"), metrics)
    if needs_export:
        guard.check()
        # The kNN detection reference (clean training examples) goes inside the SavedModel.
        reference_images, reference_labels = export.reference_examples(
            config.dataset, data_dir=config.data_dir, download=config.download
        )
        # Written to a hidden folder and renamed into place (export.py): never half a version.
        export.export_saved_model(
            trainer.network,
            os.path.join(output_dir, "saved_model"),
            reference_images=reference_images,
            reference_labels=reference_labels,
        )
    return metrics
