"""Training and evaluation input pipelines over the catalog's datasets.

The training stream is a pure function of (seed, step): every random choice comes from stateless
keys (seeds.key, roots 'data.*') folded with (epoch, index), so a run killed at step s resumes with
exactly the batches it would have seen, and reaching step s costs at most one epoch of skipping.
Extra (generated) examples join each batch from data/extra_data.py, drawn per step the same way.
"""

import tensorflow as tf

from tf_metric_robust import seeds
from tf_metric_robust.config import UserError
from tf_metric_robust.data.class_index import other_index
from tf_metric_robust.data.extra_data import extra_batches
from tf_metric_robust.data.catalog import (
    AUTOTUNE,
    DEFAULT_SHUFFLE_WINDOW,
    PAD,
    dataset_info,
    is_small,
    raw_split,
    split_in_memory,
    to_float,
    training_part,
)


def augment_batch(images, seed, *, flip, pad=PAD):
    """Zero padding by `pad` + random crop back to [H,W] (+ horizontal flip) per image, stateless.

    Vectorised over the batch (one gather, no per-example ops), as in He et al. 2016.

    Args:
      images: float32 [B, H, W, C].
      seed: int [2] key of the stateless random ops (the same key gives the same crops/flips).
      flip: also flip each image left-right with probability 1/2.
      pad: zero pixels added on each side before cropping; each crop shifts by up to `pad`.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(images)
    offsets = tf.random.stateless_uniform(
        [2, shape[0]], seed=crop_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32
    )
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = offsets[0][:, None] + tf.range(shape[1])  # [B, H] rows of each crop
    cols = offsets[1][:, None] + tf.range(shape[2])  # [B, W] columns of each crop
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    images = tf.gather(images, cols, axis=2, batch_dims=1)
    if flip:
        mirror = tf.random.stateless_uniform([shape[0]], seed=flip_seed) < 0.5
        images = tf.where(mirror[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images


def train_dataset(
    name,
    *,
    batch_size,
    seed,
    start_step=0,
    data_dir=None,
    download=False,
    augment=None,
    crop_padding=None,
    shuffle_buffer=None,
    other_positives=False,
    validation_examples=0,
    extra_set=None,
    extra_examples=0,
    pool_examples=0,
    replicas=1,
):
    """Infinite stream of shuffled (augmented) batches; batch i depends only on (seed, i).

    Each epoch is a fresh permutation keyed on (seed, epoch), drops its last partial batch and
    augments batch b with a key from (seed, epoch, b), so `train_dataset(start_step=s)` equals
    `train_dataset().skip(s)` but only skips examples inside epoch s // batches_per_epoch, before
    any decoding to float or augmentation.

    Args:
      name: a registered dataset name (see `dataset_names()`).
      batch_size: examples per batch (global batch under a distribution strategy).
      seed: int; the whole stream is a function of it (and not of tf's global seed).
      start_step: index of the first batch to yield (resume point).
      data_dir: tfds data directory (None: tfds' default).
      download: let tfds download and prepare the dataset if it is missing.
      augment: None for the dataset's default, True/False to force the padded crop (+ flip).
      crop_padding: zero padding per side before the random crop; None: the dataset's own
        (DatasetSpec.pad, 4 for CIFAR and Tiny ImageNet).
      shuffle_buffer: examples per shuffle window (contiguous blocks of the split, each
        permuted); None shuffles the whole split when it is small enough to cache, else 10,000.
      other_positives: also yield, per example, an independent (augmented) image of its class,
        never the example itself when its class has another (TLA's "other" positive; see
        class_index.py). Holds the split's uint8 pixels in host memory.
      validation_examples: leave out the first N examples of the train split (in file order):
        the validation split `validation_split(name, N)` for checkpoint selection.
      extra_set: an extra_data.ExtraSet (e.g. generated images) that `extra_examples` rows of
        each batch come from, drawn per step as extra_data.extra_batches (a function of (seed,
        step) too); the other batch_size - extra_examples rows come from the dataset.
      extra_examples: rows of each batch drawn from `extra_set` (0: none).
      pool_examples: the last rows of each batch are TLA's extra clean pool, from the dataset
        only; the extra rows join the batch before it.
      replicas: the batch's rows (before the pool) are ordered so that each of `replicas`
        contiguous slices holds its share of dataset and extra rows (see `mix_extra`).

    Returns:
      tf.data.Dataset of (images float32 [B,H,W,C] in [0,1], labels int64 [B]); with
      other_positives, of ((images, other_images), labels).
    """
    spec = dataset_info(name)
    if batch_size < 1 or start_step < 0:
        raise ValueError(f"need batch_size >= 1, start_step >= 0; got {batch_size}, {start_step}")
    if not 0 <= extra_examples < batch_size - pool_examples or (extra_examples and not extra_set):
        raise ValueError(
            f"need 0 <= extra_examples < batch_size - pool_examples and an extra_set; got "
            f"{extra_examples}, {batch_size}, {pool_examples}, {extra_set}"
        )
    total_batch, batch_size = batch_size, batch_size - extra_examples  # the dataset's rows
    if shuffle_buffer is not None and shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be positive, got {shuffle_buffer}")
    train_split = training_part(spec, validation_examples)
    raw, num_examples = raw_split(spec, train_split, data_dir, download)
    if other_positives:
        pixels, class_index = split_in_memory(spec, train_split, data_dir, download)
        raw = raw.enumerate().map(lambda index, example: (*example, index))
    if num_examples < batch_size:
        raise UserError(
            f"{name}: a training batch of {batch_size} examples (with TLA's extra "
            f"pool: batch_size x (1 + pool_multiplier)) exceeds the {num_examples} "
            "examples of the train split; use a smaller batch"
        )
    if is_small(spec, num_examples):
        raw = raw.cache()
        window = shuffle_buffer or num_examples
    else:
        window = shuffle_buffer or DEFAULT_SHUFFLE_WINDOW
    window = min(window, num_examples)
    augment = spec.augment if augment is None else augment
    pad = spec.pad if crop_padding is None else crop_padding
    if pad < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    batches_per_epoch = num_examples // batch_size
    first_epoch, first_batch = divmod(start_step, batches_per_epoch)
    # Distinct key streams for shuffling and augmentation, both rooted at `seed`.
    shuffle_root = seeds.key(seed, "data.shuffle")
    augment_root = seeds.key(seed, "data.augment")
    other_root = seeds.key(seed, "data.other_positive")

    def permute_window(shuffle_key, window_index, *parts):
        key = tf.random.experimental.stateless_fold_in(shuffle_key, window_index)
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(parts[1])[0]), seed=key)
        return tuple(tf.gather(part, order) for part in parts)

    def prepare(augment_key, other_key, indices, images, labels, file_index=None):
        images, labels = to_float(images, labels)
        if augment:
            # Keyed on the batch's index within the epoch: independent of where the run started.
            key = tf.random.experimental.stateless_fold_in(augment_key, indices[0] // batch_size)
            images = augment_batch(images, key, flip=spec.flip, pad=pad)
        if file_index is None:
            return images, labels
        # Keyed on (seed, epoch, batch) like the augmentation, from a root of its own.
        key = tf.random.experimental.stateless_fold_in(other_key, indices[0] // batch_size)
        draw_key, augment_other_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        other = other_index(file_index, class_index, draw_key)
        others = tf.numpy_function(lambda rows: pixels[rows], [other], tf.uint8, stateful=False)
        others, _ = to_float(tf.ensure_shape(others, [None, *spec.image_shape]), labels)
        if augment:
            others = augment_batch(others, augment_other_key, flip=spec.flip, pad=pad)
        return (images, others), labels

    def one_epoch(epoch):
        shuffle_key = tf.random.experimental.stateless_fold_in(shuffle_root, epoch)
        augment_key = tf.random.experimental.stateless_fold_in(augment_root, epoch)
        other_key = tf.random.experimental.stateless_fold_in(other_root, epoch)
        skip = tf.cast(epoch == first_epoch, tf.int64) * (first_batch * batch_size)
        ds = raw.batch(window).enumerate()
        ds = ds.map(lambda w, example: permute_window(shuffle_key, w, *example)).unbatch()
        ds = ds.enumerate().skip(skip).batch(batch_size, drop_remainder=True)
        return ds.map(
            lambda indices, example: prepare(augment_key, other_key, indices, *example),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )

    ds = tf.data.Dataset.counter(start=first_epoch).flat_map(one_epoch)
    if extra_examples:
        extra = extra_batches(
            extra_set,
            examples=extra_examples,
            seed=seed,
            start_step=start_step,
            augment=(lambda x, key: augment_batch(x, key, flip=spec.flip, pad=pad))
            if augment
            else None,
            other_positives=(pixels, class_index) if other_positives else None,
        )
        batch_rows = total_batch - pool_examples - extra_examples
        ds = tf.data.Dataset.zip(ds, extra).map(
            lambda own, drawn: mix_extra(own, drawn, batch_rows=batch_rows, replicas=replicas)
        )
    return ds.prefetch(AUTOTUNE)


def mix_extra(own, extra, *, batch_rows, replicas=1):
    """One step's dataset rows and extra rows -> the step's input, rows in replica order.

    DM-Improves-AT puts a batch's dataset and extra examples in one random order
    (core/data/semisup.py:257), so under DataParallel each GPU gets a random mix; here each of
    `replicas` contiguous slices (what a tf.distribute strategy hands each replica) gets the
    same mix, up to one example: slice r holds the dataset rows [floor(r D / R), floor((r+1) D /
    R)) and fills up with extra rows. The batch's examples are the reference's; only their order
    differs, and no loss depends on it.

    Args:
      own: the dataset's part of the step, (images, labels) or ((images, others), labels), its
        first `batch_rows` rows in the batch and any further rows TLA's extra pool.
      extra: the extra part, the same structure.
      batch_rows: D, the dataset rows of the batch (before the pool).
      replicas: R; (batch_rows + extra rows) must be divisible by it.
    """
    extra_rows = tf.nest.flatten(extra)[-1].shape[0]
    per_replica, left = divmod(batch_rows + extra_rows, replicas)
    if left:
        raise ValueError(f"a batch of {batch_rows + extra_rows} does not split over {replicas}")
    order = []
    for r in range(replicas):
        start, stop = r * batch_rows // replicas, (r + 1) * batch_rows // replicas
        taken = stop - start
        order += list(range(start, stop))
        first = batch_rows + r * per_replica - start  # extra rows used by slices before r
        order += list(range(first, first + per_replica - taken))

    def rows(dataset_rows, drawn_rows):
        batch = tf.concat([dataset_rows[:batch_rows], drawn_rows], 0)
        return tf.concat([tf.gather(batch, order), dataset_rows[batch_rows:]], 0)

    return tf.nest.map_structure(rows, own, extra)


def eval_dataset(name, *, batch_size, split=None, num_examples=None, data_dir=None, download=False):
    """Finite, ordered, unaugmented batches; the last partial batch is kept.

    Args:
      name: a registered dataset name.
      batch_size: examples per batch.
      split: tfds split; None means the dataset's test split.
      num_examples: evaluate only the first `num_examples` (None: the whole split).
      data_dir, download: as in `train_dataset`.

    Returns:
      tf.data.Dataset of (images float32 [<=B,H,W,C] in [0,1], labels int64 [<=B]).
    """
    spec = dataset_info(name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples must be positive or None, got {num_examples}")
    raw, total = raw_split(spec, split or spec.test_split, data_dir, download)
    if num_examples is not None:
        raw = raw.take(num_examples)
        total = min(total, num_examples)
    if is_small(spec, total):
        raw = raw.cache()
    ds = raw.map(to_float, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return ds.prefetch(AUTOTUNE)
