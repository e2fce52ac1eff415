"""tfds builder 'tiny_imagenet': Tiny ImageNet (Stanford CS231n), 200 classes of 64x64 RGB images.

Splits: 'train' (100,000 images, 500 per class) and 'validation' (10,000, 50 per class, labelled by
val/val_annotations.txt). The official test images have no public labels, so they are not built:
the validation split serves as the test split, as in TLA's Tiny ImageNet experiments (Mao et al.,
NeurIPS 2019). Label ids follow the order of wnids.txt; the wnids and their words.txt names are
kept in the dataset metadata ('wnids', 'class_names').

Source: the official zip, fetched by `download_and_prepare()` (bin/train --download), or the same
zip / its extracted folder placed in <data_dir>/downloads/manual/, which is prepared offline.
"""

import bisect
import os
import zipfile

import tensorflow as tf
import tensorflow_datasets as tfds

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
ROOT = "tiny-imagenet-200"
IMAGE_SHAPE = (64, 64, 3)

_DESCRIPTION = (
    "Tiny ImageNet: 200 ImageNet classes, 64x64 RGB; 500 train and 50 validation images per class. "
    "The unlabelled official test split is not included; use 'validation' as the test split."
)
_CITATION = """@misc{le2015tiny,
  title={Tiny ImageNet Visual Recognition Challenge}, author={Le, Ya and Yang, Xuan},
  howpublished={Stanford CS231N}, year={2015}}"""
_MANUAL = (
    f"Place {ARCHIVE} (from {URL}) or its extracted folder {ROOT}/ in the manual directory "
    "<data_dir>/downloads/manual/."
)


