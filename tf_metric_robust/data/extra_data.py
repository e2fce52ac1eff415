"""Extra (generated) training data streamed from .npz files: the examples a batch draws from it.

The generated-data recipes add, to each batch of the dataset, examples drawn from a large set of
generated images: Rebuffi et al. 2021 (1M DDPM images) and Wang et al. 2023 (1M-50M EDM images,
wzekai99/DM-Improves-AT). Their files are .npz archives with 'image' uint8 [N,H,W,C] and 'label'
int [N] (DM-Improves-AT core/data/semisup.py:70-73, written by edm/combine_data.py:33 with
np.savez, i.e. stored uncompressed); the 20M set is 61 GB.

How the files are read, and why: np.load on an .npz never memory-maps its members (it reads a
member whole), so a 61 GB set would need 61 GB of memory. An uncompressed .npz is a zip whose
members are plain .npy files stored byte for byte; `open_member` finds a member's data by its offset
in the zip (local file header, then the .npy header) and maps it with np.memmap. A batch then reads
only its own rows from disk, in constant memory, from the published files as they are: no
conversion and no second copy of the set. (A one-time conversion to sharded records would write a
second copy of the set, 61 GB, before the first step, for no gain in reading: rows are read by
index either way.) A compressed .npz (np.savez_compressed) cannot be mapped and is refused with
the one-line command that rewrites it uncompressed.

Under several workers (AutoShardPolicy.DATA, training/inputs.py) every worker draws and reads the
whole global batch's extra rows and keeps its replicas' slices, as it does the dataset's rows, so
step s trains on the same batch on any cluster shape.

Which examples a batch draws: as DM-Improves-AT's sampler (semisup.py:222-259), floor(batch x
fraction) extra examples per batch drawn uniformly with replacement from the whole extra set
(`torch.randint`, semisup.py:254-256), the rest of the batch from the dataset's epoch permutation
(data.train_dataset). The draw of step s is keyed on (seed, 'data.extra', s) (seeds.py), so the
stream is a pure function of (seed, step) and a resumed run reads the rows an uninterrupted one
would. Extra images get the dataset's training augmentation, as the reference applies its train
transform to them (semisup.py:120-122).
"""

import os
import struct
import zipfile

import numpy as np
import tensorflow as tf

from tf_metric_robust import seeds
from tf_metric_robust.config import UserError
from tf_metric_robust.data.catalog import AUTOTUNE, to_float

IMAGE_KEY, LABEL_KEY = "image", "label"  # DM-Improves-AT core/data/semisup.py:71,73
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header (APPNOTE 4.3.7), 30 bytes
_LOCAL_SIGNATURE = 0x04034B50
_LABEL_CHUNK = 1 << 22  # labels checked 4M at a time: constant memory on any set


def open_member(path, key):
    """A member `key` of an uncompressed .npz, memory-mapped read-only (no data read).

    Args:
      path: the .npz file.
      key: the array's name (the member is `key`.npy).

    Returns:
      np.memmap with the member's dtype and shape.

    Raises:
      UserError naming --extra_data: a missing file or key, a compressed member, an object or
      Fortran-ordered array.
    """
    if not os.path.isfile(path):
        raise UserError(f"--extra_data {path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{key}.npy")
    except zipfile.BadZipFile:
        raise UserError(f"--extra_data {path}: not an .npz file") from None
    except KeyError:
        raise UserError(f"--extra_data {path}: has no array {key!r}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise UserError(
            f"--extra_data {path}: {key!r} is compressed (np.savez_compressed), so it cannot be "
            'streamed; rewrite it once uncompressed: python -c "import numpy as np; '
            f"d = np.load('{path}'); np.savez('uncompressed.npz', **d)\""
        )
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        if fields[0] != _LOCAL_SIGNATURE:
            raise UserError(f"--extra_data {path}: damaged zip entry {key!r}")
        name_length, extra_length = fields[9], fields[10]
        f.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        shape, fortran_order, dtype = _read_header(f, version)
        offset = f.tell()
    if dtype.hasobject or (fortran_order and len(shape) > 1):
        raise UserError(f"--extra_data {path}: {key!r} must be a plain C-ordered array")
    if not shape or 0 in shape:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _read_header(f, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)  # 2.0 and 3.0 share the layout


