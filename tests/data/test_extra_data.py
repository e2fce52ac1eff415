"""Extra (generated) training data: .npz members memory-mapped by offset, each batch's share
drawn per step (resumable), the settings and their checks. Every file is written by the test."""

import dataclasses
import json
import os

import numpy as np
import pytest

import support
from tf_metric_robust import data
from tf_metric_robust.config import TrainConfig, TripletConfig, UserError
from tf_metric_robust.data import extra_data
from tf_metric_robust.data.catalog import dataset_info, split_in_memory
from tf_metric_robust.data.extra_data import ExtraSet


def _write(path, count, seed, shape=(28, 28, 1), labels=None, compressed=False):
    """An .npz in the published sets' format; random pixels no MNIST digit equals."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, count) if labels is None else np.asarray(labels)
    (np.savez_compressed if compressed else np.savez)(path, image=images, label=labels)
    return images, labels


@pytest.fixture
def two_files(tmp_path):
    """Two .npz files (100 + 50 examples) and their arrays concatenated."""
    first = _write(tmp_path / "a.npz", 100, 1)
    second = _write(tmp_path / "b.npz", 50, 2)
    paths = (str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
    return paths, np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]])


def test_members_are_memory_mapped_and_rows_read_across_files(two_files):
    paths, images, labels = two_files
    extra = ExtraSet(paths)
    assert len(extra) == 150 and extra.image_shape == (28, 28, 1)
    assert all(isinstance(member, np.memmap) for member in extra.images + extra.labels)
    index = np.array([149, 3, 100, 99, 3, 0, 120])  # both files, unsorted, a repeat
    got_images, got_labels = extra.rows(index)
    np.testing.assert_array_equal(got_images, images[index])
    np.testing.assert_array_equal(got_labels, labels[index])


def test_an_npz_with_a_large_header_offset_maps_right(tmp_path):
    """A member stored after another (its data far into the zip) maps to its own bytes."""
    labels = np.arange(7) % 10
    images = np.full((7, 4, 4, 3), 9, np.uint8)
    np.savez(tmp_path / "x.npz", label=labels, padding=np.zeros(100_000), image=images)
    np.testing.assert_array_equal(extra_data.open_member(str(tmp_path / "x.npz"), "image"), images)
    np.testing.assert_array_equal(extra_data.open_member(str(tmp_path / "x.npz"), "label"), labels)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _write(p, 5, 0, compressed=True), "is compressed"),
        (lambda p: np.savez(p, image=np.zeros((5, 28, 28, 1), np.uint8)), "has no array 'label'"),
        (lambda p: np.savez(p, image=np.zeros((5, 28, 28, 1)), label=np.zeros(5, int)), "uint8"),
        (
            lambda p: np.savez(p, image=np.zeros((5, 28, 28, 1), np.uint8), label=np.zeros(4, int)),
            "'label' must be 5 integers",
        ),
        (lambda p: p.write_text("not a zip"), "not an .npz file"),
    ],
)
def test_unusable_files_are_refused_in_one_line(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(UserError, match=message) as error:
        ExtraSet([str(path)])
    assert str(error.value).startswith(f"--extra_data {path}") and "\n" not in str(error.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        ExtraSet([str(tmp_path / "nothing.npz")])


def test_check_wants_the_datasets_image_shape_and_classes(tmp_path):
    _write(tmp_path / "ok.npz", 20, 0)
    _write(tmp_path / "rgb.npz", 20, 0, shape=(32, 32, 3))
    _write(tmp_path / "label.npz", 20, 0, labels=[0] * 19 + [10])
    ExtraSet([str(tmp_path / "ok.npz")]).check((28, 28, 1), 10)
    with pytest.raises(
        UserError, match=r"images of \[32, 32, 3\], the dataset's are \[28, 28, 1\]"
    ):
        ExtraSet([str(tmp_path / "rgb.npz")]).check((28, 28, 1), 10)
    with pytest.raises(UserError, match="label 10 is not a class of the dataset"):
        ExtraSet([str(tmp_path / "label.npz")]).check((28, 28, 1), 10)


def _config(**fields):
    return TrainConfig(model_dir="/tmp/unused", **fields)


def test_settings_go_together_and_draw_as_the_reference():
    # DM-Improves-AT: batch 512, --unsup-fraction 0.7 -> int(512 * 0.7) = 358 extra, 154 real.
    config = _config(batch_size=512, extra_data=("x.npz",), extra_fraction=0.7)
    assert config.extra_examples() == 358
    with pytest.raises(UserError, match="extra_fraction 0.7 needs --extra_data"):
        _config(extra_fraction=0.7)
    with pytest.raises(UserError, match="extra_data needs --extra_fraction > 0"):
        _config(extra_data=("x.npz",))
    with pytest.raises(UserError, match="draws no extra example per batch"):
        _config(batch_size=10, extra_data=("x.npz",), extra_fraction=0.05)
    with pytest.raises(UserError, match=r"extra_fraction must be in \[0, 1\)"):
        _config(extra_data=("x.npz",), extra_fraction=1.0)


def test_check_train_input_refuses_another_image_shape(tmp_path, mnist5k_data_dir):
    from tf_metric_robust.training import inputs

    _write(tmp_path / "rgb.npz", 20, 0, shape=(32, 32, 3))
    config = TrainConfig(
        model_dir=str(tmp_path / "run"),
        dataset="mnist5k",
        data_dir=mnist5k_data_dir,
        extra_data=(str(tmp_path / "rgb.npz"),),
        extra_fraction=0.5,
    )
    with pytest.raises(UserError, match="--extra_data .*rgb.npz: images of"):
        inputs.check_train_input(config)


def _stream(data_dir, paths, **kwargs):
    kwargs.setdefault("batch_size", 20)
    return data.train_dataset(
        "mnist5k", seed=3, data_dir=data_dir, extra_set=ExtraSet(paths), **kwargs
    )


def _which_extra(images, extra_images):
    """Index into extra_images of each row of images (float [0,1]), -1 for none."""
    pixels = np.round(images * 255).astype(np.uint8).reshape(len(images), -1)
    table = {row.tobytes(): i for i, row in enumerate(extra_images.reshape(len(extra_images), -1))}
    return np.array([table.get(row.tobytes(), -1) for row in pixels])


def test_each_batch_holds_floor_fraction_extra_rows_and_the_plain_streams_rows(
    two_files, mnist5k_data_dir
):
    paths, extra_images, extra_labels = two_files
    mixed = _stream(mnist5k_data_dir, paths, extra_examples=6, replicas=2)
    plain = data.train_dataset("mnist5k", batch_size=14, seed=3, data_dir=mnist5k_data_dir)
    drawn = []
    for (images, labels), (own_images, own_labels) in zip(mixed.take(4), plain.take(4)):
        images, labels = images.numpy(), labels.numpy()
        found = _which_extra(images, extra_images)
        is_extra = found >= 0
        # Each replica's half: 7 dataset rows (in the plain stream's order), then 3 extra rows.
        np.testing.assert_array_equal(is_extra, np.tile([False] * 7 + [True] * 3, 2))
        np.testing.assert_array_equal(images[~is_extra], own_images.numpy())
        np.testing.assert_array_equal(labels[~is_extra], own_labels.numpy())
        np.testing.assert_array_equal(labels[is_extra], extra_labels[found[is_extra]])
        drawn.append(found[is_extra])
    drawn = np.concatenate(drawn)
    assert (drawn >= 100).any() and (drawn < 100).any()  # both files
    assert len(set(drawn.tolist())) > 12  # not one row again and again


def test_uneven_shares_keep_every_replica_slice_full(two_files, mnist5k_data_dir):
    """D = 13 dataset rows and 7 extra over 4 replicas: slices of 5 with 3, 3, 3, 4 dataset rows."""
    paths, extra_images, _ = two_files
    ((images, _),) = _stream(mnist5k_data_dir, paths, extra_examples=7, replicas=4).take(1)
    is_extra = _which_extra(images.numpy(), extra_images) >= 0
    assert is_extra.reshape(4, 5).sum(axis=1).tolist() == [2, 2, 2, 1]
    assert is_extra.sum() == 7


def test_resuming_at_a_step_replays_the_same_batches(two_files, mnist5k_data_dir):
    paths, _, _ = two_files
    # 13 dataset rows a batch: 4000 // 13 = 307 batches an epoch; step 306 -> 307 crosses it.
    straight = _stream(mnist5k_data_dir, paths, extra_examples=7, replicas=2, augment=True)
    resumed = _stream(
        mnist5k_data_dir, paths, extra_examples=7, replicas=2, augment=True, start_step=306
    )
    for (a, la), (b, lb) in zip(straight.skip(306).take(3), resumed.take(3)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
    other_seed = data.train_dataset(
        "mnist5k",
        batch_size=20,
        seed=4,
        data_dir=mnist5k_data_dir,
        extra_set=ExtraSet(paths),
        extra_examples=7,
        augment=True,
    )
    ((x, _),) = straight.take(1)
    ((y, _),) = other_seed.take(1)
    assert not np.array_equal(x.numpy(), y.numpy())


def test_other_positives_of_extra_rows_are_dataset_images_of_their_class(
    two_files, mnist5k_data_dir
):
    paths, extra_images, _ = two_files
    pixels, index = split_in_memory(dataset_info("mnist5k"), "train", mnist5k_data_dir, False)
    dataset_labels = index.labels.numpy()
    table = {row.tobytes(): i for i, row in enumerate(pixels.reshape(len(pixels), -1))}
    stream = _stream(mnist5k_data_dir, paths, extra_examples=8, other_positives=True)
    (((images, others), labels),) = stream.take(1)
    is_extra = _which_extra(images.numpy(), extra_images) >= 0
    assert is_extra.sum() == 8
    others = np.round(others.numpy()[is_extra] * 255).astype(np.uint8)
    where = [table[row.tobytes()] for row in others.reshape(8, -1)]  # KeyError: not a digit
    np.testing.assert_array_equal(dataset_labels[where], labels.numpy()[is_extra])


def test_pool_rows_stay_last_and_from_the_dataset(two_files, mnist5k_data_dir):
    """TLA's extra pool (here 10 rows) follows the batch and never holds extra examples."""
    paths, extra_images, _ = two_files
    stream = _stream(mnist5k_data_dir, paths, batch_size=30, extra_examples=6, pool_examples=10)
    ((images, _),) = stream.take(1)
    is_extra = _which_extra(images.numpy(), extra_images) >= 0
    np.testing.assert_array_equal(is_extra, [False] * 14 + [True] * 6 + [False] * 10)


