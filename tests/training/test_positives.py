"""TLA's positives as the authors build them: the noisy own positive, the other image of the class."""

import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import data
from tf_metric_robust.data.class_index import ClassIndex, other_index
from tf_metric_robust.training.triplet import noisy_positive


def test_noisy_positive_stays_on_the_pixel_grid_inside_the_unit_box():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (64, 8, 8, 3)) / 255.0, tf.float32)
    noisy = noisy_positive(images, 8 / 255, tf.constant([1, 2])).numpy()
    levels = noisy * 255.0
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)  # on the 1/255 grid
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    shift = np.round(levels - images.numpy() * 255.0)
    assert np.abs(shift).max() == 8 and len(np.unique(shift)) == 17  # every level in [-8, 8]
    # Saturated pixels clip instead of leaving [0, 1]; the draw is a function of the seed.
    assert np.any((images.numpy() == 1.0) & (noisy == 1.0))
    np.testing.assert_array_equal(noisy, noisy_positive(images, 8 / 255, [1, 2]))
    assert not np.array_equal(noisy, noisy_positive(images, 8 / 255, [1, 3]))
    assert noisy_positive(images, 0.0, [1, 2]) is images


def test_other_index_is_always_another_example_of_the_class():
    labels = np.array([3, 0, 3, 1, 0, 3, 2, 0, 3, 1])  # class 2 has a single example
    table = ClassIndex(labels)
    index = tf.range(len(labels), dtype=tf.int64)
    draws = np.stack([other_index(index, table, tf.constant([s, 7])).numpy() for s in range(200)])
    for i, label in enumerate(labels):
        chosen = draws[:, i]
        assert np.all(labels[chosen] == label)
        if (labels == label).sum() > 1:
            assert np.all(chosen != i)
            # A uniform draw: every other example of the class turns up.
            assert set(chosen) == set(np.flatnonzero(labels == label)) - {i}
        else:
            assert np.all(chosen == i)


@pytest.mark.slow
def test_train_stream_other_images_are_other_images_of_the_class(mnist5k_data_dir):
    """data.train_dataset(other_positives=True): the same batches, plus per example another
    training image of its class, a pure function of (seed, step) like the rest of the stream."""
    split = list(data.load_split("mnist5k", "train", data_dir=mnist5k_data_dir).batch(4000))
    pixels = np.round(split[0][0].numpy() * 255).astype(np.uint8)
    labels = split[0][1].numpy()
    by_bytes = {image.tobytes(): i for i, image in enumerate(pixels)}
    stream = data.train_dataset(
        "mnist5k", batch_size=100, seed=3, data_dir=mnist5k_data_dir, other_positives=True
    )
    plain = data.train_dataset("mnist5k", batch_size=100, seed=3, data_dir=mnist5k_data_dir)
    for ((images, others), batch_labels), (plain_images, _) in zip(stream.take(2), plain.take(2)):
        np.testing.assert_array_equal(images, plain_images)
        for image, other, label in zip(images.numpy(), others.numpy(), batch_labels.numpy()):
            source = by_bytes[np.round(image * 255).astype(np.uint8).tobytes()]
            partner = by_bytes[np.round(other * 255).astype(np.uint8).tobytes()]
            assert labels[partner] == label and partner != source
    resumed = data.train_dataset(
        "mnist5k",
        batch_size=100,
        seed=3,
        data_dir=mnist5k_data_dir,
        other_positives=True,
        start_step=1,
    )
    np.testing.assert_array_equal(next(iter(resumed))[0][1], list(stream.skip(1).take(1))[0][0][1])


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_positive_noise_out_of_range_is_refused(bad):
    from tf_metric_robust.config import TripletConfig, UserError

    with pytest.raises(UserError, match="positive_noise"):
        TripletConfig(positive_noise=bad)
    with pytest.raises(UserError, match="other_positive"):
        TripletConfig(other_positive="elsewhere")
