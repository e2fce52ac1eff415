"""The input streams of a training run: training batches (with TLA's extra pool and other
positives, and the extra data's share), evaluation and validation batches, and the checks that
they fit the dataset.

The training stream is data.train_dataset, a pure function of (seed, step): a resumed run reads
the batches an uninterrupted one would. Library code: takes a config.TrainConfig, reads no flags.
"""

import tensorflow as tf

from tf_metric_robust import data
from tf_metric_robust.config import UserError
from tf_metric_robust.data.extra_data import ExtraSet, fake_extra_set
from tf_metric_robust.training.triplet import other_positives_from_data


def shard_by_data(dataset):
    """Under MultiWorkerMirroredStrategy, each worker keeps its replicas' slices of every global
    batch (AutoShardPolicy.DATA), so step s trains on the same global batch as on one machine.
    The default (AUTO, i.e. by file) would feed workers different files: different batches, and
    an error when a split has fewer files than workers. Single-process strategies ignore it."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _step_examples(config):
    """(examples per training step, whether they include TLA's extra negative pool)."""
    extra_pool = config.mode == "tla" and config.triplet.negative_pool == "extra"
    return config.batch_size * (1 + config.triplet.pool_multiplier if extra_pool else 1), extra_pool


def train_input(config, start_step, replicas=1):
    """Training batches from step `start_step` on, split over `replicas` replicas."""
    batch, extra_pool = _step_examples(config)
    extra_examples = config.extra_examples() if config.extra_data else 0
    dataset = data.train_dataset(
        config.dataset,
        batch_size=batch,
        seed=config.seed,
        start_step=start_step,
        data_dir=config.data_dir,
        download=config.download,
        augment=config.augment,
        crop_padding=config.crop_padding,
        other_positives=other_positives_from_data(config.mode, config.triplet),
        validation_examples=config.validation_examples,
        extra_set=extra_set(config) if extra_examples else None,
        extra_examples=extra_examples,
        pool_examples=batch - config.batch_size,
        replicas=replicas,
    )
    if extra_pool and replicas > 1:
        dataset = dataset.map(
            lambda images, labels: tf.nest.map_structure(
                lambda rows: replica_major(rows, config.batch_size, replicas), (images, labels)
            )
        )
    return shard_by_data(dataset)


def replica_major(rows, batch_size, replicas):
    """[batch; pool] rows -> [batch_0; pool_0; batch_1; pool_1; ...] for `replicas` replicas.

    With the extra pool a step's input is the batch followed by its pool, and the trainer splits
    its input into the first 1/(1 + pool_multiplier) rows (batch) and the rest (pool). A strategy
    hands replica r the r-th contiguous slice of the global rows, so the rows are reordered to
    give each replica its share of the batch followed by its share of the pool.
    """
    batch, pool = rows[:batch_size], rows[batch_size:]
    tail = tf.shape(rows)[1:]
    batch = tf.reshape(batch, tf.concat([[replicas, -1], tail], 0))
    pool = tf.reshape(pool, tf.concat([[replicas, -1], tail], 0))
    return tf.reshape(tf.concat([batch, pool], axis=1), tf.shape(rows))


def extra_set(config):
    """The ExtraSet of --extra_data; under --dataset=fake:<name> random examples instead of the
    files (data.extra_data.fake_extra_set), which a smoke test of a recipe does not have."""
    spec = data.dataset_info(config.dataset)
    if spec.fake:
        return fake_extra_set(spec.image_shape, spec.num_classes)
    return ExtraSet(config.extra_data)


def check_train_input(config):
    """UserError unless a training step's examples (batch, plus the extra pool) fit the split,
    and --extra_data's files can be streamed, hold the dataset's image shape and its classes."""
    if config.extra_data:
        spec = data.dataset_info(config.dataset)
        extra_set(config).check(spec.image_shape, spec.num_classes)
    batch, extra_pool = _step_examples(config)
    try:
        data.train_dataset(
            config.dataset,
            batch_size=batch,
            seed=config.seed,
            data_dir=config.data_dir,
            download=config.download,
        )
    except (data.DatasetNotFoundError, UserError):
        raise
    except ValueError as error:
        need = (
            f"--batch_size {config.batch_size} x (1 + --pool_multiplier "
            f"{config.triplet.pool_multiplier})"
            if extra_pool
            else f"--batch_size {config.batch_size}"
        )
        raise UserError(
            f"{need} does not fit the training split of {config.dataset} "
            f"({error}); use a smaller batch or pool"
        ) from None


def eval_input(config, num_examples):
    """Evaluation batches; also where a missing or unwritable dataset is reported, before the
    model is built (preparing a dataset writes into --data_dir)."""
    try:
        return shard_by_data(
            data.eval_dataset(
                config.dataset,
                batch_size=config.eval_batch_size,
                num_examples=num_examples,
                data_dir=config.data_dir,
                download=config.download,
            )
        )
    except data.DatasetNotFoundError:
        raise
    except OSError as error:
        raise UserError(
            f"cannot prepare dataset {config.dataset!r} in --data_dir "
            f"{config.data_dir}: {error.strerror or error}: {error.filename}; pass a "
            "writable --data_dir, or one where the dataset is prepared"
        ) from None


def validation_input(config):
    """Batches of the validation split held out of the training set (--validation_examples)."""
    if config.validation_examples < 1:
        raise UserError(
            "--select_best=pgd needs --validation_examples > 0 (a validation split "
            "held out of the training set; never the test set)"
        )
    return shard_by_data(
        data.eval_dataset(
            config.dataset,
            batch_size=config.eval_batch_size,
            data_dir=config.data_dir,
            download=config.download,
            split=data.validation_split(config.dataset, config.validation_examples),
        )
    )