def parse_wnids(text):
    """wnids.txt -> list of WordNet ids, in file order (the label order). Raises on duplicates."""
    wnids = [line.strip() for line in text.splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise ValueError(f"wnids.txt must list distinct class ids, got {len(wnids)} lines")
    return wnids


def parse_words(text):
    """words.txt ('wnid<TAB>names' per line) -> {wnid: names}."""
    pairs = (line.split("\t", 1) for line in text.splitlines() if "\t" in line)
    return {wnid.strip(): names.strip() for wnid, names in pairs}


def parse_val_annotations(text):
    """val_annotations.txt (filename, wnid, x0, y0, x1, y1; tab-separated) -> {filename: wnid}."""
    labels = {}
    for line in text.splitlines():
        fields = line.strip().split("\t")
        if len(fields) >= 2:
            labels[fields[0]] = fields[1]
    return labels


class _ZipSource:
    """Files of the dataset read straight from the official zip (no extraction on disk)."""

    def __init__(self, path):
        self._zip = zipfile.ZipFile(path)
        names = [n for n in self._zip.namelist() if not n.endswith("/")]
        top = [n for n in names if n.endswith("wnids.txt") and n.count("/") <= 1]
        if not top:
            raise ValueError(f"{path}: no wnids.txt at the top of the archive; expected {ROOT}/")
        self._prefix = top[0][: -len("wnids.txt")]
        self._files = sorted(n[len(self._prefix) :] for n in names if n.startswith(self._prefix))

    def files(self, folder):
        """Sorted paths starting with `folder` (a binary search: the list has 120k names)."""
        start = bisect.bisect_left(self._files, folder)
        end = bisect.bisect_left(self._files, folder + "\U0010ffff")
        return self._files[start:end]

    def exists(self, name):
        return self.files(name)[:1] == [name]

    def read(self, name):
        return self._zip.read(self._prefix + name)


class _FolderSource:
    """Files of the dataset read from an extracted tiny-imagenet-200/ folder."""

    def __init__(self, root):
        self._root = root

    def files(self, folder):
        found = []
        for directory, _, names in os.walk(os.path.join(self._root, folder)):
            relative = os.path.relpath(directory, self._root).replace(os.sep, "/")
            found += [f"{relative}/{name}" for name in names]
        return sorted(found)

    def exists(self, name):
        return os.path.isfile(os.path.join(self._root, name))

    def read(self, name):
        with open(os.path.join(self._root, name), "rb") as f:
            return f.read()


def find_manual_source(manual_dir):
    """Path of the zip or extracted folder in `manual_dir`, or None if neither is there."""
    manual_dir = os.fspath(manual_dir)
    candidates = (os.path.join(manual_dir, ARCHIVE), os.path.join(manual_dir, ROOT), manual_dir)
    for candidate in candidates:
        if os.path.isfile(candidate) and zipfile.is_zipfile(candidate):
            return candidate
        if os.path.isfile(os.path.join(candidate, "wnids.txt")):
            return candidate
    return None


def open_source(path):
    """A reader of the dataset's files from the official zip or an extracted folder."""
    return _ZipSource(path) if os.path.isfile(path) else _FolderSource(path)


def rgb_image(encoded, name):
    """Returns encoded image bytes of a 64x64 RGB image: the input itself if it already is one.

    A few Tiny ImageNet train JPEGs are grayscale; they are stored as lossless 3-channel PNGs so
    that every stored image decodes to [64, 64, 3]. Any other size raises ValueError naming it.
    """
    image = tf.io.decode_image(encoded, channels=0, expand_animations=False)
    if tuple(image.shape[:2]) != IMAGE_SHAPE[:2]:
        raise ValueError(f"tiny_imagenet: {name} is {tuple(image.shape)}, expected {IMAGE_SHAPE}")
    if image.shape[2] == IMAGE_SHAPE[2]:
        return encoded
    rgb = tf.image.grayscale_to_rgb(image[..., :1])
    return tf.io.encode_png(rgb).numpy()


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny ImageNet 200: train 100,000 / validation 10,000, labels in wnids.txt order."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train and labelled validation splits of tiny-imagenet-200.zip."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    # Names (the wnids) are set from wnids.txt when the data is generated.
                    "label": tfds.features.ClassLabel(),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def manual_data_present(self):
        """True if the zip or extracted folder sits in <data_dir>/downloads/manual/."""
        return find_manual_source(self.data_dir_root / "downloads" / "manual") is not None

    def _split_generators(self, dl_manager):
        """Reads the manual zip/folder if present, else downloads the official zip."""
        path = find_manual_source(self.data_dir_root / "downloads" / "manual")
        source = open_source(path or os.fspath(dl_manager.download(URL)))
        wnids = parse_wnids(source.read("wnids.txt").decode())
        words = parse_words(source.read("words.txt").decode()) if source.exists("words.txt") else {}
        self.info.features["label"].names = wnids
        self.info.metadata["wnids"] = wnids
        self.info.metadata["class_names"] = [words.get(wnid, wnid) for wnid in wnids]
        label_of = {wnid: index for index, wnid in enumerate(wnids)}

        train = []
        for wnid in wnids:
            images = [n for n in source.files(f"train/{wnid}/images/") if _is_image(n)]
            if not images:
                raise ValueError(f"tiny_imagenet: no train images for class {wnid}")
            train += [(name, label_of[wnid]) for name in images]
        annotations = parse_val_annotations(source.read("val/val_annotations.txt").decode())
        unknown = sorted(set(annotations.values()) - set(label_of))
        if unknown:
            raise ValueError(f"tiny_imagenet: val_annotations.txt has unknown wnids {unknown[:5]}")
        validation = [
            (f"val/images/{name}", label_of[wnid]) for name, wnid in sorted(annotations.items())
        ]
        return {
            "train": self._generate_examples(source, train),
            "validation": self._generate_examples(source, validation),
        }

    def _generate_examples(self, source, examples):
        """Yields (path inside tiny-imagenet-200/, example); the path is the stable key."""
        for name, label in examples:
            image = rgb_image(source.read(name), name)
            yield name, {"image": image, "label": label, "file_name": name.rsplit("/", 1)[-1]}


def _is_image(name):
    return name.lower().endswith((".jpeg", ".jpg", ".png"))