def _train(model_dir, data_dir, *flags):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return support.run(
        "bin/train",
        "--flagfile=configs/mnist5k.flags",
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        "--mode=pgd",
        "--steps=1",
        "--train_steps=2",
        "--eval_every=2",
        "--eval_examples=20",
        "--final_eval_examples=20",
        "--eval_steps=1",
        "--batch_size=16",
        "--noexport",
        *flags,
        env=env,
    )


@pytest.mark.slow  # bin/train subprocesses
def test_bin_train_streams_extra_data_and_refuses_a_bad_file_in_one_line(
    tmp_path, mnist5k_data_dir
):
    _write(tmp_path / "digits.npz", 64, 0)
    _write(tmp_path / "rgb.npz", 64, 0, shape=(32, 32, 3))
    bad = _train(
        tmp_path / "bad",
        mnist5k_data_dir,
        f"--extra_data={tmp_path / 'rgb.npz'}",
        "--extra_fraction=0.5",
    )
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr[-2000:]
    assert lines[0].startswith("error: --extra_data") and "images of [32, 32, 3]" in lines[0]
    assert not (tmp_path / "bad" / "recipe.json").exists()

    good = _train(
        tmp_path / "good",
        mnist5k_data_dir,
        f"--extra_data={tmp_path / 'digits.npz'}",
        "--extra_fraction=0.7",
    )
    assert good.returncode == 0, good.stderr[-3000:]
    with open(tmp_path / "good" / "recipe.json") as f:
        settings = json.load(f)["settings"]
    assert settings["extra_fraction"] == 0.7
    assert settings["extra_data"] == [str(tmp_path / "digits.npz")]
    assert (
        f"--extra_data={tmp_path / 'digits.npz'}" in (tmp_path / "good" / "flags.txt").read_text()
    )
    # The same command, one step more: the run resumes (the recorded paths match).
    more = _train(
        tmp_path / "good",
        mnist5k_data_dir,
        f"--extra_data={tmp_path / 'digits.npz'}",
        "--extra_fraction=0.7",
        "--train_steps=3",
        "--allow_changes=train_steps",
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert "Resumed from" in more.stdout + more.stderr
    with open(tmp_path / "good" / "metrics.json") as f:
        assert json.load(f)["step"] == 3


def test_train_input_gives_each_replica_its_batch_share_then_its_pool(
    tmp_path, two_files, mnist5k_data_dir
):
    """TLA's extra pool with extra data on 2 replicas: replica r's rows are its 10 batch rows (7
    from the dataset, 3 extra) then its 10 pool rows (dataset only)."""
    from tf_metric_robust.training import inputs

    paths, extra_images, _ = two_files
    config = TrainConfig(
        model_dir=str(tmp_path / "run"),
        dataset="mnist5k",
        data_dir=mnist5k_data_dir,
        batch_size=20,
        extra_data=paths,
        extra_fraction=0.3,
        triplet=TripletConfig(negative_pool="extra", pool_multiplier=1),
    )
    ((images, _),) = inputs.train_input(config, 0, replicas=2).take(1)
    is_extra = _which_extra(images.numpy(), extra_images) >= 0
    replica = [False] * 7 + [True] * 3 + [False] * 10
    np.testing.assert_array_equal(is_extra, replica * 2)
    # A run resumed at step 5 reads what the uninterrupted run reads at steps 5 and 6.
    straight = inputs.train_input(config, 0, replicas=2).skip(5).take(2)
    for (a, la), (b, lb) in zip(straight, inputs.train_input(config, 5, replicas=2).take(2)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(la.numpy(), lb.numpy())


@pytest.mark.slow  # a training run with evaluations
def test_tla_with_its_pool_and_other_positives_trains_on_extra_data_over_two_replicas(
    tmp_path, two_files, mnist5k_run_config
):
    """The authors' TLA inputs (extra pool, other positives from the data) with extra data, on 2
    replicas: each replica's [batch; pool] rows and other images reach the step."""
    from tf_metric_robust import training
    from tf_metric_robust.config import AttackConfig

    paths, _, _ = two_files
    config = mnist5k_run_config(
        mode="tla",
        batch_size=16,
        train_steps=2,
        examples=16,
        attack=AttackConfig(eps=0.1, step_size=0.05, steps=1),
        eval_every=2,
        eval_batch_size=16,
        export=False,
        strategy="mirrored",
        extra_data=paths,
        extra_fraction=0.25,
        triplet=TripletConfig(
            negative_pool="extra", pool_multiplier=1, positive="both", other_positive="data"
        ),
    )
    metrics = training.train(config)
    assert metrics["step"] == 2
    assert 0.0 <= metrics["eval/clean_accuracy"] <= 1.0


def test_fake_datasets_stand_in_for_the_extra_files(tmp_path):
    """--dataset=fake:<name> runs a recipe with --extra_data without its files (a smoke test):
    random examples of the dataset's shape and classes, nothing read."""
    from tf_metric_robust.training import inputs

    config = TrainConfig(
        model_dir=str(tmp_path / "run"),
        dataset="fake:mnist",
        batch_size=16,
        mode="pgd",
        extra_data=(str(tmp_path / "not_here.npz"),),
        extra_fraction=0.5,
    )
    inputs.check_train_input(config)  # no file to check
    fake = extra_data.fake_extra_set((28, 28, 1), 10)
    assert len(fake) == extra_data.FAKE_EXAMPLES and fake.image_shape == (28, 28, 1)
    ((images, labels),) = inputs.train_input(config, 0).take(1)
    found = _which_extra(images.numpy(), fake.images[0])
    assert (found >= 0).sum() == 8
    np.testing.assert_array_equal(labels.numpy()[found >= 0], fake.labels[0][found[found >= 0]])
    with pytest.raises(UserError, match="no such file"):  # a real dataset needs the files
        inputs.check_train_input(dataclasses.replace(config, dataset="mnist5k"))
