"""An evaluation's attacks run shard by shard on every local replica and worker, with results
that do not depend on how many there are.

A shard is `shard_size` consecutive examples of one run (the last shard is padded by repeating
its rows; padded rows are dropped). Its random draws come from `seeds.key(seed, root, run id,
shard)`, never from a batch or replica counter, and every replica computes a whole shard with the
same shapes as a single device would, so the per-example results gathered in example order are
the same on 1 device, R replicas (tf.distribute.MirroredStrategy: one shard per replica per
step) or W workers (shard j on worker j % W, results exchanged through shard_store.ShardStore).
"""

import functools
import time
import zlib

import keras
import numpy as np
import tensorflow as tf

from tf_metric_robust import seeds
from tf_metric_robust.evaluation.shard_store import ShardStore

# Settings passed to an attack as (float32) tensors: runs that differ only in these share one
# trace (the gradient attacks take steps and the random start's switch as tensors too).
DYNAMIC_SETTINGS = ("eps", "step_size", "steps", "random_start")


def run_id(name):
    """A stable integer for a run name (its key coordinate): CRC-32 of the name."""
    return zlib.crc32(name.encode())


class ShardRunner:
    """Runs per-shard functions over local replicas and stores the results in a ShardStore.

    Args:
      batch_size: examples per shard (bin/evaluate's --batch_size: per replica, per call).
      seed: the evaluation's seed.
      strategy: a tf.distribute.Strategy over the local devices (None: the default strategy).
      store: a ShardStore (None: in memory, one worker).
      progress_bar: show a progress bar per run (Keras' Progbar, for a terminal).
    """

    def __init__(self, batch_size=100, seed=0, strategy=None, store=None, progress_bar=False):
        self.shard_size, self.seed = int(batch_size), int(seed)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.store = store or ShardStore()
        self.progress_bar = progress_bar
        self.seconds = {}
        self.call_seconds = {}  # name -> wall seconds of each step call (the first one traces)
        self.resumed = 0  # own shards found already written (a re-run resuming)
        self._compiled = {}

    def run(
        self,
        name,
        fn,
        x,
        y,
        *,
        rows=None,
        params=None,
        trace_key=None,
        root="evaluation.attack",
        seed_id=None,
    ):
        """fn on every shard of (x[rows], y[rows]); returns {output: array [len(rows), ...]}.

        Args:
          name: the run's unique name (its files; with `root`, its random draws).
          fn: (x [B, ...], y [B], key int64 [2], params dict of float32 scalars) -> dict of
            per-example tensors [B, ...]; traced once per `trace_key` (default: name).
          x, y: NumPy images and labels of the whole evaluation set.
          rows: the examples to run on, in order (default: all).
          params: DYNAMIC_SETTINGS values passed as tensors.
          root, seed_id: the seeds.key root and the run's coordinate (default run_id(name)).
        """
        started = time.perf_counter()
        rows = np.arange(len(y)) if rows is None else np.asarray(rows, np.int64)
        size = self.shard_size
        shards = [rows[i : i + size] for i in range(0, len(rows), size)]
        seed_id = run_id(name) if seed_id is None else seed_id
        mine = [j for j in range(len(shards)) if self.store.owns(j)]
        todo = [j for j in mine if self.store.load(name, j) is None]
        self.resumed += len(mine) - len(todo)
        bar = (
            keras.utils.Progbar(len(todo), unit_name="shard")
            if self.progress_bar and todo
            else None
        )
        step = self._step(trace_key or name, fn)
        params = {k: tf.constant(v, tf.float32) for k, v in (params or {}).items()}
        for first in range(0, len(todo), self.replicas):
            group = todo[first : first + self.replicas]
            inputs = []
            for j in group:
                padded = np.resize(shards[j], size)  # cyclic repeat: the same shape every call
                inputs.append((x[padded], y[padded], seeds.key(self.seed, root, seed_id, j)))
            called = time.perf_counter()
            outputs = self._call(step, inputs, params)
            self.call_seconds.setdefault(name, []).append(time.perf_counter() - called)
            for j, out in zip(group, outputs):
                self.store.save(name, j, {k: v[: len(shards[j])] for k, v in out.items()})
            if bar is not None:
                bar.add(len(group))
        parts = self.store.gather(name, len(shards))
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def call_times(self, name):
        """A run's compile cost made visible: its step calls' count, the first call's wall
        seconds (tracing and graph optimisation included) and the median of the later calls
        (steady state); None where there is no such call (every shard resumed, or one call)."""
        seconds = self.call_seconds.get(name, [])
        return {
            "calls": len(seconds),
            "first_call_seconds": round(seconds[0], 3) if seconds else None,
            "steady_call_seconds": round(float(np.median(seconds[1:])), 3)
            if len(seconds) > 1
            else None,
        }

    def _step(self, key, fn):
        """One compiled function per trace key: strategy.run(fn) on every local replica."""
        if key not in self._compiled:
            # A partial, not a closure: TF's retracing warning counts closures sharing one code
            # object, and every run here has its own tf.function traced once.
            self._compiled[key] = tf.function(
                functools.partial(_replica_step, self.strategy, fn), autograph=False
            )
        return self._compiled[key]

    def _call(self, step, inputs, params):
        """Runs one step on up to `replicas` shards; returns their outputs as NumPy dicts."""
        count = len(inputs)
        inputs = inputs + [inputs[-1]] * (self.replicas - count)  # idle replicas redo the last
        if self.replicas == 1:
            out = step(*(tf.convert_to_tensor(v) for v in inputs[0]), params)
            return [{k: v.numpy() for k, v in out.items()}]
        args = [
            self.strategy.experimental_distribute_values_from_function(
                lambda context, i=i: inputs[context.replica_id_in_sync_group][i]
            )
            for i in range(3)
        ]
        out = step(*args, params)
        local = {k: self.strategy.experimental_local_results(v) for k, v in out.items()}
        return [{k: v[r].numpy() for k, v in local.items()} for r in range(count)]


def _replica_step(strategy, fn, x, y, seed, params):
    return strategy.run(fn, args=(x, y, seed, params))


__all__ = ["DYNAMIC_SETTINGS", "ShardRunner", "run_id"]
