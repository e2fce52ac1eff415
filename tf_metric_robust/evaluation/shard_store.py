"""Where an evaluation's per-shard results live: in memory, or as files in a work directory that
the workers of a cluster share, so a re-run resumes and workers exchange results.

A shard is one attack run on `shard_size` consecutive examples (shards.py). With a work directory
every shard's result is one .npz file, written to a temporary name and renamed into place (a
reader never sees half a file; a re-run skips every file present). Worker w of W computes the
shards j with j % W == w and reads the others' files; while it waits it watches their heartbeat
files, so a worker that died makes the others fail with a message instead of waiting forever.
"""

import os
import re
import shutil
import threading
import time

import numpy as np
from absl import logging

from tf_metric_robust.config import UserError

HEARTBEAT_SECONDS = 2.0  # how often a worker touches its heartbeat file


class ShardStore:
    """Per-shard results of the runs of one evaluation.

    Args:
      work_dir: folder shared by all workers (None: results stay in memory, one worker only).
      worker, num_workers: this worker's index and the cluster size (TF_CONFIG's workers).
      stale_seconds: a worker whose heartbeat is older than this while its shard is missing is
        taken for lost.
      poll_seconds: how often a waiting worker looks for the others' files.
    """

    def __init__(
        self, work_dir=None, worker=0, num_workers=1, stale_seconds=120.0, poll_seconds=0.5
    ):
        if work_dir is None and num_workers != 1:
            raise UserError("several workers exchange results through a work directory")
        self.work_dir, self.worker, self.num_workers = work_dir, worker, num_workers
        self.stale_seconds, self.poll_seconds = stale_seconds, poll_seconds
        self._memory, self._seen = {}, {}
        self._stop = threading.Event()
        self._started = time.time()
        if work_dir:
            os.makedirs(work_dir, exist_ok=True)
            self._beat()
            threading.Thread(target=self._heartbeat, daemon=True).start()

    def close(self):
        """Stops the heartbeat (the worker is done; its files stay)."""
        self._stop.set()

    def owns(self, shard):
        return shard % self.num_workers == self.worker

    def _path(self, run, shard):
        safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", run)
        return os.path.join(self.work_dir, safe, f"{shard:06d}.npz")

    def load(self, run, shard):
        """The shard's arrays (dict), or None when nobody has written them yet."""
        if self.work_dir is None:
            return self._memory.get((run, shard))
        path = self._path(run, shard)
        if not os.path.exists(path):
            return None
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    def save(self, run, shard, arrays):
        """Stores a shard's arrays; with a work directory atomically (temporary file, rename)."""
        if self.work_dir is None:
            self._memory[(run, shard)] = arrays
            return
        path = self._path(run, shard)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}.npz"
        np.savez(temporary, **arrays)
        os.replace(temporary, path)

    def gather(self, run, num_shards):
        """Every shard of `run` in order, waiting for the other workers' files."""
        results, missing = {}, list(range(num_shards))
        while missing:
            for shard in list(missing):
                arrays = self.load(run, shard)
                if arrays is not None:
                    results[shard] = arrays
                    missing.remove(shard)
            if missing:
                self._check_alive(run, missing)
                time.sleep(self.poll_seconds)
        return [results[shard] for shard in range(num_shards)]

    def mark_done(self):
        """Records that this worker has read everything it needs (then stops its heartbeat)."""
        if self.work_dir:
            with open(os.path.join(self.work_dir, f"done-{self.worker}"), "w") as f:
                f.write("done\n")
        self.close()

    def remove_when_done(self, timeout):
        """Deletes the work directory once every worker is done (the chief, after the report);
        keeps it (and logs why) if some worker has not said so within `timeout` seconds."""
        if not self.work_dir:
            return
        deadline = time.time() + timeout
        done = lambda w: os.path.exists(os.path.join(self.work_dir, f"done-{w}"))  # noqa: E731
        while not all(done(w) for w in range(self.num_workers)):
            if time.time() > deadline:
                logging.warning(
                    "not every worker finished reading %s; left in place", self.work_dir
                )
                return
            time.sleep(self.poll_seconds)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def _heartbeat_path(self, worker):
        return os.path.join(self.work_dir, f"heartbeat-{worker}")

    def _beat(self):
        path = self._heartbeat_path(self.worker)
        with open(f"{path}.tmp", "w") as f:
            f.write(f"{time.time()}\n")
        os.replace(f"{path}.tmp", path)

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._beat()
            except OSError as error:  # a full or vanished disk: the waiting workers will say so
                logging.warning("heartbeat of worker %d failed: %s", self.worker, error)

    def _check_alive(self, run, missing):
        """UserError when a worker owning a missing shard has stopped beating: its heartbeat
        file has not changed for stale_seconds of this worker's clock (no cross-host clocks)."""
        now = time.time()
        for worker in sorted({shard % self.num_workers for shard in missing}):
            if self.work_dir is None or worker == self.worker:
                raise RuntimeError(f"shards {missing} of {run} were never computed")
            try:
                with open(self._heartbeat_path(worker)) as f:
                    beat = f.read()
            except OSError:
                beat = None
            seen, since = self._seen.get(worker, (None, self._started))
            if beat != seen:
                self._seen[worker] = (beat, now) if beat is not None else (seen, since)
            elif now - since > self.stale_seconds:
                raise UserError(
                    f"worker {worker} of {self.num_workers} stopped before writing its shards of "
                    f"{run} (no heartbeat for {now - since:.0f} s); the shards written so far are "
                    f"kept in {self.work_dir}: start every worker again with the same command to "
                    f"resume"
                )


__all__ = ["HEARTBEAT_SECONDS", "ShardStore"]
