"""Where bin/evaluate runs: the local replicas of --strategy and, with --strategy=multi_worker,
this process's place among the TF_CONFIG workers and the shared work directory.

The local devices follow training's flag (distribute.make_strategy): 'auto' mirrors over the
local GPUs (the CPU alone otherwise), 'mirrored' over all GPUs or all logical CPUs. Workers do
not exchange tensors: each attacks its shards on its own devices and the results meet as files
in a work directory on a file system every worker sees (shard_store.ShardStore), which is also
what a re-run resumes from. The chief (TF_CONFIG's 'chief' task, else worker 0) writes the
report and figures.
"""

import json
import os

from tf_metric_robust import distribute
from tf_metric_robust.evaluation.shard_store import ShardStore

WORK_PREFIX = ".work-"  # <evaluations folder>/.work-<settings hash>: shards of unfinished runs


def local_strategy(name):
    """The tf.distribute strategy over this process's devices for --strategy=name."""
    return distribute.make_strategy("auto" if name == "multi_worker" else name)


def worker_position(name):
    """(index, number of workers, is chief) of this process; (0, 1, True) unless multi_worker.

    A TF_CONFIG 'chief' task is worker 0 and the 'worker' tasks follow it; without a chief,
    worker i is index i.
    """
    if name != "multi_worker":
        return 0, 1, True
    task_type, index, count = distribute.cluster_from_env()
    has_chief = "chief" in json.loads(os.environ["TF_CONFIG"])["cluster"]
    position = 0 if task_type == "chief" else index + int(has_chief)
    return position, count, distribute.is_chief()


def work_dir(report_path, evaluation_folder, settings_hash):
    """The work directory of an evaluation: beside its report folder (or beside --output's
    report), named after the hash of its settings so the same command finds it again."""
    base = (
        os.path.dirname(os.path.dirname(report_path))
        if evaluation_folder
        else (os.path.dirname(report_path))
    )
    return os.path.join(base, WORK_PREFIX + settings_hash)


def open_store(request, report_path, settings_hash):
    """The ShardStore of this process for `request` (an EvaluateRun)."""
    index, count, _ = worker_position(request.strategy)
    path = work_dir(report_path, not request.output, settings_hash)
    return ShardStore(path, worker=index, num_workers=count, stale_seconds=request.worker_timeout)


__all__ = ["WORK_PREFIX", "local_strategy", "open_store", "work_dir", "worker_position"]
