"""tf.distribute strategy from a name, so one recipe runs on a laptop, a multi-GPU box, several
machines (MultiWorkerMirroredStrategy, configured by TF_CONFIG) or a TPU.

The TF_CONFIG helpers do not import TensorFlow, so the flag layer can reject a bad cluster
specification before paying for that import.
"""

import itertools
import json
import os

from tf_metric_robust.config import STRATEGIES, UserError

# Collective group keys of each MirroredStrategy start here (see mirrored_strategy below); a wide
# stride leaves room for the groups and instance keys one strategy allocates.
_COLLECTIVE_KEY_STRIDE = 100_000
_collective_key_bases = itertools.count(1)


def cluster_from_env():
    """(task type, task index, number of worker processes) from TF_CONFIG; ('', 0, 1) without it.

    TF_CONFIG is TF's JSON description of a cluster, e.g.
    {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}};
    a 'chief' task, if listed, counts as a worker (it trains too).
    """
    text = os.environ.get("TF_CONFIG")
    if not text:
        return "", 0, 1
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        task_type, index = str(task["type"]), int(task["index"])
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        members = cluster[task_type]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"TF_CONFIG is not a valid cluster specification ({type(error).__name__}: "
            f'{error}); expected {{"cluster": {{"worker": ["host:port", ...]}}, '
            f'"task": {{"type": "worker", "index": 0}}}}'
        ) from None
    if not 0 <= index < len(members):
        raise UserError(
            f"TF_CONFIG task index {index} is outside its {task_type} list ({len(members)} entries)"
        )
    return task_type, index, max(workers, 1)


def is_chief():
    """Whether this process writes the run's files: the 'chief' task, else worker 0 (TF's rule)."""
    text = os.environ.get("TF_CONFIG")
    task_type, index, _ = cluster_from_env()
    if not task_type:
        return True
    has_chief = "chief" in json.loads(text)["cluster"]
    return task_type == "chief" or (task_type == "worker" and index == 0 and not has_chief)


def make_strategy(name="auto", tpu_address=None):
    """Returns a tf.distribute.Strategy.

    Args:
      name: 'auto' (MirroredStrategy over all local GPUs if there is any, else TF's default
        strategy on the CPU), 'one_device' (the first GPU, else the default strategy),
        'mirrored' (all local GPUs, or all logical CPUs when there is no GPU), 'multi_worker'
        (MultiWorkerMirroredStrategy over the TF_CONFIG cluster; create it before any other
        TensorFlow work), 'tpu'.
      tpu_address: TPU name or grpc address for 'tpu' ('' = the local TPU VM).
    """
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    import tensorflow as tf  # here, not at the top: the TF_CONFIG helpers above stay light

    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError(
                "strategy 'multi_worker' needs the TF_CONFIG environment variable "
                "(cluster spec and this worker's task); see docs/distributed.md, 'Several machines'"
            )
        cluster_from_env()  # a clear message for malformed JSON
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto" and gpus:
        return mirrored_strategy([d.name for d in gpus])
    if name == "one_device" and gpus:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    if name in ("auto", "one_device"):
        # On the host CPU, TF's default strategy, not OneDeviceStrategy("/cpu:0"): Keras feeds a
        # real strategy through a MultiDeviceIterator, and once one exists in the process every
        # CPU op runs ~2x slower in wall time, with kernel (sys) time as large as user time
        # (measured with TF 2.21 on 2 cores: the demo step 318 -> 160 ms; bench/strategy_overhead.py).
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return mirrored_strategy([d.name for d in devices])
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def mirrored_strategy(devices, **kwargs):
    """tf.distribute.MirroredStrategy over `devices` whose collectives cannot collide with those
    of an earlier strategy in the same process.

    TF numbers every MirroredStrategy's collective groups from the same start (the class attribute
    `_collective_key_base`, tensorflow/python/distribute/mirrored_strategy.py), while the collective
    runtime remembers each (group, instance) key's shape for the life of the process: a second
    strategy whose all-reduce has another shape then fails with "Shape mismatch in the collective
    instance" (a notebook training twice, a test after another test). Each strategy built here
    gets its own key range.
    """
    import tensorflow as tf

    tf.distribute.MirroredStrategy._collective_key_base = (
        next(_collective_key_bases) * _COLLECTIVE_KEY_STRIDE
    )
    return tf.distribute.MirroredStrategy(devices, **kwargs)


def check_batch_size(batch_size, strategy):
    """Raises UserError unless the global batch splits evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(
            f"batch_size {batch_size} is not divisible by the {replicas} replicas "
            f"of the strategy; use a multiple of {replicas}"
        )
