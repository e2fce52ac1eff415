"""Tests of Tiny ImageNet (tfds builder on a miniature of the real zip, offline), image folders as
datasets, the authors' 64x64 bottleneck ResNet, configs/tiny_imagenet.flags, --init_checkpoint."""

import os
import time
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_metric_robust import data, models, run_folder
from tf_metric_robust.data import fake, image_folder, tiny_imagenet_builder
from tf_metric_robust.config import AttackConfig, TrainConfig, TripletConfig, UserError
from tf_metric_robust.training import AdversarialTrainer, run

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WNIDS = ["n03444034", "n01443537", "n09193705", "n02124075"]  # deliberately not sorted
TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 2
GRAY_TRAIN_IMAGE = f"train/{WNIDS[0]}/images/{WNIDS[0]}_0.JPEG"


def write_tiny_imagenet(manual_dir, as_zip=True):
    files = fake.tiny_imagenet_files(WNIDS, TRAIN_PER_CLASS, VAL_PER_CLASS)
    fake.write_tiny_imagenet(manual_dir, files, as_zip=as_zip)


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    """A tfds data_dir whose manual dir holds the miniature zip, prepared through `data`."""
    data_dir = str(tmp_path_factory.mktemp("tfds_tiny"))
    write_tiny_imagenet(os.path.join(data_dir, "downloads", "manual"))
    data.load_split("tiny_imagenet", "validation", data_dir=data_dir)  # prepares: no download
    return data_dir


def _val_labels():
    """{validation file name: label id} as fake.tiny_imagenet_files annotates them."""
    return {f"val_{i}.JPEG": (1 - i) % len(WNIDS) for i in range(VAL_PER_CLASS * len(WNIDS))}


# --- the tfds builder ----------------------------------------------------------------------------


def test_registry_entry_augments_and_tests_on_validation():
    spec = data.dataset_info("tiny_imagenet")
    assert (spec.num_classes, spec.image_shape, spec.num_train_examples) == (
        200,
        (64, 64, 3),
        100_000,
    )
    assert (spec.train_split, spec.test_split) == ("train", "validation")
    assert spec.augment and spec.flip and not spec.auto_prepare


def test_builder_splits_labels_and_wnid_order(tiny_data_dir):
    builder = tfds.builder("tiny_imagenet", data_dir=tiny_data_dir, try_gcs=False)
    assert builder.info.features["label"].names == WNIDS  # wnids.txt order, not sorted
    assert builder.info.metadata["class_names"] == [f"name of {w}" for w in WNIDS]
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": TRAIN_PER_CLASS * len(WNIDS),
        "validation": VAL_PER_CLASS * len(WNIDS),
    }
    want = _val_labels()
    validation = list(builder.as_dataset(split="validation").as_numpy_iterator())
    assert {ex["file_name"].decode(): int(ex["label"]) for ex in validation} == want
    for ex in builder.as_dataset(split="train").as_numpy_iterator():
        assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
        assert ex["file_name"].decode().split("_")[0] == WNIDS[ex["label"]]


def test_grayscale_jpeg_is_stored_with_three_channels(tiny_data_dir):
    builder = tfds.builder("tiny_imagenet", data_dir=tiny_data_dir, try_gcs=False)
    raw = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    stored = {ex["file_name"].decode(): ex["image"] for ex in raw.as_numpy_iterator()}
    gray = tf.io.decode_image(stored[os.path.basename(GRAY_TRAIN_IMAGE)], channels=0)
    assert gray.shape == (64, 64, 3)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # grey copied to R, G, B
    colour = tf.io.decode_image(stored[f"{WNIDS[1]}_0.JPEG"], channels=0)
    assert colour.shape == (64, 64, 3)


def test_pipelines_give_unit_range_64px_batches(tiny_data_dir):
    images, labels = next(
        iter(data.eval_dataset("tiny_imagenet", batch_size=5, data_dir=tiny_data_dir))
    )
    assert images.shape == (5, 64, 64, 3) and images.dtype == tf.float32 and labels.shape == (5,)
    batch = data.train_dataset("tiny_imagenet", batch_size=8, seed=0, data_dir=tiny_data_dir)
    images, labels = next(iter(batch))  # augmented by default: pad-4 crop + flip
    assert images.shape == (8, 64, 64, 3) and labels.dtype == tf.int64
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0


def test_augment_batch_on_64px_takes_shifted_windows():
    images = tf.random.uniform([6, 64, 64, 3], seed=1)
    out = data.augment_batch(images, tf.constant([3, 4], tf.int64), flip=True).numpy()
    padded = np.pad(images.numpy(), [[0, 0], [data.PAD] * 2, [data.PAD] * 2, [0, 0]])
    for image, crop in zip(padded, out):
        windows = [
            image[r : r + 64, c : c + 64]
            for r in range(2 * data.PAD + 1)
            for c in range(2 * data.PAD + 1)
        ]
        assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, ::-1]) for w in windows)


