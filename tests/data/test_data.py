"""Tests of tf_metric_robust.data: registry, fast offline failure, deterministic resumable pipelines
(on tfds mock data for cifar10) and the real mnist5k tfds builder."""

import time

import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import data
from tf_metric_robust.data import mnist5k_builder

NUM_MOCK = 40  # mock cifar10 examples per split: 5 batches of 8 per epoch


def _batches(ds, count):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(count)]


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for (x, y), (x_ref, y_ref) in zip(got, want):
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)


# --- registry ---------------------------------------------------------------------------------


def test_registry_has_every_dataset():
    assert data.dataset_names() == sorted(
        [
            "mnist",
            "fashion_mnist",
            "cifar10",
            "cifar100",
            "svhn_cropped",
            "mnist5k",
            "tiny_imagenet",
        ]
    )
    cifar = data.dataset_info("cifar10")
    assert (cifar.num_classes, cifar.image_shape, cifar.num_train_examples) == (
        10,
        (32, 32, 3),
        50_000,
    )
    assert cifar.augment and cifar.flip
    assert data.dataset_info("cifar100").num_classes == 100
    svhn = data.dataset_info("svhn_cropped")
    assert not svhn.augment and not svhn.flip
    mnist5k = data.dataset_info("mnist5k")
    assert mnist5k.image_shape == (28, 28, 1) and mnist5k.num_train_examples == 4000
    assert not mnist5k.augment and mnist5k.auto_prepare


def test_unknown_name_raises_listing_known_names():
    with pytest.raises(ValueError, match="cifar10.*mnist5k"):
        data.dataset_info("imagenet")
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.train_dataset("imagenet", batch_size=8, seed=0)
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.eval_dataset("imagenet", batch_size=8)


