"""tf.distribute strategy from a name, so one recipe runs on a laptop, a multi-GPU box or a TPU."""

import json
import os

import tensorflow as tf

from tf_metric_robust.config import UserError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def make_strategy(name="auto", tpu_address=None):
    """Returns a tf.distribute.Strategy.

    Args:
      name: 'auto' (MirroredStrategy over all local GPUs if there is any, else the CPU), 'one_device', 'mirrored' (all local GPUs, or all logical CPUs when
        there is no GPU), 'multi_worker' (reads TF_CONFIG), 'tpu'.
      tpu_address: TPU name or grpc address for 'tpu' ('' = the local TPU VM).
    """
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("strategy 'multi_worker' needs the TF_CONFIG environment variable "
                             "(cluster spec and this worker's task); see README 'Multi-worker'")
        json.loads(os.environ["TF_CONFIG"])  # fail early on malformed JSON
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def check_batch_size(batch_size, strategy):
    """Raises ValueError unless the global batch splits evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(f"batch_size {batch_size} is not divisible by the {replicas} replicas "
                         f"of the strategy; use a multiple of {replicas}")