def test_extracted_folder_prepares_too(tmp_path):
    write_tiny_imagenet(str(tmp_path / "downloads" / "manual"), as_zip=False)
    builder = tfds.builder("tiny_imagenet", data_dir=str(tmp_path), try_gcs=False)
    assert builder.manual_data_present()
    builder.download_and_prepare()
    assert builder.info.features["label"].names == WNIDS
    assert builder.info.splits["validation"].num_examples == VAL_PER_CLASS * len(WNIDS)


def test_download_fetches_the_official_zip(tmp_path):
    """--download asks tfds' download manager for the official URL (answered by a local zip)."""
    write_tiny_imagenet(str(tmp_path / "fake_download"))
    archive = tmp_path / "fake_download" / "tiny-imagenet-200.zip"
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(data.DatasetNotFoundError):
        data.eval_dataset("tiny_imagenet", batch_size=4, data_dir=data_dir)
    with mock.patch.object(
        tfds.download.DownloadManager, "download", return_value=archive
    ) as download:
        images, _ = next(
            iter(data.eval_dataset("tiny_imagenet", batch_size=4, data_dir=data_dir, download=True))
        )
    download.assert_called_once_with(tiny_imagenet_builder.URL)
    assert images.shape == (4, 64, 64, 3)


def test_missing_tiny_imagenet_fails_fast_naming_manual_dir(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.eval_dataset("tiny_imagenet", batch_size=8, data_dir=str(tmp_path))
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "--download" in message and os.path.join("downloads", "manual") in message
    assert "\n" not in message


def test_parsers():
    assert tiny_imagenet_builder.parse_val_annotations("val_0.JPEG\tn01\t0\t0\t9\t9\n") == {
        "val_0.JPEG": "n01"
    }
    assert tiny_imagenet_builder.parse_wnids("n02\nn01\n\n") == ["n02", "n01"]
    with pytest.raises(ValueError, match="distinct"):
        tiny_imagenet_builder.parse_wnids("n01\nn01\n")
    with pytest.raises(ValueError, match="expected"):
        tiny_imagenet_builder.rgb_image(
            fake.smooth_jpeg(np.random.default_rng(0), shape=(32, 64)), "x.JPEG"
        )


# --- the authors' network and TLA on the miniature -----------------------------------------------


def test_authors_network_on_64px():
    model = models.build("preact_resnet_tiny", 200, (64, 64, 3), weight_decay=2e-4)
    out = model(tf.random.uniform([2, 64, 64, 3]), training=False)
    assert out["logits"].shape == (2, 200) and out["logits"].dtype == tf.float32
    assert out["embedding"].shape == (2, 2048) and models.embedding_dim(model) == 2048
    assert model.get_layer("logits").input is model.get_layer("embedding").output
    assert model.get_layer("stem_relu").output.shape == (None, 64, 64, 64)  # stride 1, no pool
    assert model.get_layer("final_relu").output.shape == (None, 8, 8, 2048)
    units = {layer.name.rsplit("_", 1)[0] for layer in model.layers if layer.name.endswith("_add")}
    assert sorted(units) == sorted(
        f"unit_{s}_{i}" for s, n in zip(range(1, 5), (2, 3, 5, 2)) for i in range(n)
    )
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 17_980_040
    assert len(model.losses) == len([layer for layer in model.layers if hasattr(layer, "kernel")])


def test_network_arguments_are_checked():
    with pytest.raises(ValueError, match="width"):
        models.build("preact_resnet_tiny", 10, (64, 64, 3), width=0)
    with pytest.raises(ValueError, match="blocks"):
        models.build("preact_resnet_tiny", 10, (64, 64, 3), blocks=(2, 3, 5))


def test_tla_trains_on_the_miniature(tiny_data_dir):
    """A few TLA steps with the authors' structure (both positives, extra pool) at a tiny width;
    test_flagfile_parses_to_the_authors_values checks the recipe's margins and weights."""
    batch, pool = 8, 1
    network = models.build(
        "preact_resnet_tiny", 200, (64, 64, 3), width=4, blocks=(1, 1, 1, 1), weight_decay=2e-4
    )
    trainer = AdversarialTrainer(
        network,
        mode="tla",
        attack=AttackConfig(eps=8 / 255, step_size=2 / 255, steps=1),
        triplet=TripletConfig(negative_pool="extra", pool_multiplier=pool, positive="both"),
        label_smoothing=0.1,
    )
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    before = [w.numpy() for w in network.trainable_weights]
    stream = data.train_dataset(
        "tiny_imagenet", batch_size=batch * (1 + pool), seed=0, data_dir=tiny_data_dir
    )
    history = trainer.fit(stream, steps_per_epoch=3, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1]) and history["triplet_loss"][-1] >= 0.0
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, network.trainable_weights))


# --- image folders -------------------------------------------------------------------------------


