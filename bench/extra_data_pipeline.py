"""Throughput and memory of the training stream with extra (generated) data, at batch 512.

Command: `.venv/bin/python bench/extra_data_pipeline.py [--extra_images 1000000] [--batches 40]
[--rounds 3]`.

Writes an uncompressed .npz of `--extra_images` random CIFAR-shaped images ('image' uint8
[N,32,32,3], 'label' int64 [N], the layout of DM-Improves-AT's files; 1M images = 3.1 GB, the
published 1M set's size) into a temporary folder, streamed to disk in chunks. Then, round by
round in one process, two streams of `data.train_dataset` on `fake:cifar10` (random cifar10-shaped
examples, data/fake.py; cached in memory as the real split is; pad-4 crop + flip):

  * plain: batch 512 from the dataset;
  * extra: batch 512 with --extra_fraction 0.7, i.e. 154 dataset rows and 358 rows drawn from the
    memory-mapped file (DM-Improves-AT's command, README: --batch-size 512 --unsup-fraction 0.7).

Prints images/s (all rows of a batch) of each and their ratio (median of per-round ratios).
Then the memory of the extra part alone (data.extra_data.extra_batches, 358 rows a step) over
`--memory_batches` batches: anonymous memory (what the process allocates) after the first 50
batches and at the end, and file-backed resident pages (the mapped file's pages, page cache the
kernel reclaims under pressure). Constant memory: the anonymous part stays flat however much of
the file has been read, and does not depend on the file's size.
"""

import argparse
import gc
import os
import statistics
import sys
import tempfile
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from timing import interleaved  # noqa: E402
from tf_metric_robust import data  # noqa: E402
from tf_metric_robust.data.extra_data import ExtraSet, extra_batches  # noqa: E402

BATCH, FRACTION, SHAPE = 512, 0.7, (32, 32, 3)
CHUNK = 50_000  # images written at a time


def write_npz(path, count, seed=0):
    """An uncompressed .npz ('image', 'label') written chunk by chunk, as np.savez lays it out."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("image.npy", "w", force_zip64=True) as f:
            header = {"descr": "|u1", "fortran_order": False, "shape": (count, *SHAPE)}
            np.lib.format.write_array_header_2_0(f, header)
            block = rng.integers(0, 256, (CHUNK, *SHAPE), dtype=np.uint8)
            for start in range(0, count, CHUNK):
                block[:, 0, 0, 0] = start // CHUNK  # chunks differ
                f.write(block[: min(CHUNK, count - start)].tobytes())
        with archive.open("label.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, rng.integers(0, 10, count))


def memory_mib():
    """(anonymous, file-backed) resident memory of this process in MiB (/proc/self/status)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.split()
    return int(fields["RssAnon"][0]) / 1024, int(fields["RssFile"][0]) / 1024


def puller(dataset, batches):
    iterator = iter(dataset)

    def run():
        for _ in range(batches):
            images, _ = next(iterator)
        images.numpy()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra_images", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=40, help="batches per timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory_batches", type=int, default=1000)
    args = parser.parse_args()
    tfds.disable_progress_bar()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "extra.npz")
        write_npz(path, args.extra_images)
        size_gib = os.path.getsize(path) / 2**30
        extra_set = ExtraSet([path])
        extra_rows = int(BATCH * FRACTION)
        streams = {
            "plain": data.train_dataset("fake:cifar10", batch_size=BATCH, seed=0),
            "extra": data.train_dataset(
                "fake:cifar10",
                batch_size=BATCH,
                seed=0,
                extra_set=extra_set,
                extra_examples=extra_rows,
            ),
        }
        runs = {name: puller(ds, args.batches) for name, ds in streams.items()}
        times = interleaved(runs, args.rounds)
        del runs, streams  # their iterators' threads and buffers
        gc.collect()
        extra_only = puller(extra_batches(extra_set, examples=extra_rows, seed=1), 50)
        extra_only()
        before = memory_mib()
        for _ in range(args.memory_batches // 50 - 1):
            extra_only()
        after = memory_mib()
    rate = {
        name: [args.batches * BATCH / wall for wall, _ in rounds] for name, rounds in times.items()
    }
    ratio = statistics.median(e / p for e, p in zip(rate["extra"], rate["plain"]))
    print(
        f"batch {BATCH} ({BATCH - extra_rows} dataset + {extra_rows} extra rows), extra file "
        f"{args.extra_images} images = {size_gib:.2f} GiB; median of {args.rounds} rounds of "
        f"{args.batches} batches"
    )
    for name in ("plain", "extra"):
        print(f"  {name:6s} {statistics.median(rate[name]):9.0f} images/s")
    print(f"  extra / plain: {ratio:.2f}")
    print(
        f"  extra part alone, batches 50 -> {args.memory_batches // 50 * 50}: anonymous "
        f"{before[0]:.0f} -> {after[0]:.0f} MiB, file-backed {before[1]:.0f} -> {after[1]:.0f} MiB"
    )


if __name__ == "__main__":
    main()
