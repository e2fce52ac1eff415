"""Any labelled image folder as a dataset (`--dataset=image_folder:/path`) via tfds.ImageFolder.

Layout (tfds.ImageFolder's): /path/<split>/<class_name>/<image>.{jpg,jpeg,png}, with a 'train'
split and a test split named 'test' (or else 'validation' or 'val'). Label ids are the class folder
names in sorted order (union over splits). Every image is brought to one shape, the shape of the
first training image (first class folder, first file, both sorted): its height and width, and 3
channels if it has colour (RGB or RGBA) else 1. Images of another size are resized to it
(bilinear with antialiasing); grey/colour images are converted by the decoder. Pixels stay uint8.
"""

import dataclasses
import functools
import os

import tensorflow as tf
import tensorflow_datasets as tfds

PREFIX = "image_folder:"
TEST_SPLITS = ("test", "validation", "val")
_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what tfds.ImageFolder reads


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """What a folder holds: root, sorted class names, split sizes, the common image shape."""

    root: str
    class_names: tuple
    split_sizes: dict
    test_split: str
    image_shape: tuple


def root_of(name):
    """'image_folder:/path' -> absolute '/path' (user ~ expanded); ValueError on a bad name."""
    if not name.startswith(PREFIX) or not name[len(PREFIX) :]:
        raise ValueError(f"expected {PREFIX}/path/to/folder, got {name!r}")
    return os.path.abspath(os.path.expanduser(name[len(PREFIX) :]))


def _sorted_entries(folder, want_dirs):
    entries = sorted(tf.io.gfile.listdir(folder))
    entries = [e.rstrip("/") for e in entries]
    if want_dirs:
        return [e for e in entries if tf.io.gfile.isdir(os.path.join(folder, e))]
    return [e for e in entries if e.lower().endswith(_EXTENSIONS)]


def first_image_shape(train_dir):
    """(H, W, C) of the first image of the first class folder of `train_dir`; C is 1 or 3."""
    for class_name in _sorted_entries(train_dir, want_dirs=True):
        files = _sorted_entries(os.path.join(train_dir, class_name), want_dirs=False)
        if files:
            path = os.path.join(train_dir, class_name, files[0])
            image = tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
            height, width, channels = image.shape
            return int(height), int(width), 3 if channels >= 3 else 1
    raise ValueError(f"{train_dir} has no class folder with {'/'.join(_EXTENSIONS)} images")


@functools.lru_cache(maxsize=8)
def _builder(root, channels):
    """tfds.ImageFolder decoding every image to `channels` channels (any height and width)."""
    return tfds.ImageFolder(root, shape=(None, None, channels))


@functools.lru_cache(maxsize=8)
def describe(root):
    """The `FolderLayout` of `root`; one-line ValueError if it is not a train/test image folder."""
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist")
    train_dir = os.path.join(root, "train")
    if not tf.io.gfile.isdir(train_dir):
        raise ValueError(f"image folder {root} needs {root}/train/<class>/<image> (and test/)")
    present = [s for s in TEST_SPLITS if tf.io.gfile.isdir(os.path.join(root, s))]
    if not present:
        raise ValueError(f"image folder {root} needs a test split: {root}/test/<class>/<image>")
    shape = first_image_shape(train_dir)
    builder = _builder(root, shape[2])
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    names = tuple(builder.info.features["label"].names)
    if len(names) < 2:
        raise ValueError(f"image folder {root} needs at least 2 class folders, found {len(names)}")
    return FolderLayout(root, names, sizes, present[0], shape)


def load_split(layout, split):
    """(dataset of (image uint8 [H,W,C], label int64) in tfds' order, number of examples)."""
    if split not in layout.split_sizes:
        raise ValueError(
            f"image folder {layout.root} has no split {split!r} "
            f"(found: {', '.join(sorted(layout.split_sizes))})"
        )
    height, width, channels = layout.image_shape
    builder = _builder(layout.root, channels)
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)

    def fit(image, label):
        image = tf.cond(
            tf.reduce_all(tf.shape(image)[:2] == [height, width]),
            lambda: image,
            lambda: tf.cast(
                tf.round(
                    tf.clip_by_value(
                        tf.image.resize(image, [height, width], antialias=True), 0.0, 255.0
                    )
                ),
                tf.uint8,
            ),
        )
        return tf.ensure_shape(image, layout.image_shape), tf.cast(label, tf.int64)

    return ds.map(fit, num_parallel_calls=tf.data.AUTOTUNE), layout.split_sizes[split]