def _write_image(path, rng, shape, png=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    encoded = tf.io.encode_png(pixels) if png else tf.io.encode_jpeg(pixels)
    with open(path, "wb") as f:
        f.write(encoded.numpy())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """/root/{train,test}/<class>/ with JPEGs of varying size and a grey PNG; first is 40x48."""
    root = str(tmp_path_factory.mktemp("folder"))
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 3)):
        for class_name in ("cat", "ant", "bee"):
            for i in range(count):
                shape = (40, 48, 3) if i % 2 == 0 else (33, 30, 3)
                _write_image(os.path.join(root, split, class_name, f"{i:02d}.jpg"), rng, shape)
    _write_image(os.path.join(root, "train", "bee", "gray.png"), rng, (50, 50, 1), png=True)
    return root


def test_image_folder_spec_from_the_folder(folder):
    spec = data.dataset_info(f"image_folder:{folder}")
    # Shape of the first image (class 'ant', file 00.jpg); classes sorted; 'test' split.
    assert spec.image_shape == (40, 48, 3) and spec.num_classes == 3
    assert (spec.train_split, spec.test_split, spec.num_train_examples) == ("train", "test", 25)
    assert not spec.augment and spec.flip
    assert image_folder.describe(folder).class_names == ("ant", "bee", "cat")


def test_image_folder_pipelines_resize_to_one_shape(folder):
    name = f"image_folder:{folder}"
    examples = list(data.load_split(name, "train").as_numpy_iterator())
    assert len(examples) == 25
    assert {x.shape for x, _ in examples} == {(40, 48, 3)} and {y for _, y in examples} == {0, 1, 2}
    images, labels = next(iter(data.train_dataset(name, batch_size=6, seed=0, augment=True)))
    assert images.shape == (6, 40, 48, 3) and labels.dtype == tf.int64
    test = list(data.eval_dataset(name, batch_size=4).as_numpy_iterator())
    assert sum(len(y) for _, y in test) == 9
    # Label ids follow the sorted class folders.
    by_path = tfds.ImageFolder(folder, shape=(None, None, 3)).as_dataset(split="test")
    for ex in by_path.as_numpy_iterator():
        class_name = ex["image/filename"].decode().split(os.sep)[-2]
        assert ["ant", "bee", "cat"].index(class_name) == ex["label"]


def test_tla_trains_on_an_image_folder(folder):
    spec = data.dataset_info(f"image_folder:{folder}")
    network = models.build("small_cnn", spec.num_classes, spec.image_shape, embedding_dim=16)
    trainer = AdversarialTrainer(
        network, mode="tla", attack=AttackConfig(eps=8 / 255, step_size=4 / 255, steps=1)
    )
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    stream = data.train_dataset(spec.name, batch_size=6, seed=0, augment=True)
    history = trainer.fit(stream, steps_per_epoch=2, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1])


def test_bad_image_folders_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.dataset_info(f"image_folder:{tmp_path / 'missing'}")
    _write_image(str(tmp_path / "train" / "a" / "0.jpg"), np.random.default_rng(0), (8, 8, 3))
    with pytest.raises(ValueError, match="test split"):
        data.dataset_info(f"image_folder:{tmp_path}")
    with pytest.raises(ValueError, match="image_folder:/path"):
        image_folder.root_of("image_folder:")


# --- --init_checkpoint and the flagfile ---------------------------------------------------------


def _config(model_dir, mode, init=None):
    return TrainConfig(
        model_dir=str(model_dir),
        dataset="mnist5k",
        model="small_cnn",
        mode=mode,
        attack=AttackConfig(eps=0.3, step_size=0.1, steps=1),
        init_checkpoint=init,
    )


def _saved_pgd_run(model_dir):
    """A PGD-AT trainer whose network was saved the way training.train saves it."""
    trainer = run.build_trainer(_config(model_dir, "pgd"))
    manager = tf.train.CheckpointManager(
        run.make_checkpoint(trainer), os.path.join(model_dir, "checkpoints"), max_to_keep=1
    )
    return trainer, manager.save(checkpoint_number=2)


@pytest.mark.parametrize("by_path", [False, True], ids=["model_dir", "checkpoint_path"])
def test_init_checkpoint_loads_pgd_weights_into_tla(tmp_path, by_path):
    pgd, path = _saved_pgd_run(str(tmp_path / "pgd"))
    config = _config(tmp_path / "tla", "tla", init=path if by_path else str(tmp_path / "pgd"))
    tla = run.build_trainer(config)
    assert not np.array_equal(tla.network.weights[0].numpy(), pgd.network.weights[0].numpy())
    assert not run_folder.restore_run(run.make_checkpoint(tla), config, repair=False)
    for mine, source in zip(tla.network.weights, pgd.network.weights):
        np.testing.assert_array_equal(mine.numpy(), source.numpy())
    assert int(tla.optimizer.iterations.numpy()) == 0  # weights only: a fresh schedule


def test_init_checkpoint_without_checkpoint_is_a_user_error(tmp_path):
    config = _config(tmp_path / "tla", "tla", init=str(tmp_path))
    checkpoint = run.make_checkpoint(run.build_trainer(config))
    with pytest.raises(UserError, match="no checkpoint"):
        run_folder.restore_run(checkpoint, config, repair=False)