def test_missing_dataset_fails_at_once_offline(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.train_dataset("cifar10", batch_size=8, seed=0, data_dir=str(tmp_path))
    assert time.monotonic() - start < 30  # hang guard only: tfds' own retries take ~205 s
    message = str(info.value)
    assert "--download" in message and "--data_dir" in message and str(tmp_path) in message
    assert "\n" not in message
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(data.DatasetNotFoundError):
        data.eval_dataset("svhn_cropped", batch_size=8, data_dir=str(tmp_path))


# --- pipelines on mock cifar10 ------------------------------------------------------------------


def test_train_batches_are_float_images_in_unit_range(mock_tfds):
    with mock_tfds(num_examples=NUM_MOCK):
        for augment in (False, True):
            ds = data.train_dataset("cifar10", batch_size=8, seed=0, augment=augment)
            images, labels = next(iter(ds))
            assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32
            assert labels.shape == (8,) and labels.dtype == tf.int64
            assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0


def test_augmentation_changes_pixels_not_order(mock_tfds):
    with mock_tfds(num_examples=NUM_MOCK):
        plain = _batches(data.train_dataset("cifar10", batch_size=8, seed=0, augment=False), 5)
        default = _batches(data.train_dataset("cifar10", batch_size=8, seed=0), 5)
    # Same seed -> same permutation; cifar10 augments by default.
    for (x, y), (x_aug, y_aug) in zip(plain, default):
        np.testing.assert_array_equal(y, y_aug)
        assert x.shape == x_aug.shape
    assert any(not np.array_equal(x, x_aug) for (x, _), (x_aug, _) in zip(plain, default))


def test_epoch_is_a_permutation_of_the_split(mock_tfds):
    with mock_tfds(num_examples=NUM_MOCK):
        epoch = _batches(data.train_dataset("cifar10", batch_size=8, seed=5, augment=False), 5)
        split = list(data.load_split("cifar10", "train").as_numpy_iterator())
    seen = sorted(x.tobytes() for images, _ in epoch for x in images)
    assert seen == sorted(x.tobytes() for x, _ in split)
    in_file_order = np.concatenate([images for images, _ in epoch])
    assert not np.array_equal(in_file_order, np.stack([x for x, _ in split]))


def test_train_stream_is_deterministic_under_seed(mock_tfds):
    with mock_tfds(num_examples=NUM_MOCK):
        first = _batches(data.train_dataset("cifar10", batch_size=8, seed=7), 7)
        tf.random.set_seed(1234)  # tf's global seed must not matter
        try:
            again = _batches(data.train_dataset("cifar10", batch_size=8, seed=7), 7)
        finally:
            tf.random.set_seed(None)
        other_seed = _batches(data.train_dataset("cifar10", batch_size=8, seed=8), 1)
    _assert_same_batches(again, first)
    assert not np.array_equal(first[0][0], other_seed[0][0])
    # Epochs differ from each other (fresh permutation and augmentation per epoch).
    assert not np.array_equal(first[0][0], first[5][0])


@pytest.mark.parametrize("start_step, shuffle_buffer", [(3, None), (12, None), (7, 16)])
def test_start_step_equals_skip(mock_tfds, shuffle_buffer, start_step):
    with mock_tfds(num_examples=NUM_MOCK):
        kwargs = dict(batch_size=8, seed=3, shuffle_buffer=shuffle_buffer)
        resumed = _batches(data.train_dataset("cifar10", start_step=start_step, **kwargs), 6)
        skipped = _batches(data.train_dataset("cifar10", **kwargs).skip(start_step), 6)
    _assert_same_batches(resumed, skipped)


def test_eval_dataset_is_ordered_and_keeps_last_batch(mock_tfds):
    with mock_tfds(num_examples=NUM_MOCK):
        batches = _batches(data.eval_dataset("cifar10", batch_size=16), 100)
        subset = _batches(data.eval_dataset("cifar10", batch_size=16, num_examples=20), 100)
        split = list(data.load_split("cifar10", "test").as_numpy_iterator())
    assert [len(y) for _, y in batches] == [16, 16, 8]
    assert [len(y) for _, y in subset] == [16, 4]
    np.testing.assert_array_equal(
        np.concatenate([x for x, _ in batches]), np.stack([x for x, _ in split])
    )
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int64


def test_bad_arguments_raise(mock_tfds):
    with mock_tfds(num_examples=NUM_MOCK):
        with pytest.raises(ValueError, match="exceeds"):
            data.train_dataset("cifar10", batch_size=NUM_MOCK + 1, seed=0)
        with pytest.raises(ValueError):
            data.train_dataset("cifar10", batch_size=8, seed=0, start_step=-1)
        with pytest.raises(ValueError):
            data.eval_dataset("cifar10", batch_size=0)


def test_augment_batch_crops_shifted_windows_and_flips():
    images = tf.random.stateless_uniform([16, 32, 32, 3], seed=[0, 1])
    key = tf.constant([4, 2], tf.int64)
    out = data.augment_batch(images, key, flip=False).numpy()
    np.testing.assert_array_equal(out, data.augment_batch(images, key, flip=False).numpy())
    flipped = data.augment_batch(images, key, flip=True).numpy()
    padded = np.pad(images.numpy(), [(0, 0), (4, 4), (4, 4), (0, 0)])
    offsets = set()
    for n in range(16):
        windows = {(i, j): padded[n, i : i + 32, j : j + 32] for i in range(9) for j in range(9)}
        crop = [ij for ij, w in windows.items() if np.array_equal(out[n], w)]
        assert len(crop) == 1
        offsets.add(crop[0])
        # Same key: the same crop, mirrored or not.
        assert np.array_equal(flipped[n], out[n]) or np.array_equal(flipped[n], out[n, :, ::-1])
    assert len(offsets) > 1
    assert any(not np.array_equal(flipped[n], out[n]) for n in range(16))


def _crop_shifts(out, plain, pad):
    """Per image, the (row, col) shift of the window of `plain` padded by `pad` that `out` shows
    (mirrored or not); None where no such window matches."""
    size = plain.shape[1]
    padded = np.pad(plain, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    shifts = []
    for n in range(len(out)):
        found = None
        for i in range(2 * pad + 1):
            for j in range(2 * pad + 1):
                window = padded[n, i : i + size, j : j + size]
                if np.array_equal(out[n], window) or np.array_equal(out[n], window[:, ::-1]):
                    found = (i - pad, j - pad)
        shifts.append(found)
    return shifts


def test_crop_padding_reaches_the_augmentation(mock_tfds, tmp_path):
    """--crop_padding=2 (the TLA authors' 32 -> 36 pad) through training.inputs: every training crop
    is shifted by at most 2 pixels, while the dataset's own pad 4 shifts some by more."""
    from tf_metric_robust import config as cfg
    from tf_metric_robust.training import inputs as train_inputs

    def first_batches(**settings):
        config = cfg.TrainConfig(
            model_dir=str(tmp_path), dataset="cifar10", batch_size=8, mode="pgd", **settings
        )
        stream = train_inputs.train_input(config, start_step=0)
        return np.concatenate([x for x, _ in _batches(stream, 5)])

    with mock_tfds(num_examples=NUM_MOCK):
        plain = first_batches(augment=False)
        pad2 = first_batches(crop_padding=2)
        default = first_batches()
    shifts = _crop_shifts(pad2, plain, 2)
    assert None not in shifts
    assert max(max(abs(i), abs(j)) for i, j in shifts) == 2
    wide = _crop_shifts(default, plain, data.PAD)
    assert None not in wide and max(max(abs(i), abs(j)) for i, j in wide) > 2


# --- the real mnist5k tfds builder --------------------------------------------------------------


def test_mnist5k_splits_are_stratified(mnist5k_data_dir):
    counts = {}
    for split, size in (("train", 4000), ("test", 1000)):
        ds = data.eval_dataset("mnist5k", batch_size=5000, split=split, data_dir=mnist5k_data_dir)
        images, labels = next(iter(ds))
        assert images.shape == (size, 28, 28, 1) and images.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
        counts[split] = np.bincount(labels.numpy(), minlength=10)
    np.testing.assert_array_equal(counts["train"], np.full(10, 400))
    np.testing.assert_array_equal(counts["test"], np.full(10, 100))


def test_mnist5k_test_split_holds_the_csv_rows(mnist5k_data_dir, mnist5k_arrays):
    images, labels = mnist5k_arrays
    _, test_rows = mnist5k_builder.split_indices(labels)
    split = list(data.load_split("mnist5k", "test", data_dir=mnist5k_data_dir).as_numpy_iterator())

    def as_bytes(x):
        return np.round(x * 255).astype(np.uint8).tobytes()

    got = sorted((int(y), as_bytes(x)) for x, y in split)
    want = sorted((int(labels[i]), as_bytes(images[i])) for i in test_rows)
    assert got == want


def test_mnist5k_train_batch_mixes_all_classes(mnist5k_data_dir):
    images, labels = next(
        iter(data.train_dataset("mnist5k", batch_size=128, seed=0, data_dir=mnist5k_data_dir))
    )
    assert images.shape == (128, 28, 28, 1)
    assert sorted(set(labels.numpy().tolist())) == list(range(10))


def test_split_indices_rejects_unbalanced_labels():
    with pytest.raises(ValueError, match="class 9"):
        mnist5k_builder.split_indices(np.repeat(np.arange(10), 500)[:-1])
