#!/usr/bin/env python3
"""bin/train with one fault injected at an exact point, for tests/training/test_reliability.py.

TFMR_FAULT=<kind>:<step> in the environment picks it; the process really receives the signal
(SIGKILL cannot be caught: nothing after it runs, as with `kill -9` from outside):

  kill_after_checkpoint:N  SIGKILL right after checkpoint ckpt-N is saved
  sigterm_at_step:N        SIGTERM at the end of step N (the run must save ckpt-N and exit 143)
  kill_at_step:N           SIGKILL at the end of step N, before any checkpoint of it
  kill_in_checkpoint:N     SIGKILL inside CheckpointManager.save of ckpt-N: files written, the
                           'checkpoint' state file not yet updated
  kill_in_export:0         SIGKILL after the SavedModel is written, before it is renamed into place
  nan_loss_at_step:N       the training loss of step N becomes NaN (so do its gradients)
  none                     no fault

TFMR_DUMP_WEIGHTS=<path.npz> also saves this process's network weights when training ends (each
worker of a multi-worker run: only the chief writes checkpoints into model_dir).
"""

import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _kill(signum=signal.SIGKILL):
    sys.stdout.flush()
    os.kill(os.getpid(), signum)


def install(kind, at):
    """Patches the point of the fault `kind` at step `at` (see the module docstring)."""
    import tensorflow as tf

    from tf_metric_robust.training import stopping

    if kind in ("sigterm_at_step", "kill_at_step"):
        original = stopping.StepGuard.on_train_batch_end

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == at:
                _kill(signal.SIGTERM if kind == "sigterm_at_step" else signal.SIGKILL)
            original(self, batch, logs)

        stopping.StepGuard.on_train_batch_end = on_train_batch_end
    elif kind == "kill_after_checkpoint":
        original_save = stopping.Saver.save

        def save(self, step):
            original_save(self, step)
            if step == at:
                _kill()

        stopping.Saver.save = save
    elif kind == "kill_in_checkpoint":
        original_record = tf.train.CheckpointManager._record_state

        def record_state(self):
            if self.latest_checkpoint and self.latest_checkpoint.endswith(f"ckpt-{at}"):
                _kill()
            original_record(self)

        tf.train.CheckpointManager._record_state = record_state
    elif kind == "kill_in_export":
        original_export = tf.saved_model.save

        def save_model(*args, **kwargs):
            original_export(*args, **kwargs)
            _kill()

        tf.saved_model.save = save_model
    elif kind == "nan_loss_at_step":
        from tf_metric_robust.training import AdversarialTrainer

        original_losses = AdversarialTrainer.compute_losses

        def compute_losses(self, batch, adversarial, training):
            result = original_losses(self, batch, adversarial, training)
            if training:  # optimizer.iterations counts finished steps: step N sees N - 1
                poison = tf.where(tf.equal(self.optimizer.iterations, at - 1), float("nan"), 0.0)
                result = result._replace(total=result.total + tf.cast(poison, result.total.dtype))
            return result

        AdversarialTrainer.compute_losses = compute_losses
    elif kind != "none":
        raise SystemExit(f"unknown TFMR_FAULT kind {kind!r}")


def dump_weights_at_finish(path):
    """Saves the network weights (a list of arrays, in layer order) when training ends."""
    import numpy as np

    from tf_metric_robust.training import finish as run_end

    original_finish = run_end.finish

    def finish(run, *args, **kwargs):
        np.savez(path, *[w.numpy() for w in run.trainer.network.weights])
        return original_finish(run, *args, **kwargs)

    run_end.finish = finish


if __name__ == "__main__":
    fault_kind, _, fault_step = os.environ.get("TFMR_FAULT", "none").partition(":")
    install(fault_kind, int(fault_step or 0))
    if os.environ.get("TFMR_DUMP_WEIGHTS"):
        dump_weights_at_finish(os.environ["TFMR_DUMP_WEIGHTS"])
    entry_point = runpy.run_path(os.path.join(ROOT, "bin", "train"), run_name="bin_train")
    entry_point["cli"].run(entry_point["main"])
