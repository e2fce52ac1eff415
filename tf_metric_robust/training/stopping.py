"""How a training run stops early without losing work: on a signal, after saving; on NaN, before.

Preemption (Kubernetes, Slurm, spot VMs) sends SIGTERM and waits a grace period before SIGKILL;
Ctrl-C sends SIGINT. Either one only sets a flag: at the next batch end the step guard saves a
checkpoint of the current step and stops fit(), and the run raises `Interrupted` (bin/train exits
with 128 + the signal number, as a shell reports a process killed by it, so a scheduler sees an
unfinished run). A non-finite loss or weight raises `TrainingDiverged` before the state reaches a
checkpoint, naming the step and the last good checkpoint (big_vision's training loop also stops
on NaN and names the step).
"""

import math
import os
import signal
import threading

import keras
import tensorflow as tf

from tf_metric_robust.config import UserError


class Interrupted(Exception):
    """SIGTERM/SIGINT stopped training after checkpointing the current step."""

    def __init__(self, signum, step, checkpoint):
        self.signum = signum
        self.exit_code = 128 + signum  # 143 for SIGTERM, 130 for SIGINT
        name = signal.Signals(signum).name
        if step is None:
            message = f"{name} received: stopped before the first checkpoint; re-run to start"
        else:
            message = (
                f"{name} received: stopped at step {step}, checkpoint {checkpoint}; "
                "re-run the same command to resume"
            )
        super().__init__(message)


class TrainingDiverged(UserError):
    """A non-finite loss or weight: training stopped before that state was saved."""


class StopSignals:
    """Context manager: SIGTERM/SIGINT set `received` instead of killing the process.

    A second signal kills the process as if unhandled (Ctrl-C twice quits without saving). Only the
    main thread can install handlers; elsewhere, or with enabled=False (multi-worker runs, where
    one worker stopping alone would stall the others' collectives), signals keep their default.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled=True):
        self.received = None
        self._enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous = {}

    def __enter__(self):
        if self._enabled:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        # os.write, not print: a handler may interrupt a print to the same stream.
        os.write(
            2,
            f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end "
            "of this step, then stopping (send it again to quit without saving)\n".encode(),
        )


def _is_float(variable):
    return tf.as_dtype(variable.dtype).is_floating  # Keras 3 variables name their dtype: a str


class Saver:
    """Writes checkpoints through a CheckpointManager: once per step, never a non-finite state.

    Args:
      manager: tf.train.CheckpointManager of the run's checkpoint (network, optimizer, bank).
      variables: the checkpointed variables (only the floating-point ones are checked).
      step: the step whose state the newest checkpoint already holds (None: nothing saved).
      public_dir: where the run's checkpoints are (for messages; a non-chief worker's manager
        writes into a scratch folder).
    """

    def __init__(self, manager, variables, step, public_dir):
        self.manager = manager
        self.variables = [v for v in variables if _is_float(v)]
        self.step = step
        self.public_dir = public_dir

    def last_good(self):
        """Path of the newest checkpoint, for messages."""
        if self.step is None:
            return "none (nothing saved yet)"
        return os.path.join(self.public_dir, f"ckpt-{self.step}")

    def resume_hint(self):
        """Where a re-run would continue from, for the messages of a stopped run."""
        if self.step is None:
            return "no checkpoint yet, a re-run starts over (lower --learning_rate?)"
        return (
            f"last good checkpoint: {self.last_good()}, where a re-run resumes (lower "
            "--learning_rate or check the data first)"
        )

    def save(self, step):
        """Checkpoints `step` unless it is already saved; TrainingDiverged if a value is NaN/Inf."""
        if step == self.step:
            return
        for variable in self.variables:
            if not bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(variable)))):
                name = getattr(variable, "path", None) or variable.name
                raise TrainingDiverged(
                    f"non-finite values in {name} at step {step}: training "
                    f"stopped, this state was not saved; {self.resume_hint()}"
                )
        self.manager.save(checkpoint_number=step)
        self.step = step


class StepGuard(keras.callbacks.Callback):
    """At every batch end: stop on a non-finite loss, checkpoint every `every` steps, and on a
    stop signal save the step and end fit(). During evaluate() (which follows a checkpoint) a
    signal raises Interrupted at once."""

    def __init__(self, saver, every, signals):
        super().__init__()
        self.saver, self.every, self.signals = saver, every, signals

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"non-finite loss ({float(loss)}) at step {step}: training "
                f"stopped, nothing saved after it; {self.saver.resume_hint()}"
            )
        if step % self.every == 0 or self.signals.received:
            self.saver.save(step)
        if self.signals.received:
            self.model.stop_training = True

    def on_test_batch_end(self, batch, logs=None):
        self.check()

    def check(self):
        """Raises Interrupted if a stop signal arrived (call where the last step is saved)."""
        if self.signals.received:
            raise Interrupted(self.signals.received, self.saver.step, self.saver.last_good())