class ExtraSet:
    """One or more .npz files read as one set of examples, rows on demand (memory-mapped).

    Args:
      paths: .npz files, each with 'image' uint8 [N_i,H,W,C] and 'label' int [N_i]; example
        indices run through the files in order.
    """

    def __init__(self, paths):
        if not paths:
            raise ValueError("ExtraSet needs at least one file")
        self.paths = tuple(paths)
        self.images, self.labels = [], []
        for path in self.paths:
            images, labels = open_member(path, IMAGE_KEY), open_member(path, LABEL_KEY)
            if images.dtype != np.uint8 or images.ndim != 4:
                raise UserError(
                    f"--extra_data {path}: 'image' must be uint8 [N,H,W,C], got "
                    f"{images.dtype} {list(images.shape)}"
                )
            if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
                raise UserError(
                    f"--extra_data {path}: 'label' must be {len(images)} integers [N], got "
                    f"{labels.dtype} {list(labels.shape)}"
                )
            if not len(images):
                raise UserError(f"--extra_data {path}: holds no examples")
            if self.images and images.shape[1:] != self.images[0].shape[1:]:
                raise UserError(
                    f"--extra_data {path}: images of {list(images.shape[1:])}, the first file's "
                    f"are {list(self.images[0].shape[1:])}"
                )
            self.images.append(images)
            self.labels.append(labels)
        self._index()

    @classmethod
    def from_arrays(cls, images, labels, name="arrays"):
        """An ExtraSet over arrays in memory (images uint8 [N,H,W,C], labels int [N])."""
        extra_set = cls.__new__(cls)
        extra_set.paths = (name,)
        extra_set.images = [np.asarray(images, np.uint8)]
        extra_set.labels = [np.asarray(labels, np.int64)]
        extra_set._index()
        return extra_set

    def _index(self):
        self.sizes = np.array([len(labels) for labels in self.labels], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.image_shape = tuple(self.images[0].shape[1:])

    def __len__(self):
        return int(self.starts[-1])

    def rows(self, index):
        """(images uint8 [n,H,W,C], labels int64 [n]) of the examples `index` (int [n], in
        [0, len)), read from disk in file order (sorted) and returned in the order asked."""
        index = np.asarray(index, np.int64).reshape(-1)
        images = np.empty((len(index), *self.image_shape), np.uint8)
        labels = np.empty(len(index), np.int64)
        file_of = np.searchsorted(self.starts, index, side="right") - 1
        for part in np.unique(file_of):
            where = np.flatnonzero(file_of == part)
            local = index[where] - self.starts[part]
            order = np.argsort(local, kind="stable")  # ascending reads: sequential on disk
            images[where[order]] = self.images[part][local[order]]
            labels[where[order]] = self.labels[part][local[order]]
        return images, labels

    def check(self, image_shape, num_classes):
        """UserError naming --extra_data unless the images have the dataset's shape and every
        label is a class of the dataset (labels read in chunks: constant memory, ~1 s per 100M)."""
        if self.image_shape != tuple(image_shape):
            raise UserError(
                f"--extra_data {self.paths[0]}: images of {list(self.image_shape)}, the "
                f"dataset's are {list(image_shape)}"
            )
        for path, labels in zip(self.paths, self.labels):
            for start in range(0, len(labels), _LABEL_CHUNK):
                chunk = np.asarray(labels[start : start + _LABEL_CHUNK])
                low, high = int(chunk.min()), int(chunk.max())
                if low < 0 or high >= num_classes:
                    bad = low if low < 0 else high
                    raise UserError(
                        f"--extra_data {path}: label {bad} is not a class of the dataset "
                        f"(0 to {num_classes - 1})"
                    )


FAKE_EXAMPLES = 1024


def fake_extra_set(image_shape, num_classes):
    """What --extra_data reads under --dataset=fake:<name>: FAKE_EXAMPLES random examples of the
    dataset's shape and classes, the same in every process, so a recipe with extra data runs
    end to end without its files, as fake:<name> runs it without its dataset (data/fake.py)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FAKE_EXAMPLES, *image_shape), dtype=np.uint8)
    labels = np.arange(FAKE_EXAMPLES) % num_classes
    return ExtraSet.from_arrays(images, labels, name="fake extra data")


def extra_batches(extra_set, *, examples, seed, start_step=0, augment=None, other_positives=None):
    """Infinite stream of the extra examples of each training step, from step `start_step`.

    Step s draws `examples` indices uniformly with replacement from the whole set (as
    DM-Improves-AT semisup.py:254-256), keyed on (seed, 'data.extra', s): a pure function of
    (seed, step), so `extra_batches(start_step=s)` equals `extra_batches().skip(s)` without
    reading the skipped rows.

    Args:
      extra_set: an `ExtraSet`.
      examples: extra examples per step.
      seed: the run's seed.
      start_step: the first step to yield (resume point).
      augment: None, or a callable (images float32 [n,H,W,C], key int [2]) -> images: the
        dataset's training augmentation (pipelines.augment_batch with its flip and padding).
      other_positives: None, or (pixels uint8 [M,H,W,C], class_index.ClassIndex) of the
        dataset's training split: also yield, per extra example, an independent (augmented)
        image of its class from the dataset (TLA's "other" positive; see class_index.py).

    Returns:
      tf.data.Dataset of (images float32 [examples,H,W,C] in [0,1], labels int64 [examples]);
      with other_positives, of ((images, other_images), labels).
    """
    if examples < 1 or start_step < 0:
        raise ValueError(f"need examples >= 1, start_step >= 0; got {examples}, {start_step}")
    total, image_shape = len(extra_set), list(extra_set.image_shape)

    def read(index):
        images, labels = tf.numpy_function(
            extra_set.rows, [index], (tf.uint8, tf.int64), stateful=False
        )
        return tf.ensure_shape(images, [examples, *image_shape]), tf.ensure_shape(
            labels, [examples]
        )

    def step_batch(step):
        key = seeds.key(seed, "data.extra", step)
        draw_key, augment_key, other_key = tf.unstack(
            tf.random.experimental.stateless_split(key, 3)
        )
        index = tf.random.stateless_uniform(
            [examples], seed=draw_key, minval=0, maxval=total, dtype=tf.int64
        )
        images, labels = to_float(*read(index))
        if augment is not None:
            images = augment(images, augment_key)
        if other_positives is None:
            return images, labels
        pixels, class_index = other_positives
        draw_key, augment_other_key = tf.unstack(
            tf.random.experimental.stateless_split(other_key, 2)
        )
        other = class_member(labels, class_index, draw_key)
        others = tf.numpy_function(lambda rows: pixels[rows], [other], tf.uint8, stateful=False)
        others, _ = to_float(tf.ensure_shape(others, [examples, *image_shape]), labels)
        if augment is not None:
            others = augment(others, augment_other_key)
        return (images, others), labels

    ds = tf.data.Dataset.counter(start=start_step)
    return ds.map(step_batch, num_parallel_calls=AUTOTUNE, deterministic=True)


def class_member(labels, class_index, seed):
    """For each label, a uniform draw among the dataset's examples of that class -> int64 [N].

    An extra example is not in the dataset, so every example of its class is another image
    (class_index.other_index excludes the example itself, for dataset examples).

    Args:
      labels: int [N] classes, each with at least one example in the split.
      class_index: a `ClassIndex` of the dataset's split.
      seed: int [2] key of the stateless draw.
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
    count = tf.gather(class_index.counts, labels)
    tf.debugging.assert_positive(count, "an extra example's class has no example in the dataset")
    draw = tf.random.stateless_uniform(tf.shape(labels), seed=seed, minval=0, maxval=1)
    pick = tf.minimum(tf.cast(tf.floor(draw * tf.cast(count, tf.float32)), tf.int64), count - 1)
    return tf.gather(class_index.order, tf.gather(class_index.starts, labels) + pick)
