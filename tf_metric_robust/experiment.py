"""A training run in a model_dir: build, resume, fit with evaluation, write results, export.

The contract (DESIGN.md): model_dir holds checkpoints/, tensorboard/, saved_model/, flags.txt and
metrics.json; running the same command again resumes from the last checkpoint.
"""

import dataclasses
import json
import os
import time
from typing import Optional

import keras
import tensorflow as tf

from tf_metric_robust import data, distribute, export, run_files, summaries
from tf_metric_robust.config import AttackConfig, OptimizerConfig, TripletConfig, UserError
from tf_metric_robust.training import AdversarialTrainer, make_optimizer

@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; built from flags by cli.train_config()."""

    model_dir: str
    dataset: str = "mnist5k"
    data_dir: Optional[str] = None
    download: bool = False
    model: str = "small_cnn"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    mode: str = "tla"
    batch_size: int = 50
    train_steps: int = 1000
    optimizer: OptimizerConfig = OptimizerConfig()
    label_smoothing: float = 0.0
    augment: Optional[bool] = None
    attack: AttackConfig = AttackConfig(eps=0.3, step_size=0.01, steps=40)
    eps_warmup_steps: int = 0
    eval_attack: AttackConfig = AttackConfig(eps=0.3, step_size=0.01, steps=100)
    triplet: TripletConfig = TripletConfig()
    eval_every: int = 500
    eval_examples: int = 1000
    final_eval_examples: Optional[int] = None
    eval_batch_size: int = 200
    strategy: str = "auto"
    tpu: Optional[str] = None
    mixed_precision: str = "none"
    jit_compile: bool = False
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    init_checkpoint: Optional[str] = None
    export: bool = True

    def __post_init__(self):
        for name in ("batch_size", "train_steps", "eval_every", "checkpoint_every",
                     "eval_examples", "eval_batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")

    def recipe(self):
        return {key: getattr(self, key) for key in run_files.RECIPE_KEYS}


def build_trainer(config):
    """Network + AdversarialTrainer + optimizer, compiled; call inside strategy.scope()."""
    network = run_files.build_network(config.recipe(), config.optimizer.weight_decay)
    trainer = AdversarialTrainer(network, mode=config.mode, attack=config.attack,
                                 eval_attack=config.eval_attack, triplet=config.triplet,
                                 label_smoothing=config.label_smoothing, seed=config.seed,
                                 eps_warmup_steps=config.eps_warmup_steps)
    optimizer = make_optimizer(config.optimizer)
    trainer.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    optimizer.build(network.trainable_variables)
    return trainer


def make_checkpoint(trainer):
    parts = dict(network=trainer.network, optimizer=trainer.optimizer)
    if trainer.bank is not None:
        parts["bank"] = trainer.bank
    return tf.train.Checkpoint(**parts)


def _train_input(config, info, start_step):
    batch = config.batch_size
    if config.mode == "tla" and config.triplet.negative_pool == "extra":
        batch *= 1 + config.triplet.pool_multiplier
    return data.train_dataset(config.dataset, batch_size=batch, seed=config.seed,
                              start_step=start_step, data_dir=config.data_dir,
                              download=config.download, augment=config.augment)


class _CheckpointEvery(keras.callbacks.Callback):
    """Saves a checkpoint every `every` optimizer steps; stops on a non-finite loss."""

    def __init__(self, manager, every):
        super().__init__()
        self.manager, self.every = manager, every

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        loss = (logs or {}).get("loss")
        if loss is not None and not tf.math.is_finite(float(loss)):
            last = self.manager.latest_checkpoint or "none yet"
            raise FloatingPointError(f"non-finite loss {loss} at step {step}; training stopped. "
                                     f"Last good checkpoint: {last}")
        if step % self.every == 0:
            self.manager.save(checkpoint_number=step)


def train(config, flags_text=None):
    """Runs (or resumes) training; returns the final metrics dict also written to metrics.json."""
    os.makedirs(config.model_dir, exist_ok=True)
    run_files.check_or_write_recipe(config.model_dir, config.recipe())
    if flags_text is not None:
        with open(os.path.join(config.model_dir, "flags.txt"), "w") as f:
            f.write(flags_text)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(config.mixed_precision)

    strategy = distribute.make_strategy(config.strategy, config.tpu)
    distribute.check_batch_size(config.batch_size, strategy)
    info = data.dataset_info(config.dataset)
    with strategy.scope():
        trainer = build_trainer(config)
        checkpoint = make_checkpoint(trainer)
    manager = tf.train.CheckpointManager(checkpoint, run_files.checkpoint_dir(config.model_dir),
                                         max_to_keep=config.keep_checkpoints)
    _restore(checkpoint, manager, config)
    step = int(trainer.optimizer.iterations.numpy())
    writer = summaries.Writer(os.path.join(config.model_dir, "tensorboard"))
    eval_data = data.eval_dataset(config.dataset, batch_size=config.eval_batch_size,
                                  num_examples=config.eval_examples, data_dir=config.data_dir,
                                  download=config.download)
    callbacks = [_CheckpointEvery(manager, config.checkpoint_every),
                 summaries.TrainScalars(writer, every=min(50, config.eval_every))]
    started = time.time()
    if step >= config.train_steps:
        print(f"Training already finished at step {step} in {config.model_dir}.")
    while step < config.train_steps:
        segment = min(config.eval_every - step % config.eval_every, config.train_steps - step)
        print(f"Steps {step + 1}-{step + segment} of {config.train_steps}")
        trainer.fit(_train_input(config, info, step), steps_per_epoch=segment, epochs=1,
                    callbacks=callbacks, verbose=1, shuffle=False)
        step = int(trainer.optimizer.iterations.numpy())
        if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
            manager.save(checkpoint_number=step)
        results = trainer.evaluate(eval_data, return_dict=True, verbose=0)
        writer.scalars("eval", results, step)
        summaries.log_adversarial_grid(writer, trainer, eval_data, step)
        print("eval: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())))
    return _finish(config, trainer, writer, step, time.time() - started)


def _restore(checkpoint, manager, config):
    latest = manager.latest_checkpoint
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as error:
            raise UserError(f"cannot restore checkpoint {latest}: {error}") from None
        print(f"Resumed from {latest}")
    elif config.init_checkpoint:
        source = config.init_checkpoint
        if os.path.isdir(source):
            source = tf.train.latest_checkpoint(os.path.join(source, "checkpoints")) or \
                tf.train.latest_checkpoint(source)
        if not source:
            raise UserError(f"--init_checkpoint {config.init_checkpoint}: no checkpoint found")
        tf.train.Checkpoint(network=checkpoint.network).restore(source).expect_partial()
        print(f"Initialised network weights from {source}")


def _finish(config, trainer, writer, step, seconds):
    """Final evaluation on the test split -> metrics.json, projector data, SavedModel."""
    metrics_path = os.path.join(config.model_dir, "metrics.json")
    final_data = data.eval_dataset(config.dataset, batch_size=config.eval_batch_size,
                                   num_examples=config.final_eval_examples,
                                   data_dir=config.data_dir, download=config.download)
    if os.path.exists(metrics_path) and seconds < 1:
        with open(metrics_path) as f:
            metrics = json.load(f)
    else:
        results = trainer.evaluate(final_data, return_dict=True, verbose=0)
        metrics = {
            "step": step, "dataset": config.dataset, "model": config.model, "mode": config.mode,
            "eval/clean_accuracy": float(results["clean_accuracy"]),
            "eval/pgd_accuracy": float(results["pgd_accuracy"]),
            "eval_attack": dataclasses.asdict(config.eval_attack),
            "num_examples": config.final_eval_examples or "full test split",
            "train_seconds_this_run": round(seconds, 1),
        }
        run_files.write_json_atomic(metrics_path, metrics)
        summaries.log_projector(writer.logdir, trainer.network, final_data)
    saved_model_dir = os.path.join(config.model_dir, "saved_model")
    if config.export and not os.path.exists(saved_model_dir):
        export.export_saved_model(trainer.network, saved_model_dir)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics
